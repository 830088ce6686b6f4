// Package checksum is the range checksum TiKV's coprocessor computes (the
// checksum request, tp 105, algorithm Crc64_Xor) and pitr compares with
// what a snapshot backup wrote and what a restore wrote.
//
// The algorithm, read in tikv src/coprocessor/checksum.rs
// (ChecksumContext::handle_request, checksum_crc64_xor): for every key
// visible at the request's start_ts in the ranges, crc64 (crc64fast: the
// ECMA-182 polynomial, reflected, initial and final value all ones — Go's
// hash/crc64 with crc64.ECMA) of the raw key followed by the value; the
// checksum is the XOR of those, total_kvs counts the keys and total_bytes
// sums len(key)+len(value). XOR and sums make checksums of disjoint ranges
// combine with Merge, in any order.
package checksum

import (
	"fmt"
	"hash/crc64"
)

var ecma = crc64.MakeTable(crc64.ECMA)

// Sum is the checksum of a set of key/value pairs.
type Sum struct {
	Crc64Xor   uint64
	TotalKvs   uint64
	TotalBytes uint64
}

// Add folds one visible key and its value into s.
func (s *Sum) Add(key, value []byte) {
	c := crc64.Update(0, ecma, key)
	c = crc64.Update(c, ecma, value)
	s.Crc64Xor ^= c
	s.TotalKvs++
	s.TotalBytes += uint64(len(key) + len(value))
}

// Merge folds the checksum of a disjoint set into s.
func (s *Sum) Merge(o Sum) {
	s.Crc64Xor ^= o.Crc64Xor
	s.TotalKvs += o.TotalKvs
	s.TotalBytes += o.TotalBytes
}

func (s Sum) String() string {
	return fmt.Sprintf("crc64xor=%016x kvs=%d bytes=%d", s.Crc64Xor, s.TotalKvs, s.TotalBytes)
}
