package restore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// snapshotBackup is a task root (not started empty, start ts 100,
// checkpoint 300) whose log covers (100, 300], with finished snapshots at
// 150 and 200 and an unfinished one at 250 under it.
func snapshotBackup(t *testing.T) (*testBackup, map[string]string) {
	t.Helper()
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "snap", StartTs: 100, ClusterId: 7})
	var early, late []logfile.Row
	for ts := uint64(101); ts <= 300; ts++ {
		r := logfile.Row{Key: []byte(fmt.Sprintf("k%03d", ts%37)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(fmt.Sprint(ts))}
		if ts <= 140 {
			early = append(early, r)
		} else {
			late = append(late, r)
		}
	}
	b.flush(1, 140, early, cov("", "", 100, 140))
	b.flush(1, 300, late, cov("", "", 140, 300))
	b.checkpoint(300)
	kv := map[string]string{}
	for i := 0; i < 250; i++ {
		kv[fmt.Sprintf("k%03d", i)] = fmt.Sprint("v", i)
	}
	ts := testSnapshot{ClusterID: 7, Task: "snap", Splits: [][]byte{[]byte("k100")}, RowsPerFile: 60}
	for _, at := range []uint64{150, 200} {
		ts.BackupTS = at
		ts.write(t, b.st, snapshot.TaskRoot(at), kv)
	}
	lock, err := logfile.EncodeSnapshotLock(&pitrpb.SnapshotLock{BackupTs: 250, ClusterId: 7})
	require.NoError(t, err)
	require.NoError(t, b.st.Put(context.Background(), snapshot.TaskRoot(250)+snapshot.LockName, lock))
	return b, kv
}

func TestPlanFromStorage(t *testing.T) {
	ctx := context.Background()
	b, kv := snapshotBackup(t)

	p, err := PlanRestore(ctx, b.st, 260, nil)
	require.NoError(t, err)
	require.NotNil(t, p.Base)
	require.Equal(t, uint64(200), p.Base.BackupTS)
	require.Equal(t, uint64(200), p.LogFrom)
	require.Equal(t, 5, p.BaseFiles) // 250 keys, 60 a file
	for i, f := range p.Files[:p.BaseFiles] {
		require.True(t, f.Base)
		require.Equal(t, snapshot.TaskRoot(200)+snapshot.FilePath(fmt.Sprintf("%06d", i)), f.Key())
	}
	for _, f := range p.Files[p.BaseFiles:] {
		require.False(t, f.Base)
		require.Greater(t, f.File.GetMaxCommitTs(), uint64(200), "log files at or below B are pruned")
	}
	require.Equal(t, 1, p.Pruned, "the flush at 140")
	var units []string
	for _, u := range p.Units {
		units = append(units, u.String())
	}
	require.Equal(t, []string{`[-inf, "k100")`, `["k100", +inf)`}, units, "units cut at the checksum parts")
	var sb strings.Builder
	require.NoError(t, p.Print(&sb))
	require.Contains(t, sb.String(), "base          snapshot "+b.url+"/"+snapshot.TaskRoot(200))
	require.Contains(t, sb.String(), "log window    (200 (")

	p, err = PlanRestore(ctx, b.st, 199, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(150), p.Base.BackupTS)

	_, err = PlanRestore(ctx, b.st, 149, nil)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.Contains(t, err.Error(), "restorable range is [150 (")

	// An explicit root of its own.
	own := t.TempDir()
	ost, err := storage.Open(ctx, "file://"+own)
	require.NoError(t, err)
	defer ost.Close()
	testSnapshot{BackupTS: 170, ClusterID: 7, RowsPerFile: 1000}.write(t, ost, "", kv)
	p, err = PlanRestore(ctx, b.st, 260, ost)
	require.NoError(t, err)
	require.Equal(t, uint64(170), p.Base.BackupTS)
	require.True(t, p.Base.Explicit)
	require.Equal(t, snapshot.FilePath("000000"), p.Files[0].Key())

	other := t.TempDir()
	xst, err := storage.Open(ctx, "file://"+other)
	require.NoError(t, err)
	defer xst.Close()
	testSnapshot{BackupTS: 170, ClusterID: 8}.write(t, xst, "", kv)
	_, err = PlanRestore(ctx, b.st, 260, xst)
	require.ErrorIs(t, err, ErrNotBackup)
	require.Contains(t, err.Error(), "is of cluster 8")

	// Verify checks the base a restore to --to would use.
	res, err := Verify(ctx, b.st, VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, uint64(200), res.Base.BackupTS)
	require.Equal(t, 5, res.BaseFiles)
	require.Contains(t, res.Summary(), "base snapshot")
	_, err = Verify(ctx, b.st, VerifyOptions{RestoreTS: 120})
	require.ErrorIs(t, err, ErrOutOfRange)
	res, err = Verify(ctx, b.st, VerifyOptions{Snapshot: ost})
	require.NoError(t, err)
	require.Equal(t, uint64(170), res.Base.BackupTS)

	// A backupmeta whose checksum of a range does not match the files'
	// rows (a row lost between the backup's checksum and its files).
	bad := t.TempDir()
	bst, err := storage.Open(ctx, "file://"+bad)
	require.NoError(t, err)
	defer bst.Close()
	m := testSnapshot{BackupTS: 170, ClusterID: 7, Splits: [][]byte{[]byte("k100")}}.write(t, bst, "", kv)
	m.Checksums[1].TotalKvs--
	mb, err := logfile.EncodeBackupMeta(m)
	require.NoError(t, err)
	require.NoError(t, bst.Put(ctx, snapshot.MetaName, mb))
	_, err = Verify(ctx, b.st, VerifyOptions{Snapshot: bst})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), `the files' rows in range ["k100", +inf) sum to crc64xor=`)

	flipByte(t, b.path(snapshot.TaskRoot(200)+snapshot.FilePath("000003")))
	_, err = Verify(ctx, b.st, VerifyOptions{})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), snapshot.TaskRoot(200)+snapshot.FilePath("000003")+" has sha256")
	_, err = Verify(ctx, b.st, VerifyOptions{RestoreTS: 199}) // the older base is intact
	require.NoError(t, err)
}
