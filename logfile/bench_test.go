package logfile

import (
	"bytes"
	"math/rand"
	"testing"
)

func benchData(n int) []*Row {
	rng := rand.New(rand.NewSource(1))
	rows := make([]*Row, 0, n)
	for i := 0; i < n; i++ {
		k := []byte("t\x80\x00\x00\x00\x00\x00\x00\x64_r\x80\x00\x00\x00")
		k = append(k, byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
		v := make([]byte, 100+rng.Intn(400))
		for j := 0; j < len(v)/2; j++ {
			v[j] = "abcdefgh  "[rng.Intn(10)]
		}
		rng.Read(v[len(v)/2:])
		c := uint64(1<<50 + rng.Int63n(1<<30))
		rows = append(rows, &Row{Key: k, CommitTS: c, StartTS: c - 5, Op: OpPut, Value: v})
	}
	return rows
}

func BenchmarkWrite(b *testing.B) {
	rows := benchData(100000)
	var logical int64
	for _, r := range rows {
		logical += r.LogicalSize()
	}
	b.SetBytes(logical)
	var buf bytes.Buffer
	for i := 0; i < b.N; i++ {
		buf.Reset()
		w, _ := NewWriter(&buf, WriterOptions{})
		for _, r := range rows {
			if err := w.Write(r); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRead(b *testing.B) {
	rows := benchData(100000)
	var logical int64
	for _, r := range rows {
		logical += r.LogicalSize()
	}
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, WriterOptions{})
	for _, r := range rows {
		_ = w.Write(r)
	}
	_, _ = w.Close()
	b.SetBytes(logical)
	for i := 0; i < b.N; i++ {
		rd, err := NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			b.Fatal(err)
		}
		it := rd.Iter(nil, nil)
		for it.Next() {
		}
		if it.Err() != nil {
			b.Fatal(it.Err())
		}
	}
}
