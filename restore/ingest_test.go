package restore

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
)

func TestChunkBatches(t *testing.T) {
	c := &chunk{}
	add := func(k string, ts uint64, v string, del bool) {
		r := logfile.Row{Key: []byte(k), CommitTS: ts, Op: logfile.OpPut, Value: []byte(v)}
		if del {
			r.Op, r.Value = logfile.OpDelete, nil
		}
		c.add(&r)
	}
	add("a", 9, "a9", false)
	add("a", 5, "", true)
	add("b", 7, "b7", false)
	add("c", 7, "c7", false)
	add("d", 9, "d9", false)
	add("d", 5, "", false) // an empty value is a put
	big := string(bytes.Repeat([]byte("x"), maxBatchBytes))
	add("e", 3, big, false)
	add("f", 3, big, false)
	require.EqualValues(t, 2*len(big)+16, c.bytes)

	var got []string
	for _, m := range c.batches(c.rows) {
		b := m.GetBatch()
		require.NotNil(t, b)
		s := fmt.Sprintf("%d:", b.CommitTs)
		for _, p := range b.Pairs {
			v := string(p.Value)
			if len(v) > 8 {
				v = "big"
			}
			if p.Op == import_sstpb.Pair_Delete {
				v = "DEL"
			}
			s += fmt.Sprintf(" %s=%s", p.Key, v)
		}
		got = append(got, s)
	}
	// Runs of one commit_ts in file order, never regrouped across keys.
	require.Equal(t, []string{"9: a=a9", "5: a=DEL", "7: b=b7 c=c7", "9: d=d9", "5: d=", "3: e=big", "3: f=big"}, got)
	c.reset()
	require.Empty(t, c.rows)
	require.Empty(t, c.batches(c.rows))
}
