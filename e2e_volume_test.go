package pitr_test

import (
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
	"github.com/pitr-io/pitr/volsnap"
	"github.com/pitr-io/pitr/volume"
	"github.com/pitr-io/pitr/volume/local"
)

// TestVolumeEndToEnd is the volume-snapshot path (DESIGN.md §12): a
// cluster that holds data, a log task on it, and a volume backup of every
// store taken while a bank workload runs with splits and leader moves
// (GC running). Then, at 5 random T in [resolved ts, checkpoint], a new
// cluster is made as TiDB Operator and BR make one: its PD alone, pitr
// restore volume --prepare (a volume from every snapshot, PD marked), the
// stores started on those volumes in recovery mode, and the data phase
// (TiKV's recovery protocol, then the log in (resolved ts, T]). Each must
// read what the source reads at T, key for key.
func TestVolumeEndToEnd(t *testing.T) {
	runFor := runLength()
	rng0 := rand.New(rand.NewSource(2))
	bank := &workload.Bank{Prefix: "vol/", Accounts: 300, Initial: 1000}
	srcDir := filepath.Join(t.TempDir(), "source")
	ctx, p, rng := startE2E(t, pipeline.Options{Task: "vol", HoldsData: true,
		Cluster: testkit.Options{Playground: playground.Config{Stores: 3, Dir: srcDir, MinTSInterval: 200 * time.Millisecond}},
		Setup: func(c *testkit.Cluster) {
			bank.Client = c.KV
			require.NoError(t, bank.Init(c.Ctx))
			require.NoError(t, loadBefore(c.Ctx, c.KV, "pre/", 800, rng0))
			for _, k := range []string{"pre/000300", "pre/000600", "vol/account/00000150"} {
				_, err := c.P.Cluster.Split([]byte(k))
				require.NoError(t, err)
			}
		}})
	prov, err := local.New(filepath.Join(filepath.Dir(srcDir), "provider"))
	require.NoError(t, err)
	vf, err := volsnap.ReadVolumeFile(filepath.Join(srcDir, playground.VolumesFileName))
	require.NoError(t, err)
	hc, err := connector.HTTPClient(p.TLS, 30*time.Second)
	require.NoError(t, err)

	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, 6, &st) })
	var backup *volsnap.BackupResult
	var backupErr error
	backed := make(chan struct{})
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: runFor,
		Routine: []testkit.Action{p.Split(16, bankKey(bank)), p.MoveLeader(), nil},
		Faults: []testkit.Fault{
			{At: 0.3, Name: "volume backup while the workload runs", Inject: func(context.Context, *rand.Rand) (bool, error) {
				go func() {
					defer close(backed)
					backup, backupErr = volsnap.Backup(ctx, volsnap.BackupOptions{Storage: p.Backup(), Provider: prov, File: vf,
						PD: p.Clients.PD, PDAddrs: []string{p.P.PDAddr()}, TLS: p.TLS, HTTP: hc, Poll: 100 * time.Millisecond, Logger: p.Log})
				}()
				return true, nil
			}},
		},
		Watch: []*testkit.Workload{work},
	}
	require.NoError(t, chaos.Run(ctx), "every fault was injected")
	<-backed
	require.NoError(t, work.Stop())
	require.NoError(t, backupErr)
	B := backup.ResolvedTS
	t.Logf("volume backup at %d: %d stores, %d snapshots, %d bytes, PD paused %s, in %s", B, backup.Stores, backup.Snapshots, backup.Bytes, backup.Paused, backup.Duration)
	require.Equal(t, 3, backup.Stores)
	require.Equal(t, 6, backup.Snapshots, "a KV and a raft volume per store")

	cp := p.WaitCheckpoint(p.TS(), 90*time.Second)
	require.Greater(t, cp, B)
	points := randomPoints(rng, B, cp, 5)
	points[0] = B // the backup itself, with an empty log window
	for i, T := range points {
		got := restoreFromVolumes(t, p, prov, i, T, hc)
		testkit.RequireSame(t, p.ReadAll(T), got, T)
		t.Logf("T #%d = %d: %d keys equal", i, T, len(got))
	}
}

// restoreFromVolumes restores T into a new cluster started on volumes made
// from the backup's snapshots, and reads it.
func restoreFromVolumes(t *testing.T, p *pipeline.Pipeline, prov volume.Provider, i int, T uint64, hc *http.Client) map[string][]byte {
	t.Helper()
	var read map[string][]byte
	err := testkit.Run(testkit.RunOptions{Dir: t.TempDir()}, func(tb testkit.TB) error {
		ctx := p.Ctx
		dst := testkit.StartCluster(tb, ctx, testkit.Options{WithoutKV: true, Component: "pitr-restore-target",
			Playground: playground.Config{Stores: 3, DeferStores: true, TLSDir: p.TLSDir, GCInterval: time.Second, GCLifeTime: time.Second, Logger: p.Log}})
		pdAddrs := []string{dst.P.PDAddr()}
		infos, err := volsnap.List(ctx, p.Backup())
		if err != nil {
			return err
		}
		chosen, ok := volsnap.Choose(infos, T)
		if !ok {
			return fmt.Errorf("no volume backup at or before %d", T)
		}
		vf, err := volsnap.Prepare(ctx, volsnap.PrepareOptions{Provider: prov, Backup: chosen, PDAddrs: pdAddrs, TLS: p.TLS, HTTP: hc, Logger: p.Log})
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		file := filepath.Join(tb.TempDir(), "restore-volumes.json")
		if err := volsnap.WriteVolumeFile(file, vf); err != nil {
			return err
		}
		// What TiDB Operator does: the stores on the new volumes.
		if err := dst.P.StartStoresFromVolumes(ctx, file); err != nil {
			return fmt.Errorf("start the stores on the volumes: %w", err)
		}
		res, err := volsnap.RestoreData(ctx, volsnap.DataOptions{
			Recover: volsnap.RecoverOptions{PD: dst.Clients.PD, PDAddrs: pdAddrs, TLS: p.TLS, HTTP: hc, Logger: p.Log},
			Etcd:    dst.Clients.Etcd, Backup: chosen,
			Restore: restore.Options{Source: p.Backup(), PDAddrs: pdAddrs, TLS: p.TLS, RestoreTS: T,
				ProgressFile: filepath.Join(tb.TempDir(), fmt.Sprintf("progress-%d", i)), Logger: p.Log},
		})
		if err != nil {
			return fmt.Errorf("restore to T=%d: %w", T, err)
		}
		if res.Recovered == nil || res.Recovered.Regions == 0 {
			return fmt.Errorf("restore to T=%d: no recovery ran", T)
		}
		dst.KV = dst.NewKV()
		read = dst.ReadAll(dst.TS())
		return nil
	})
	require.NoError(t, err)
	return read
}

// TestVolumeBackupKilledWhilePaused kills a volume backup with SIGKILL while
// PD's scheduling limits are 0 and its GC safepoint is held: both lapse
// within their TTL, and nothing is left paused.
func TestVolumeBackupKilledWhilePaused(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "cluster")
	c := testkit.StartCluster(t, ctx, testkit.Options{Playground: playground.Config{Stores: 3, Dir: dir}})
	require.NoError(t, loadBefore(ctx, c.KV, "k/", 200, testkit.Rand(t)))
	url := "file://" + t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=volume-backup", "PITR_CHILD_PD="+c.P.PDAddr(), "PITR_CHILD_STORAGE="+url,
		"PITR_CHILD_TTL=4", "PITR_CHILD_VOLUMES="+filepath.Join(dir, playground.VolumesFileName), "PITR_CHILD_ROOT="+filepath.Join(t.TempDir(), "prov"))
	var stderr strings.Builder
	child.Stderr = &stderr
	require.NoError(t, child.Start())

	limit := func() any { return c.P.PD.ScheduleConfig("region-schedule-limit") }
	require.NotEqual(t, float64(0), limit())
	// The child's provider blocks in Snapshot: it is between pause and
	// resume until killed.
	// gcHeld reports whether a volume backup holds a GC safepoint (ok:
	// PD answered).
	gcHeld := func() (held, ok bool) {
		sps, err := c.P.PD.ServiceSafePoints(ctx)
		if err != nil {
			return false, false
		}
		for id := range sps {
			if strings.HasPrefix(id, "pitr-volume-backup-") {
				return true, true
			}
		}
		return false, true
	}
	require.Eventually(t, func() bool { held, _ := gcHeld(); return held }, time.Minute, 50*time.Millisecond, "the child holds GC: %s", &stderr)
	require.Eventually(t, func() bool { return limit() == float64(0) }, 10*time.Second, 50*time.Millisecond, "the child set PD's scheduling limits to 0")
	require.True(t, c.P.PD.SchedulerPaused("balance-region-scheduler"), "the child paused the balance schedulers")
	require.NoError(t, child.Process.Signal(syscall.SIGKILL))
	var ee *exec.ExitError
	require.ErrorAs(t, child.Wait(), &ee)
	killed := time.Now()
	require.Eventually(t, func() bool { held, ok := gcHeld(); return ok && !held }, 20*time.Second, 200*time.Millisecond, "the killed backup's GC hold lapses")
	require.Eventually(t, func() bool { return limit() != float64(0) }, 20*time.Second, 200*time.Millisecond, "the killed backup's scheduling limits lapse")
	require.Eventually(t, func() bool { return !c.P.PD.SchedulerPaused("balance-region-scheduler") }, 20*time.Second, 200*time.Millisecond,
		"the killed backup's scheduler pause lapses")
	t.Logf("GC hold and scheduling limits lapsed %s after the kill (TTL 4 s)", time.Since(killed).Round(100*time.Millisecond))
}

// blockingProvider is a local provider whose Snapshot never returns: a
// backup using it stays between pause and resume.
type blockingProvider struct{ volume.Provider }

func (blockingProvider) Snapshot(ctx context.Context, _ volume.Store, _ map[string]string) ([]volume.Snapshot, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// runVolumeChild runs a volume backup whose snapshots never start.
func runVolumeChild() int {
	ctx := context.Background()
	ttl, _ := strconv.Atoi(os.Getenv("PITR_CHILD_TTL"))
	cfg := connector.Config{PDAddrs: []string{os.Getenv("PITR_CHILD_PD")}, Timeout: 10 * time.Second}
	pd, err := connector.PD(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	st, err := storage.OpenStack(ctx, os.Getenv("PITR_CHILD_STORAGE"), storage.StackOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	vf, err := volsnap.ReadVolumeFile(os.Getenv("PITR_CHILD_VOLUMES"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prov, err := local.New(os.Getenv("PITR_CHILD_ROOT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err = volsnap.Backup(ctx, volsnap.BackupOptions{Storage: st, Provider: blockingProvider{prov}, File: vf, PD: pd,
		PDAddrs: cfg.PDAddrs, PauseTTL: time.Duration(ttl) * time.Second})
	fmt.Fprintln(os.Stderr, err)
	return 1
}
