package restore

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// smallBackup: two stores, keys k000..k199, three flushes each; store 1
// owns ["", "k100"), store 2 ["k100", +inf). Returns the backup and the
// flush timestamps.
func smallBackup(t *testing.T) (*testBackup, []uint64) { return smallBackupKF(t, 0) }

// smallBackupKF is smallBackup with a keyframe every keyframeEvery metas
// of a store (1: every meta a full list, as before format 3).
func smallBackupKF(t *testing.T, keyframeEvery int) (*testBackup, []uint64) {
	start := keyspace.Compose(1000, 0)
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "small", StartTs: start, StartedEmpty: true})
	b.keyframeEvery = keyframeEvery
	rng := rand.New(rand.NewSource(2))
	cuts := []uint64{start, start + 100, start + 200, start + 300}
	for w := 1; w < len(cuts); w++ {
		var r1, r2 []logfile.Row
		for i := 0; i < 300; i++ {
			k := rng.Intn(200)
			ts := cuts[w-1] + 1 + uint64(rng.Intn(int(cuts[w]-cuts[w-1])))
			r := logfile.Row{Key: []byte(fmt.Sprintf("k%03d", k)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(strings.Repeat("v", rng.Intn(50)))}
			if rng.Intn(5) == 0 {
				r.Op, r.Value = logfile.OpDelete, nil
			}
			if k < 100 {
				r1 = append(r1, r)
			} else {
				r2 = append(r2, r)
			}
		}
		b.flush(1, cuts[w], r1, cov("", "k100", cuts[w-1], cuts[w]))
		b.flush(2, cuts[w], r2, cov("k100", "", cuts[w-1], cuts[w]))
	}
	b.checkpoint(cuts[3])
	return b, cuts
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	b, cuts := smallBackup(t)
	dataFiles := func(t *testing.T, dir string) []string {
		var out []string
		_ = filepath.Walk(filepath.Join(dir, "log"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				out = append(out, p)
			}
			return nil
		})
		require.NotEmpty(t, out)
		return out
	}

	t.Run("good", func(t *testing.T) {
		res, err := Verify(ctx, b.st, VerifyOptions{})
		require.NoError(t, err)
		require.Equal(t, 6, res.Metas)
		require.Equal(t, 6, res.Files)
		require.Equal(t, cuts[3], res.To)
		require.Contains(t, res.Summary(), "ok: task \"small\"")
		res, err = Verify(ctx, b.st, VerifyOptions{RestoreTS: cuts[1] + 5})
		require.NoError(t, err)
		require.Equal(t, cuts[1]+5, res.To)
	})
	t.Run("to past checkpoint", func(t *testing.T) {
		_, err := Verify(ctx, b.st, VerifyOptions{RestoreTS: cuts[3] + 1})
		require.ErrorIs(t, err, ErrOutOfRange)
		require.Contains(t, err.Error(), "restorable range is ["+keyspace.Format(cuts[0]))
	})
	t.Run("hole", func(t *testing.T) {
		dir, st := b.copyTo(t)
		// Drop store 2's last meta: its keys lose (cuts[2], cuts[3]].
		require.NoError(t, os.Remove(filepath.Join(dir, filepath.FromSlash(logfile.MetaPath(cuts[3], 2)))))
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrMissing)
		require.Contains(t, err.Error(), fmt.Sprintf(`coverage hole: keys ["k100", +inf) have no log for commit_ts (%s, %s]`, keyspace.Format(cuts[2]), keyspace.Format(cuts[3])))
		// Before the hole, the log is complete.
		_, err = Verify(ctx, st, VerifyOptions{RestoreTS: cuts[2]})
		require.NoError(t, err)
	})
	t.Run("chain lost a meta", func(t *testing.T) {
		dir, st := b.copyTo(t)
		// Store 2's second meta is gone; the third continues it. Its files
		// may have held changes of any region, so nothing after the first
		// meta can be trusted: the backup is refused, naming both.
		require.NoError(t, os.Remove(filepath.Join(dir, filepath.FromSlash(logfile.MetaPath(cuts[2], 2)))))
		_, err := Verify(ctx, st, VerifyOptions{RestoreTS: cuts[1]})
		require.ErrorIs(t, err, ErrMissing)
		require.Contains(t, err.Error(), fmt.Sprintf("meta %s continues meta %s, which is not in storage",
			logfile.MetaPath(cuts[3], 2), logfile.MetaPath(cuts[2], 2)))
	})
	t.Run("hole in full lists", func(t *testing.T) {
		b, cuts := smallBackupKF(t, 1)
		dir, st := b.copyTo(t)
		// Drop store 2's second meta: its keys lose (cuts[1], cuts[2]].
		require.NoError(t, os.Remove(filepath.Join(dir, filepath.FromSlash(logfile.MetaPath(cuts[2], 2)))))
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrMissing)
		require.Contains(t, err.Error(), fmt.Sprintf(`coverage hole: keys ["k100", +inf) have no log for commit_ts (%s, %s]`, keyspace.Format(cuts[1]), keyspace.Format(cuts[2])))
		// Before the hole, the log is complete.
		_, err = Verify(ctx, st, VerifyOptions{RestoreTS: cuts[1]})
		require.NoError(t, err)
	})
	t.Run("flipped byte", func(t *testing.T) {
		dir, st := b.copyTo(t)
		files := dataFiles(t, dir)
		flipByte(t, files[len(files)-1])
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrCorrupt)
		rel, _ := filepath.Rel(dir, files[len(files)-1])
		require.Contains(t, err.Error(), "data file "+filepath.ToSlash(rel)+" has sha256")
	})
	t.Run("truncated", func(t *testing.T) {
		dir, st := b.copyTo(t)
		f := dataFiles(t, dir)[0]
		fi, err := os.Stat(f)
		require.NoError(t, err)
		require.NoError(t, os.Truncate(f, fi.Size()-1))
		_, err = Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), "bytes, its meta")
	})
	t.Run("missing file", func(t *testing.T) {
		dir, st := b.copyTo(t)
		f := dataFiles(t, dir)[1]
		require.NoError(t, os.Remove(f))
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrMissing)
		rel, _ := filepath.Rel(dir, f)
		require.Contains(t, err.Error(), "data file "+filepath.ToSlash(rel)+" is missing (referenced by meta/")
	})
	t.Run("corrupt meta", func(t *testing.T) {
		dir, st := b.copyTo(t)
		p := filepath.Join(dir, filepath.FromSlash(logfile.MetaPath(cuts[2], 1)))
		require.NoError(t, os.WriteFile(p, []byte("garbage"), 0o644))
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), logfile.MetaPath(cuts[2], 1))
	})
	t.Run("newer task format", func(t *testing.T) {
		dir, st := b.copyTo(t)
		raw, err := logfile.EncodeTaskInfo(&pitrpb.TaskInfo{Name: "small", StartTs: cuts[0], StartedEmpty: true})
		require.NoError(t, err)
		raw = reframe(raw, 3)
		require.NoError(t, os.WriteFile(filepath.Join(dir, logfile.TaskPath), raw, 0o644))
		_, err = Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrFormat)
		require.Contains(t, err.Error(), "upgrade pitr")
	})
	t.Run("newer meta format", func(t *testing.T) {
		dir, st := b.copyTo(t)
		p := filepath.Join(dir, filepath.FromSlash(logfile.MetaPath(cuts[1], 2)))
		raw, err := os.ReadFile(p)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, reframe(raw, byte(logfile.MetaFormatVersion)+1), 0o644))
		_, err = Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrFormat)
	})
	t.Run("not a backup", func(t *testing.T) {
		_, st := (&testBackup{dir: t.TempDir()}).copyTo(t)
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrNotBackup)
		require.Contains(t, err.Error(), "has no pitr.lock")
	})
	t.Run("lock of another task", func(t *testing.T) {
		dir, st := b.copyTo(t)
		raw, err := logfile.EncodeLock(&pitrpb.Lock{Task: "other"})
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, logfile.LockPath), raw, 0o644))
		_, err = Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrNotBackup)
		require.Contains(t, err.Error(), `owned by task "other"`)
	})
	t.Run("no task.pb", func(t *testing.T) {
		dir, st := b.copyTo(t)
		require.NoError(t, os.Remove(filepath.Join(dir, logfile.TaskPath)))
		_, err := Verify(ctx, st, VerifyOptions{})
		require.ErrorIs(t, err, ErrNotBackup)
	})
}
