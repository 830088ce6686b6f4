package mvcc

import (
	"fmt"
	"math/rand"
	"testing"
)

// BenchmarkTransfer measures a two-key prewrite+commit plus a two-key read
// over a store of 200k keys, in memory and with the log.
func BenchmarkTransfer(b *testing.B) {
	for _, mode := range []string{"mem", "wal"} {
		b.Run(mode, func(b *testing.B) {
			dir := ""
			if mode == "wal" {
				dir = b.TempDir()
			}
			e, err := Open(dir, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			const keys = 200_000
			key := func(i int) []byte { return []byte(fmt.Sprintf("bank/account/%08d", i)) }
			batch := make([]IngestEntry, 0, keys)
			for i := 0; i < keys; i++ {
				batch = append(batch, IngestEntry{Key: key(i), StartTS: 1, CommitTS: 2, Value: []byte("1000")})
			}
			if err := e.Ingest(batch); err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewSource(1))
			ts := uint64(10)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k1, k2 := key(rng.Intn(keys)), key(rng.Intn(keys))
				ts++
				start := ts
				if _, err := e.BatchGet([][]byte{k1, k2}, start, ReadOptions{}); err != nil {
					b.Fatal(err)
				}
				res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{{Op: OpPut, Key: k1, Value: []byte("999")}, {Op: OpPut, Key: k2, Value: []byte("1001")}},
					Primary: k1, StartTS: start, LockTTL: 3000})
				if err != nil || len(res.Locked) > 0 {
					b.Fatal(err, res.Locked)
				}
				ts++
				if err := e.Commit([][]byte{k1}, start, ts); err != nil {
					b.Fatal(err)
				}
				if err := e.Commit([][]byte{k2}, start, ts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
