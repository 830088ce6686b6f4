package restore

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// testSnapshot describes a snapshot root written by hand, the way
// pitr backup full lays it out (snapshot/layout.go): data files of the log
// schema holding one Put per key visible at BackupTS (commit_ts = start_ts
// = BackupTS), a backup.lock, and last the backupmeta with a checksum per
// part of the ranges.
type testSnapshot struct {
	BackupTS  uint64
	ClusterID uint64
	Task      string
	Ranges    []keyspace.Range // default: everything
	// Splits cut the ranges into checksummed parts.
	Splits [][]byte
	// RowsPerFile cuts the data files (default 100).
	RowsPerFile int
}

// write stores the snapshot of kv (key -> value) at root of st and
// returns its backupmeta.
func (s testSnapshot) write(t *testing.T, st storage.Storage, root string, kv map[string]string) *pitrpb.BackupMeta {
	t.Helper()
	ctx := context.Background()
	ranges := s.Ranges
	if len(ranges) == 0 {
		ranges = []keyspace.Range{{}}
	}
	ranges = keyspace.Merge(ranges)
	if s.RowsPerFile <= 0 {
		s.RowsPerFile = 100
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		for _, r := range ranges {
			if r.Contains([]byte(k)) {
				keys = append(keys, k)
				break
			}
		}
	}
	sort.Strings(keys)
	lock, err := logfile.EncodeSnapshotLock(&pitrpb.SnapshotLock{BackupTs: s.BackupTS, ClusterId: s.ClusterID, Task: s.Task, Ranges: pbRanges(ranges)})
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, root+snapshot.LockName, lock))

	m := &pitrpb.BackupMeta{BackupTs: s.BackupTS, ClusterId: s.ClusterID, Task: s.Task, Ranges: pbRanges(ranges)}
	for i := 0; i < len(keys); i += s.RowsPerFile {
		var buf bytes.Buffer
		w, err := logfile.NewWriter(&buf, logfile.WriterOptions{RowGroupBytes: 16 << 10})
		require.NoError(t, err)
		for _, k := range keys[i:min(i+s.RowsPerFile, len(keys))] {
			require.NoError(t, w.Write(&logfile.Row{Key: []byte(k), CommitTS: s.BackupTS, StartTS: s.BackupTS, Op: logfile.OpPut, Value: []byte(kv[k])}))
		}
		stats, err := w.Close()
		require.NoError(t, err)
		path := snapshot.FilePath(fmt.Sprintf("%06d", i/s.RowsPerFile))
		require.NoError(t, st.Put(ctx, root+path, buf.Bytes()))
		m.Files = append(m.Files, stats.DataFile(path))
	}
	// The checksummed parts: the ranges cut at the splits inside them.
	var parts []keyspace.Range
	for _, r := range ranges {
		start := r.Start
		for _, sp := range s.Splits {
			if bytes.Compare(sp, start) > 0 && keyspace.BeforeEnd(sp, r.End) {
				parts = append(parts, keyspace.Range{Start: start, End: sp})
				start = sp
			}
		}
		parts = append(parts, keyspace.Range{Start: start, End: r.End})
	}
	var total checksum.Sum
	for _, p := range parts {
		var sum checksum.Sum
		for _, k := range keys {
			if p.Contains([]byte(k)) && checksum.InBounds(p, []byte(k)) {
				sum.Add([]byte(k), []byte(kv[k]))
			}
		}
		total.Merge(sum)
		m.Checksums = append(m.Checksums, &pitrpb.RangeChecksum{Range: &pitrpb.KeyRange{StartKey: p.Start, EndKey: p.End},
			Crc64Xor: sum.Crc64Xor, TotalKvs: sum.TotalKvs, TotalBytes: sum.TotalBytes})
	}
	m.TotalKvs, m.TotalBytes = total.TotalKvs, total.TotalBytes
	b, err := logfile.EncodeBackupMeta(m)
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, root+snapshot.MetaName, b))
	return m
}

func pbRanges(rs []keyspace.Range) []*pitrpb.KeyRange {
	out := make([]*pitrpb.KeyRange, 0, len(rs))
	for _, r := range rs {
		out = append(out, &pitrpb.KeyRange{StartKey: r.Start, EndKey: r.End})
	}
	return out
}
