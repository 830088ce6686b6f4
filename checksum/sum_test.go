package checksum

import (
	"hash/crc64"
	"testing"
)

// TestCRC64IsXZ pins the polynomial and conventions: TiKV's crc64fast
// computes CRC-64/XZ, whose check value (crc of "123456789") is
// 0x995DC9BBDF1939FA.
func TestCRC64IsXZ(t *testing.T) {
	if got := crc64.Checksum([]byte("123456789"), ecma); got != 0x995DC9BBDF1939FA {
		t.Fatalf("crc64 check value %016x, want 995dc9bbdf1939fa", got)
	}
	// Key then value in one digest is the crc of their concatenation.
	var s Sum
	s.Add([]byte("1234"), []byte("56789"))
	if s.Crc64Xor != 0x995DC9BBDF1939FA || s.TotalKvs != 1 || s.TotalBytes != 9 {
		t.Fatalf("sum %v", s)
	}
}

func TestMergeIsOrderFree(t *testing.T) {
	var all, a, b Sum
	for i, kv := range [][2]string{{"a", "1"}, {"b", ""}, {"c", "333"}} {
		all.Add([]byte(kv[0]), []byte(kv[1]))
		if i%2 == 0 {
			a.Add([]byte(kv[0]), []byte(kv[1]))
		} else {
			b.Add([]byte(kv[0]), []byte(kv[1]))
		}
	}
	b.Merge(a)
	if b != all {
		t.Fatalf("merged %v, want %v", b, all)
	}
}
