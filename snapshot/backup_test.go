package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/testkit"
)

// load writes n keys under prefix with values of varied sizes (a few over
// 1 MiB) and deletes every seventh again; it returns nothing, the cluster
// is the reference.
func load(t *testing.T, ctx context.Context, kv *txnkv.Client, prefix string, n int, rng *rand.Rand) {
	t.Helper()
	for i := 0; i < n; i += 50 {
		txn, err := kv.Begin()
		require.NoError(t, err)
		for j := i; j < min(i+50, n); j++ {
			size := 1 + rng.Intn(300)
			if j%97 == 0 {
				size = 1<<20 + rng.Intn(1000)
			}
			v := make([]byte, size)
			rng.Read(v)
			require.NoError(t, txn.Set(fmt.Appendf(nil, "%s%06d", prefix, j), v))
		}
		require.NoError(t, txn.Commit(ctx))
	}
	txn, err := kv.Begin()
	require.NoError(t, err)
	for j := 0; j < n; j += 7 {
		require.NoError(t, txn.Delete(fmt.Appendf(nil, "%s%06d", prefix, j)))
	}
	require.NoError(t, txn.Commit(ctx))
}

// readSnapshot reads every row of the snapshot's files.
func readSnapshot(t *testing.T, ctx context.Context, st storage.Storage, info Info) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, f := range info.Meta.GetFiles() {
		b, err := st.Get(ctx, info.Root+f.GetPath())
		require.NoError(t, err)
		require.EqualValues(t, f.GetSize(), len(b))
		rd, err := logfile.NewReader(bytes.NewReader(b), int64(len(b)))
		require.NoError(t, err)
		it := rd.Iter(nil, nil)
		for it.Next() {
			r := it.Row()
			require.Equal(t, info.BackupTS, r.CommitTS)
			require.Equal(t, logfile.OpPut, r.Op)
			_, dup := out[string(r.Key)]
			require.False(t, dup, "key %q twice", r.Key)
			out[string(r.Key)] = bytes.Clone(r.Value)
		}
		require.NoError(t, it.Err())
		require.NoError(t, it.Close())
	}
	return out
}

func openStorage(t *testing.T, ctx context.Context) (storage.Storage, string) {
	t.Helper()
	url := "file://" + t.TempDir()
	st, err := storage.Open(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	return st, url
}

func noSafePointsLeft(t *testing.T, c *testkit.Cluster) {
	t.Helper()
	sps, err := c.P.PD.ServiceSafePoints(c.Ctx)
	require.NoError(t, err)
	for id := range sps {
		require.False(t, strings.HasPrefix(id, "pitr-backup-"), "service safepoint %s left behind", id)
	}
}

// TestBackupIsTheClusterAtB takes a backup while a workload writes, with
// splits and leader moves, and checks that the snapshot's files hold
// exactly what a read at B returns, that a second backup into the root is
// refused, and that no GC safepoint is left.
func TestBackupIsTheClusterAtB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	rng := testkit.Rand(t)
	load(t, ctx, c.KV, "k/", 2000, rng)
	for _, k := range []string{"k/000300", "k/000900", "k/001500"} {
		_, err := c.P.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	// Writes and leader moves while the backup runs.
	w := c.StartWorkload(func(ctx context.Context) error {
		for i := 0; ctx.Err() == nil; i++ {
			txn, err := c.KV.Begin()
			if err != nil {
				return err
			}
			_ = txn.Set(fmt.Appendf(nil, "k/%06d", rng.Intn(2500)), fmt.Appendf(nil, "w%d", i))
			_ = txn.Commit(ctx)
			if i%20 == 0 {
				c.MoveLeader()(ctx, rng)
			}
		}
		return nil
	})
	st, url := openStorage(t, ctx)
	res, err := Run(ctx, Options{Storage: st, StorageURL: url, PD: c.Clients.PD, KV: c.KV.KVStore, RangeRegions: 1, FileTarget: 256 << 10})
	require.NoError(t, err)
	require.NoError(t, w.Stop())
	require.GreaterOrEqual(t, res.Ranges, 4)
	require.Greater(t, res.Files, 4, "files are cut at the target")

	info, err := Load(ctx, st, "")
	require.NoError(t, err)
	require.True(t, info.Finished())
	require.Equal(t, res.BackupTS, info.BackupTS)
	testkit.RequireSame(t, c.ReadAll(info.BackupTS), readSnapshot(t, ctx, st, info), info.BackupTS)
	noSafePointsLeft(t, c)

	_, err = Run(ctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore})
	require.ErrorIs(t, err, ErrConflict)
	noSafePointsLeft(t, c)
}

// TestBackupResumes stops a backup after two ranges, as a kill would, and
// checks that the rerun skips them and ends with the same data.
func TestBackupResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	load(t, ctx, c.KV, "r/", 1000, testkit.Rand(t))
	for _, k := range []string{"r/000200", "r/000400", "r/000600", "r/000800"} {
		_, err := c.P.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	st, _ := openStorage(t, ctx)
	kctx, kill := context.WithCancel(ctx)
	var n atomic.Int32
	_, err := Run(kctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, RangeRegions: 1, Concurrency: 1,
		afterRange: func(keyspace.Range) {
			if n.Add(1) == 2 {
				kill()
			}
		}})
	require.Error(t, err)
	info, err := Load(ctx, st, "")
	require.NoError(t, err)
	require.False(t, info.Finished())

	// Other ranges are a conflict, not a resume.
	_, err = Run(ctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, Ranges: []keyspace.Range{{Start: []byte("r/")}}})
	require.ErrorIs(t, err, ErrConflict)

	res, err := Run(ctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, RangeRegions: 1})
	require.NoError(t, err)
	require.True(t, res.Resumed)
	require.Equal(t, 2, res.RangesSkipped)
	require.Equal(t, info.BackupTS, res.BackupTS)
	info, err = Load(ctx, st, "")
	require.NoError(t, err)
	testkit.RequireSame(t, c.ReadAll(info.BackupTS), readSnapshot(t, ctx, st, info), info.BackupTS)
	noSafePointsLeft(t, c)
}

// TestBackupRefusesGCdTS: a backup ts below the GC safepoint is refused
// before anything is written.
func TestBackupRefusesGCdTS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	old := c.TS()
	time.Sleep(10 * time.Millisecond)
	_, err := c.Clients.PD.UpdateGCSafePoint(ctx, c.TS())
	require.NoError(t, err)
	st, _ := openStorage(t, ctx)
	_, err = Run(ctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, BackupTS: old})
	require.ErrorIs(t, err, ErrConflict)
	_, err = Load(ctx, st, "")
	require.ErrorIs(t, err, ErrNoSnapshot, "nothing written")
	noSafePointsLeft(t, c)
}

// lyingAgents scans like an agent would, then reports a wrong checksum for
// one range.
type lyingAgents struct {
	kv    *txnkv.Client
	st    storage.Storage
	lie   bool
	calls atomic.Int32
}

func (a *lyingAgents) BackupRange(ctx context.Context, storeID uint64, req *pitrpb.BackupRangeRequest) (*pitrpb.BackupRangeResponse, bool, error) {
	r := keyspace.Range{Start: req.GetRange().GetStartKey(), End: req.GetRange().GetEndKey()}
	s, err := ScanRange(ctx, a.kv.KVStore, a.st, ScanOptions{Root: req.GetRoot(), BackupTS: req.GetBackupTs(), Range: r})
	if err != nil {
		return nil, true, err
	}
	if a.calls.Add(1) == 1 && a.lie {
		s.Sum.Crc64Xor ^= 1
	}
	return &pitrpb.BackupRangeResponse{Files: s.Files, StoreId: storeID,
		Checksum: &pitrpb.RangeChecksum{Crc64Xor: s.Sum.Crc64Xor, TotalKvs: s.Sum.TotalKvs, TotalBytes: s.Sum.TotalBytes}}, true, nil
}

// TestBackupChecksumMismatchFails: a range whose data does not match the
// cluster's coprocessor checksum fails the backup; no backupmeta is
// written. The agent path is used for every range it answers.
func TestBackupChecksumMismatchFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{})
	load(t, ctx, c.KV, "c/", 300, testkit.Rand(t))
	st, _ := openStorage(t, ctx)
	_, err := Run(ctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, Agents: &lyingAgents{kv: c.KV, st: st, lie: true}})
	require.ErrorIs(t, err, ErrChecksum)
	require.Contains(t, err.Error(), "cluster's own checksum")
	info, err := Load(ctx, st, "")
	require.NoError(t, err)
	require.False(t, info.Finished())
	noSafePointsLeft(t, c)

	// The agents' honest answers (after the first) finish it.
	res, err := Run(ctx, Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, Agents: &lyingAgents{kv: c.KV, st: st}})
	require.NoError(t, err)
	require.Equal(t, res.Ranges, res.ByAgents)
}

func TestSubtract(t *testing.T) {
	r := func(s, e string) keyspace.Range { return keyspace.Range{Start: []byte(s), End: []byte(e)} }
	got := subtract([]keyspace.Range{r("a", "z")}, []keyspace.Range{r("b", "c"), r("x", "")})
	require.Equal(t, []keyspace.Range{r("a", "b"), r("c", "x")}, normalizeEmpty(got))
	require.Empty(t, subtract([]keyspace.Range{r("a", "b")}, []keyspace.Range{r("", "")}))
	require.Equal(t, []keyspace.Range{r("", "a")}, normalizeEmpty(subtract([]keyspace.Range{{}}, []keyspace.Range{r("a", "")})))
}

func normalizeEmpty(rs []keyspace.Range) []keyspace.Range {
	for i := range rs {
		if len(rs[i].Start) == 0 {
			rs[i].Start = []byte{}
		}
		if len(rs[i].End) == 0 {
			rs[i].End = []byte{}
		}
	}
	return rs
}
