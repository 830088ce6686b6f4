package pitr_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
)

// loadBefore writes what a real cluster holds before its backup starts:
// n keys with values from 1 B to over 1 MiB, and deletes some again.
func loadBefore(ctx context.Context, kv *txnkv.Client, prefix string, n int, rng *rand.Rand) error {
	for i := 0; i < n; i += 40 {
		txn, err := kv.Begin()
		if err != nil {
			return err
		}
		for j := i; j < min(i+40, n); j++ {
			size := 1 + rng.Intn(600)
			if j%150 == 0 {
				size = 1<<20 + rng.Intn(4096)
			}
			v := make([]byte, size)
			rng.Read(v)
			if err := txn.Set(fmt.Appendf(nil, "%s%06d", prefix, j), v); err != nil {
				return err
			}
		}
		if err := txn.Commit(ctx); err != nil {
			return err
		}
	}
	txn, err := kv.Begin()
	if err != nil {
		return err
	}
	for j := 3; j < n; j += 11 {
		if err := txn.Delete(fmt.Appendf(nil, "%s%06d", prefix, j)); err != nil {
			return err
		}
	}
	return txn.Commit(ctx)
}

// TestSnapshotEndToEnd is the path of every real user: the cluster holds
// data before the log task starts, so a restore needs a base snapshot. A
// snapshot is taken through the agents while a bank workload runs with
// splits, leader moves, an agent kill and a store restart while it runs
// (GC running on the source), and
// the leading coordinator takes more on its schedule; then restores at 10
// random T in [first B, checkpoint] into fresh targets (GC on), each from
// the newest snapshot at or before T, must read what the source reads at
// T, key for key.
func TestSnapshotEndToEnd(t *testing.T) {
	runFor := runLength()
	rng0 := rand.New(rand.NewSource(1))
	bank := &workload.Bank{Prefix: "snap/", Accounts: 300, Initial: 1000}
	ctx, p, rng := startE2E(t, pipeline.Options{Task: "snap", HoldsData: true,
		Cluster:     testkit.Options{Playground: playground.Config{Stores: 3, MinTSInterval: 200 * time.Millisecond}},
		Coordinator: func(_ int, cfg *coordinator.Config) { cfg.SnapshotInterval = runFor / 3 },
		Setup: func(c *testkit.Cluster) {
			bank.Client = c.KV
			require.NoError(t, bank.Init(c.Ctx))
			require.NoError(t, loadBefore(c.Ctx, c.KV, "pre/", 1500, rng0))
			for _, k := range []string{"pre/000500", "pre/001000", "snap/account/00000150"} {
				_, err := c.P.Cluster.Split([]byte(k))
				require.NoError(t, err)
			}
		}})

	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 6, &st) })
	var snap *snapshot.Result
	snapped := make(chan struct{})
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: runFor,
		Routine: []testkit.Action{p.Split(16, bankKey(bank)), p.MoveLeader(), nil},
		Faults: []testkit.Fault{
			// Slowed down (the agents' uploads at 512 KiB/s each) so that
			// an agent kill and a store restart land while it runs.
			{At: 0.15, Name: "snapshot while the workload runs", Inject: func(context.Context, *rand.Rand) (bool, error) {
				go func() {
					defer close(snapped)
					snap = p.Snapshot(0, snapshot.Options{RangeRegions: 1, RateLimit: 512 << 10})
				}()
				return true, nil
			}},
			p.AgentKill(0.3),
			p.RestartStore(0.4, 2*time.Second),
		},
		Watch: []*testkit.Workload{work},
	}
	require.NoError(t, chaos.Run(ctx), "every fault was injected")
	<-snapped
	require.NoError(t, work.Stop())
	require.NotNil(t, snap)
	require.Greater(t, snap.ByAgents, 0, "agents scanned ranges")
	t.Logf("snapshot at %d: %d ranges (%d by agents), %d files, %d keys, %d bytes, in %s", snap.BackupTS, snap.Ranges, snap.ByAgents, snap.Files, snap.Kvs, snap.Bytes, snap.Duration)

	endTS := p.TS()
	cp := p.WaitCheckpoint(endTS, 90*time.Second)
	require.Greater(t, cp, snap.BackupTS)
	p.Verify(cp)
	infos, err := snapshot.List(ctx, p.Backup())
	require.NoError(t, err)
	first := uint64(0)
	finished := 0
	for _, in := range infos {
		if in.Finished() {
			finished++
			if first == 0 {
				first = in.BackupTS
			}
		}
	}
	require.GreaterOrEqual(t, finished, 2, "the coordinator's scheduled snapshots and ours")

	points := randomPoints(rng, first, cp, 10)
	for i, T := range points {
		r := p.RestoreInto(i, T, pipeline.RestoreOptions{})
		testkit.RequireSame(t, p.ReadAll(T), r.Read, T)
		t.Logf("T #%2d = %d: %d keys equal (%d versions restored)", i, T, len(r.Read), r.Result.Rows)
	}
}

// childEnv makes the test binary a backup command of its own (TestMain):
// a process the test can kill -9.
const childEnv = "PITR_E2E_CHILD"

// runChild runs `backup` in a child process: PITR_CHILD_PD, _STORAGE,
// _RATE (bytes/s), _TTL (seconds) configure it.
func runChild(what string) int {
	if what == "volume-backup" {
		return runVolumeChild()
	}
	if what != "backup" {
		fmt.Fprintf(os.Stderr, "unknown child %q\n", what)
		return 2
	}
	ctx := context.Background()
	rate, _ := strconv.ParseInt(os.Getenv("PITR_CHILD_RATE"), 10, 64)
	ttl, _ := strconv.Atoi(os.Getenv("PITR_CHILD_TTL"))
	leaseTTL, _ := strconv.Atoi(os.Getenv("PITR_CHILD_LEASE"))
	cfg := connector.Config{PDAddrs: []string{os.Getenv("PITR_CHILD_PD")}, Timeout: 10 * time.Second}
	kv, err := connector.KV(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	pd, err := connector.PD(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	st, err := storage.OpenStack(ctx, os.Getenv("PITR_CHILD_STORAGE"), storage.StackOptions{RateLimit: rate})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err = snapshot.Run(ctx, snapshot.Options{Storage: st, PD: pd, KV: kv.KVStore, RangeRegions: 1, Concurrency: 1,
		SafePointTTL: time.Duration(ttl) * time.Second, LeaseTTL: time.Duration(leaseTTL) * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestSnapshotKilledAndResumed kills a backup with SIGKILL after its first
// range is recorded: its GC safepoint is still held then (for at most its
// TTL, and then it expires: nothing is left behind), its lease keeps another
// process from taking the backup over until it expires, and then rerunning
// the backup resumes it — same ts, the finished range
// skipped — ends with the source's data at B, and leaves no safepoint.
func TestSnapshotKilledAndResumed(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := testkit.StartCluster(t, ctx, testkit.Options{Playground: playground.Config{Stores: 3}})
	require.NoError(t, loadBefore(ctx, c.KV, "k/", 1200, testkit.Rand(t)))
	for _, k := range []string{"k/000200", "k/000400", "k/000600", "k/000800", "k/001000"} {
		_, err := c.P.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	url := "file://" + t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=backup", "PITR_CHILD_PD="+c.P.PDAddr(), "PITR_CHILD_STORAGE="+url,
		"PITR_CHILD_RATE="+strconv.Itoa(1<<20), "PITR_CHILD_TTL=4", "PITR_CHILD_LEASE=3")
	var stderr strings.Builder
	child.Stderr = &stderr
	require.NoError(t, child.Start())
	st, err := storage.Open(ctx, url)
	require.NoError(t, err)
	defer st.Close()
	require.Eventually(t, func() bool {
		n := 0
		_ = st.List(ctx, snapshot.RangePrefix, func(storage.ObjectInfo) error { n++; return nil })
		return n >= 1
	}, time.Minute, 50*time.Millisecond, "the child records a range")
	require.NoError(t, child.Process.Signal(syscall.SIGKILL))
	err = child.Wait()
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "killed: %v (%s)", err, stderr.String())
	killed := time.Now()

	// The dead backup's lease (3 s) has not expired yet: nobody else may
	// take the backup over until it has.
	_, err = snapshot.Run(ctx, snapshot.Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, RangeRegions: 1})
	require.ErrorIs(t, err, snapshot.ErrConflict)
	require.Contains(t, err.Error(), "is being worked on by")
	require.Less(t, time.Since(killed), 3*time.Second, "the refusal came within the lease")

	info, err := snapshot.Load(ctx, st, "")
	require.NoError(t, err)
	require.False(t, info.Finished(), "killed before its backupmeta")
	sps, err := c.P.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	require.Contains(t, sps, snapshot.SafePointID(info.BackupTS), "the killed backup's safepoint lives until its TTL")
	// Nothing is left behind: the safepoint expires with its TTL (4 s).
	require.Eventually(t, func() bool {
		sps, err := c.P.PD.ServiceSafePoints(ctx)
		return err == nil && sps[snapshot.SafePointID(info.BackupTS)] == 0
	}, 15*time.Second, 200*time.Millisecond, "the killed backup's safepoint expires")

	// The dead backup's lease has not expired yet: nobody else may take
	// it over. Once it has, the rerun resumes.
	res, err := snapshot.Run(ctx, snapshot.Options{Storage: st, PD: c.Clients.PD, KV: c.KV.KVStore, RangeRegions: 1})
	require.NoError(t, err)
	require.True(t, res.Resumed)
	require.GreaterOrEqual(t, res.RangesSkipped, 1)
	require.Equal(t, info.BackupTS, res.BackupTS)
	t.Logf("resumed: %d of %d ranges were done", res.RangesSkipped, res.Ranges)

	info, err = snapshot.Load(ctx, st, "")
	require.NoError(t, err)
	got := map[string][]byte{}
	for _, f := range info.Meta.GetFiles() {
		rows, err := readDataFile(ctx, st, f.GetPath())
		require.NoError(t, err)
		for k, v := range rows {
			got[k] = v
		}
	}
	testkit.RequireSame(t, c.ReadAll(info.BackupTS), got, info.BackupTS)
	sps, err = c.P.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	require.NotContains(t, sps, snapshot.SafePointID(info.BackupTS))
}

// readDataFile reads a snapshot file's rows: key to value.
func readDataFile(ctx context.Context, st storage.Storage, path string) (map[string][]byte, error) {
	b, err := st.Get(ctx, path)
	if err != nil {
		return nil, err
	}
	rd, err := logfile.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, err
	}
	it := rd.Iter(nil, nil)
	defer it.Close()
	out := map[string][]byte{}
	for it.Next() {
		out[string(it.Row().Key)] = bytes.Clone(it.Row().Value)
	}
	return out, it.Err()
}
