package restore

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
)

func TestProgressFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "p.json")
	key := progressState{Storage: "file:///b", Task: "t", RestoreTS: 42, ClusterID: 7}
	p, err := openProgress(path, key)
	require.NoError(t, err)
	require.False(t, p.started())
	u := func(s, e string) keyspace.Range { return keyspace.Range{Start: []byte(s), End: []byte(e)} }
	require.False(t, p.isDone(u("a", "b")))
	require.NoError(t, p.markStarted())
	require.NoError(t, p.markDone(u("a", "b"), u("c", "d")))
	require.NoError(t, p.markDone(u("b", "c"), u("x", "")))
	require.NoError(t, p.flush(false))

	p, err = openProgress(path, key)
	require.NoError(t, err)
	require.True(t, p.started())
	require.False(t, p.finished())
	require.Equal(t, []keyspace.Range{u("a", "d"), u("x", "")}, p.done)
	for _, tc := range []struct {
		u    keyspace.Range
		done bool
	}{
		{u("a", "b"), true}, {u("b", "d"), true}, {u("a", "d"), true}, {u("a", "e"), false},
		{u("", "a"), false}, {u("x", "y"), true}, {u("y", ""), true}, {u("w", "x"), false}, {u("d", "e"), false},
	} {
		require.Equal(t, tc.done, p.isDone(tc.u), "%v", tc.u)
	}
	require.NoError(t, p.flush(true))
	p, err = openProgress(path, key)
	require.NoError(t, err)
	require.True(t, p.finished())

	for _, other := range []progressState{
		{Storage: "file:///c", RestoreTS: 42, ClusterID: 7},
		{Storage: "file:///b", RestoreTS: 43, ClusterID: 7},
		{Storage: "file:///b", RestoreTS: 42, ClusterID: 8},
	} {
		_, err := openProgress(path, other)
		require.ErrorContains(t, err, "belongs to another restore")
	}
	require.NoError(t, os.WriteFile(path, []byte("{"), 0o600))
	_, err = openProgress(path, key)
	require.ErrorContains(t, err, "remove it to start over")
	require.NoError(t, os.WriteFile(path, []byte(`{"version": 3}`), 0o600))
	_, err = openProgress(path, key)
	require.ErrorContains(t, err, "version 3")

	a := DefaultProgressPath("s3://x", 1, 2)
	require.NotEqual(t, a, DefaultProgressPath("s3://x", 1, 3))
	require.Equal(t, a, DefaultProgressPath("s3://x", 1, 2))
}

// TestProgressGCRatios: the old gc.ratio-threshold values survive a reopen
// until forgotten; a version 1 file (before they existed) is read and
// rewritten as version 2.
func TestProgressGCRatios(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.json")
	key := progressState{Storage: "file:///b", Task: "t", RestoreTS: 42, ClusterID: 7}
	require.NoError(t, os.WriteFile(path, []byte(`{"version": 1, "storage": "file:///b", "task": "t", "restore_ts": 42, "target_cluster_id": 7, "started_unix_ms": 5, "done": []}`), 0o600))
	p, err := openProgress(path, key)
	require.NoError(t, err)
	require.True(t, p.started())
	require.Empty(t, p.gcRatios())
	require.NoError(t, p.recordGCRatio(1, "1.1"))
	require.NoError(t, p.recordGCRatio(4, "2.5"))

	p, err = openProgress(path, key)
	require.NoError(t, err)
	require.Equal(t, map[uint64]string{1: "1.1", 4: "2.5"}, p.gcRatios())
	v, ok := p.gcRatio(4)
	require.True(t, ok)
	require.Equal(t, "2.5", v)
	require.NoError(t, p.forgetGCRatios(1))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), `"version": 2`)
	require.Contains(t, string(b), `"gc_ratio_threshold": {`)

	p, err = openProgress(path, key)
	require.NoError(t, err)
	require.Equal(t, map[uint64]string{4: "2.5"}, p.gcRatios())
}

// The expected checksums ride in the version 2 file as an optional field:
// a file without it (an older build's) opens with none, and recorded sums
// survive a reopen, one per range.
func TestProgressChecksums(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.json")
	old := `{"version": 2, "storage": "file:///b", "task": "t", "restore_ts": 42, "target_cluster_id": 7, "started_unix_ms": 1, "done": [{"start": "61", "end": "62"}], "finished": false}`
	require.NoError(t, os.WriteFile(path, []byte(old), 0o600))
	key := progressState{Storage: "file:///b", Task: "t", RestoreTS: 42, ClusterID: 7}
	p, err := openProgress(path, key)
	require.NoError(t, err)
	require.Empty(t, p.sums())
	u := func(s, e string) keyspace.Range { return keyspace.Range{Start: []byte(s), End: []byte(e)} }
	require.NoError(t, p.recordSum(u("c", ""), checksum.Sum{Crc64Xor: 3, TotalKvs: 1, TotalBytes: 9}))
	require.NoError(t, p.recordSum(u("a", "c"), checksum.Sum{Crc64Xor: 1, TotalKvs: 2, TotalBytes: 3}))
	require.NoError(t, p.recordSum(u("a", "c"), checksum.Sum{Crc64Xor: 2, TotalKvs: 2, TotalBytes: 3}))
	require.NoError(t, p.flush(false))
	p, err = openProgress(path, key)
	require.NoError(t, err)
	require.Equal(t, []expectedSum{
		{Range: u("a", "c"), Sum: checksum.Sum{Crc64Xor: 2, TotalKvs: 2, TotalBytes: 3}},
		{Range: u("c", ""), Sum: checksum.Sum{Crc64Xor: 3, TotalKvs: 1, TotalBytes: 9}},
	}, p.sums())
	require.True(t, p.isDone(u("a", "b")))
}
