package restore

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// testBackup builds a task's storage root the way the service does: the
// root objects, then data files and metas written by flush.Flusher.
type testBackup struct {
	t        *testing.T
	dir      string
	url      string
	st       storage.Storage
	task     *pitrpb.TaskInfo
	flushers map[uint64]*flush.Flusher
	// Writer options of the data files (small row groups exercise pruning).
	writer     logfile.WriterOptions
	fileTarget int64
	// keyframeEvery of the flushers (flush.Settings; 0: the default).
	keyframeEvery int
}

func newTestBackup(t *testing.T, task *pitrpb.TaskInfo) *testBackup {
	t.Helper()
	dir := t.TempDir()
	return newTestBackupAt(t, task, dir, "file://"+dir)
}

// newTestBackupAt is newTestBackup in the storage at url (dir: its local
// directory, or "").
func newTestBackupAt(t *testing.T, task *pitrpb.TaskInfo, dir, url string) *testBackup {
	t.Helper()
	st, err := storage.Open(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	b := &testBackup{t: t, dir: dir, url: url, st: st, task: task, flushers: map[uint64]*flush.Flusher{},
		writer: logfile.WriterOptions{RowGroupBytes: 64 << 10}, fileTarget: 1 << 20}
	ctx := context.Background()
	lock, err := logfile.EncodeLock(&pitrpb.Lock{Task: task.GetName(), ClusterId: task.GetClusterId()})
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, logfile.LockPath, lock))
	tb, err := logfile.EncodeTaskInfo(task)
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, logfile.TaskPath, tb))
	return b
}

func (b *testBackup) checkpoint(ts uint64) {
	cp, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: b.task.GetName(), Ts: ts})
	require.NoError(b.t, err)
	require.NoError(b.t, b.st.Put(context.Background(), logfile.CheckpointPath, cp))
}

// flush writes rows as store's flush at flushTS with the given coverage.
func (b *testBackup) flush(store, flushTS uint64, rows []logfile.Row, regions ...*pitrpb.RegionCoverage) *pitrpb.Meta {
	b.t.Helper()
	f := b.flushers[store]
	if f == nil {
		var err error
		f, err = flush.New(flush.Config{StoreID: store, Task: b.task.GetName(), Dir: filepath.Join(b.t.TempDir(), "spill"),
			Storage: b.st, Writer: b.writer, Settings: flush.Settings{FileTarget: b.fileTarget, KeyframeEvery: b.keyframeEvery}})
		require.NoError(b.t, err)
		b.t.Cleanup(func() { _ = f.Close() })
		b.flushers[store] = f
	}
	ctx := context.Background()
	if len(rows) > 0 {
		cp := make([]logfile.Row, len(rows))
		for i := range rows {
			cp[i] = *rows[i].Clone()
		}
		require.NoError(b.t, f.Add(ctx, cp))
	}
	m, err := f.Flush(ctx, flushTS, regions)
	require.NoError(b.t, err)
	return m
}

// path is the local path of an object of the backup.
func (b *testBackup) path(key string) string { return filepath.Join(b.dir, filepath.FromSlash(key)) }

// copyTo copies the backup root into a new directory and opens it.
func (b *testBackup) copyTo(t *testing.T) (string, storage.Storage) {
	t.Helper()
	dir := t.TempDir()
	err := filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.dir, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), data, 0o644)
	})
	require.NoError(t, err)
	st, err := storage.Open(context.Background(), "file://"+dir)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	return dir, st
}

// flipByte flips one bit in the middle of a file.
func flipByte(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data[len(data)/2] ^= 0x10
	require.NoError(t, os.WriteFile(path, data, 0o644))
}
