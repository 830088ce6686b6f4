package merge

import (
	"encoding/binary"
	"testing"

	"github.com/pitr-io/pitr/logfile"
)

// BenchmarkMerge merges 16 interleaved runs of 64k rows each.
func BenchmarkMerge(b *testing.B) {
	const runs, per = 16, 1 << 16
	data := make([][]*logfile.Row, runs)
	for r := range data {
		for i := 0; i < per; i++ {
			k := binary.BigEndian.AppendUint64([]byte("t_r"), uint64(i*runs+r))
			data[r] = append(data[r], &logfile.Row{Key: k, CommitTS: 5, StartTS: 4, Op: logfile.OpPut, Value: []byte("v")})
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		its := make([]logfile.Iterator, runs)
		for r := range its {
			its[r] = Slice(data[r])
		}
		m := Merge(its...)
		n := 0
		for m.Next() {
			n++
		}
		if n != runs*per {
			b.Fatal(n)
		}
	}
	b.ReportMetric(float64(runs*per*b.N)/b.Elapsed().Seconds()/1e6, "Mrows/s")
}
