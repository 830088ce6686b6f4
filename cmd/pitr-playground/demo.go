package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

type demoOptions struct {
	duration time.Duration
	accounts int
	clients  int
	dir      string
	keep     bool
	logLevel string
}

func newDemoCmd() *cobra.Command {
	o := &demoOptions{}
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run playground, agents, coordinator, a workload, a restore and a check, end to end",
		Long: `Run the whole job on an embedded playground cluster:

  1. start a 3-store source cluster, a backup task, an agent per store and
     two coordinators;
  2. run a bank-transfer workload while regions split, leaders move and the
     leading coordinator is killed, printing the checkpoint as it advances;
  3. pick a restore point T in the past and restore it into a fresh cluster;
  4. check that a snapshot read at T is the same on both sides, key for key,
     and that the bank total is intact;
  5. print the RPO (checkpoint lag) and the restore throughput.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd, o) },
	}
	f := c.Flags()
	f.DurationVar(&o.duration, "duration", 40*time.Second, "how long the workload runs")
	f.IntVar(&o.accounts, "accounts", 1000, "bank accounts")
	f.IntVar(&o.clients, "clients", 8, "concurrent workload clients")
	f.StringVar(&o.dir, "dir", "", "working directory (default: a temporary one, removed afterwards)")
	f.BoolVar(&o.keep, "keep", false, "keep the working directory (clusters' data and the backup)")
	f.StringVar(&o.logLevel, "log-level", "error", "log level of the components: trace, debug, info, warn, error")
	return c
}

// demoRun holds what the demo started, so that it can stop all of it.
type demoRun struct {
	out     io.Writer
	log     hclog.Logger
	dir     string
	src     *playground.Playground
	dst     *playground.Playground
	kv      *txnkv.Client
	dstKV   *txnkv.Client
	cl      *coordinator.Clients
	cancels []func()
	wg      sync.WaitGroup
	start   time.Time
}

func (d *demoRun) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

func (d *demoRun) elapsed() string {
	return fmt.Sprintf("%5.1fs", time.Since(d.start).Seconds())
}

func runDemo(cmd *cobra.Command, o *demoOptions) error {
	if o.duration < 10*time.Second {
		return cli.Usagef("pitr-playground demo: --duration must be at least 10s")
	}
	if o.accounts < 10 || o.clients < 1 {
		return cli.Usagef("pitr-playground demo: need at least 10 --accounts and 1 --clients")
	}
	level := hclog.LevelFromString(o.logLevel)
	if level == hclog.NoLevel {
		return cli.Usagef("pitr-playground demo: --log-level %q is not one of trace, debug, info, warn, error", o.logLevel)
	}
	// client-go and the PD client log through pingcap/log: to stderr at the
	// demo's level, never on stdout (the demo's report).
	cli.RouteClientLogs(cmd.ErrOrStderr(), level)
	d := &demoRun{
		out:   cmd.OutOrStdout(),
		log:   hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: level, Output: cmd.ErrOrStderr()}),
		start: time.Now(),
	}
	dir := o.dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "pitr-demo-")
		if err != nil {
			return err
		}
		dir = tmp
		if !o.keep {
			defer os.RemoveAll(tmp)
		}
	}
	d.dir = dir
	defer d.stop()
	err := d.run(cmd.Context(), o)
	if err != nil && o.keep {
		d.say("working directory kept: %s", dir)
	}
	return err
}

func (d *demoRun) stop() {
	for i := len(d.cancels) - 1; i >= 0; i-- {
		d.cancels[i]()
	}
	d.wg.Wait()
	if d.kv != nil {
		d.kv.Close()
	}
	if d.dstKV != nil {
		d.dstKV.Close()
	}
	if d.cl != nil {
		d.cl.Close()
	}
	if d.src != nil {
		_ = d.src.Close()
	}
	if d.dst != nil {
		_ = d.dst.Close()
	}
}

// goRun runs fn in a goroutine owned by the demo, with its own cancel.
func (d *demoRun) goRun(ctx context.Context, name string, fn func(context.Context) error) context.CancelFunc {
	ctx, cancel := context.WithCancel(ctx)
	d.cancels = append(d.cancels, cancel)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("component stopped", "component", name, "error", err)
		}
	}()
	return cancel
}

func (d *demoRun) run(ctx context.Context, o *demoOptions) error {
	d.say("pitr-playground demo: continuous log backup and point-in-time restore, end to end (working dir %s)", d.dir)

	// 1. Source cluster, task, agents, coordinators.
	var err error
	d.src, err = playground.Start(ctx, playground.Config{Stores: 3, Dir: filepath.Join(d.dir, "source"), Logger: d.log})
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("start source playground: %w", err))
	}
	pdAddr := d.src.PDAddr()
	d.say("[1/5] source cluster: 3 stores, PD %s", pdAddr)
	if d.kv, err = workload.Connect(ctx, []string{pdAddr}); err != nil {
		return fmt.Errorf("connect client-go: %w", err)
	}
	if d.cl, err = coordinator.Connect(ctx, connector.Config{PDAddrs: []string{pdAddr}, Timeout: 10 * time.Second, Component: "pitr-demo"}); err != nil {
		return fmt.Errorf("connect PD: %w", err)
	}
	storageURL := "file://" + filepath.Join(d.dir, "backup")
	rec, err := coordinator.StartTask(ctx, d.cl.Etcd, d.cl.PD, coordinator.StartOptions{
		Name: "demo", StorageURL: storageURL, EmptyAt: coordinator.EmptyAtTiKV(d.kv),
	})
	if err != nil {
		return fmt.Errorf("start task: %w", err)
	}
	startTS := rec.GetInfo().GetStartTs()
	addrs := d.src.StoreAddrs()
	for _, id := range d.src.StoreIDs() {
		a, err := agent.New(agent.Config{
			PDAddrs: []string{pdAddr}, TiKVAddr: addrs[id], DataDir: filepath.Join(d.dir, fmt.Sprintf("agent-%d", id)),
			ListenAddr: "127.0.0.1:0", HTTPAddr: "-", Logger: d.log,
		})
		if err != nil {
			return fmt.Errorf("start agent for store %d: %w", id, err)
		}
		d.goRun(ctx, "agent", a.Run)
		d.cancels = append(d.cancels, func() { _ = a.Close() })
	}
	coords := make([]*coordinator.Coordinator, 2)
	coordStop := make([]context.CancelFunc, 2)
	for i := range coords {
		c, err := coordinator.New(coordinator.Config{
			PDAddrs: []string{pdAddr}, ID: fmt.Sprintf("coordinator-%d", i+1), HTTPAddr: "-",
			SessionTTL: 3 * time.Second, Logger: d.log, Locks: coordinator.NewLockResolver(d.kv.KVStore),
			// Transfers cut off by the end of the workload leave locks of
			// dead transactions; the coordinator resolves them (60s in
			// production, shortened so the demo ends soon).
			ResolveLocksAfter: 5 * time.Second,
		})
		if err != nil {
			return fmt.Errorf("start coordinator: %w", err)
		}
		coords[i] = c
		coordStop[i] = d.goRun(ctx, "coordinator", c.Run)
		d.cancels = append(d.cancels, func() { _ = c.Close() })
	}
	d.say("[2/5] task %q started at ts %d; storage %s; 3 agents, 2 coordinators", "demo", startTS, storageURL)

	// 2. Workload with chaos; the checkpoint as it moves.
	bank := &workload.Bank{Client: d.kv, Prefix: "demo/", Accounts: o.accounts, Initial: 1000}
	if err := bank.Init(ctx); err != nil {
		return fmt.Errorf("load accounts: %w", err)
	}
	d.say("[3/5] bank workload: %d clients, %d accounts, for %s; regions split and leaders move meanwhile",
		o.clients, o.accounts, o.duration)
	var st workload.Stats
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	workErr := make(chan error, 1)
	go func() { workErr <- bank.Run(wctx, o.clients, &st) }()
	chaos := d.goRun(ctx, "chaos", func(ctx context.Context) error { return d.chaos(ctx, bank) })

	var lags []time.Duration
	var restoreTS uint64
	var killedAt time.Time
	killed := -1
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	began := time.Now()
	lastPrint := time.Time{}
	for time.Since(began) < o.duration {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-workErr:
			return fmt.Errorf("workload: %w", err)
		case <-tick.C:
		}
		cp, err := task.Checkpoint(ctx, d.cl.Etcd, "demo")
		if err != nil {
			return err
		}
		lag := time.Duration(0)
		if cp > startTS {
			lag = time.Since(keyspace.Time(cp))
			lags = append(lags, lag)
		}
		run := time.Since(began)
		// The restore point: the state at 60% of the run.
		if restoreTS == 0 && run >= o.duration*6/10 {
			if restoreTS, err = coordinator.GetTS(ctx, d.cl.PD); err != nil {
				return err
			}
			d.say("  %s  restore point T = %s", d.elapsed(), keyspace.Format(restoreTS))
		}
		// Kill the leading coordinator halfway through.
		if killed < 0 && run >= o.duration/2 {
			for i, c := range coords {
				if c.IsLeader() {
					coordStop[i]()
					_ = c.Close()
					killed, killedAt = i, time.Now()
					d.say("  %s  killed the leading coordinator %s", d.elapsed(), c.ID())
					break
				}
			}
		}
		if killed >= 0 && !killedAt.IsZero() {
			other := coords[1-killed]
			if other.IsLeader() {
				d.say("  %s  %s took over after %.1fs", d.elapsed(), other.ID(), time.Since(killedAt).Seconds())
				killedAt = time.Time{}
			}
		}
		if time.Since(lastPrint) >= 3*time.Second {
			lastPrint = time.Now()
			cpText := "not yet"
			if cp > startTS {
				cpText = fmt.Sprintf("%s, lag %.1fs", keyspace.Time(cp).Format("15:04:05.000"), lag.Seconds())
			}
			d.say("  %s  %6d transfers, %4d retried conflicts, %3d regions; checkpoint %s",
				d.elapsed(), st.Committed.Load(), st.Conflicts.Load(), len(d.src.Cluster.Regions()), cpText)
		}
	}
	chaos()
	stopWork()
	if err := <-workErr; err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	if restoreTS == 0 {
		return errors.New("no restore point was taken")
	}
	// Nothing here reads the accounts to resolve the locks the cut-off
	// transfers left: the coordinator does, as it would in production.
	cp, err := d.waitCheckpoint(ctx, restoreTS, 60*time.Second)
	if err != nil {
		return err
	}
	d.say("  %s  workload stopped: %d transfers committed; checkpoint %d ≥ T", d.elapsed(), st.Committed.Load(), cp)

	// 3. Verify the backup offline, then restore T into a fresh cluster.
	src, err := storage.Open(ctx, storageURL)
	if err != nil {
		return err
	}
	defer src.Close()
	vr, err := restore.Verify(ctx, src, restore.VerifyOptions{RestoreTS: restoreTS})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	d.say("[4/5] verify: %d metas, %d files (%.1f MB) intact; coverage has no hole up to T", vr.Metas, vr.Files, float64(vr.Bytes)/1e6)
	d.dst, err = playground.Start(ctx, playground.Config{Stores: 3, Dir: filepath.Join(d.dir, "target"), Logger: d.log})
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("start target playground: %w", err))
	}
	res, err := restore.Run(ctx, restore.Options{
		Source: src, PDAddrs: []string{d.dst.PDAddr()}, RestoreTS: restoreTS,
		ProgressFile: filepath.Join(d.dir, "restore.progress"), Logger: d.log,
	})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	d.say("  %s  restored %d versions (%.1f MB) from %d files into %d regions in %.2fs",
		d.elapsed(), res.Rows, float64(res.Bytes)/1e6, res.Files, res.Regions, res.Duration.Seconds())

	// 4. Check: key for key at T, and the bank total.
	if d.dstKV, err = workload.Connect(ctx, []string{d.dst.PDAddr()}); err != nil {
		return fmt.Errorf("connect client-go to the target: %w", err)
	}
	n, err := compareAt(ctx, d.kv, d.dstKV, restoreTS)
	if err != nil {
		return err
	}
	total, accounts, err := (&workload.Bank{Client: d.dstKV, Prefix: bank.Prefix}).Sum(ctx, restoreTS)
	if err != nil {
		return fmt.Errorf("read the restored accounts: %w", err)
	}
	if total != bank.Total() || accounts != o.accounts {
		return fmt.Errorf("restored bank at T has %d accounts totalling %d; want %d totalling %d", accounts, total, o.accounts, bank.Total())
	}
	d.say("[5/5] check: %d keys equal at T on source and target; bank total %d over %d accounts, as at start", n, total, accounts)

	// 5. Figures.
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	pct := func(p float64) float64 {
		if len(lags) == 0 {
			return 0
		}
		return lags[int(p*float64(len(lags)-1))].Seconds()
	}
	d.say("RPO (checkpoint lag over the run): p50 %.1fs, p99 %.1fs, max %.1fs  (agent flush interval %s)",
		pct(0.5), pct(0.99), pct(1), agent.DefaultFlushInterval)
	d.say("restore: %.1f MB/s of keys and values (%d versions, %d regions)", res.MBps(), res.Rows, res.Regions)
	d.say("demo finished in %s", time.Since(d.start).Round(100*time.Millisecond))
	return nil
}

// waitCheckpoint waits until the global checkpoint reaches ts.
func (d *demoRun) waitCheckpoint(ctx context.Context, ts uint64, limit time.Duration) (uint64, error) {
	deadline := time.Now().Add(limit)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		cp, err := task.Checkpoint(ctx, d.cl.Etcd, "demo")
		if err != nil {
			return 0, err
		}
		if cp >= ts {
			return cp, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the checkpoint (%d) did not reach the restore point %d within %s", cp, ts, limit)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// chaos splits regions at account keys and moves leaders until ctx ends.
func (d *demoRun) chaos(ctx context.Context, bank *workload.Bank) error {
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	t := time.NewTicker(2500 * time.Millisecond)
	defer t.Stop()
	stores := d.src.StoreIDs()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if i%2 == 0 && len(d.src.Cluster.Regions()) < 24 {
			_, _ = d.src.Cluster.Split(bank.Key(rng.Intn(bank.Accounts)))
			continue
		}
		regions := d.src.Cluster.Regions()
		r := regions[rng.Intn(len(regions))]
		_ = d.src.Cluster.TransferLeader(r.ID, stores[rng.Intn(len(stores))])
	}
}

// compareAt reads the whole key space at ts on both clusters and checks they
// are equal, key for key. It returns the number of keys.
func compareAt(ctx context.Context, a, b *txnkv.Client, ts uint64) (int, error) {
	ia, err := a.GetSnapshot(ts).Iter([]byte{0}, nil)
	if err != nil {
		return 0, err
	}
	defer ia.Close()
	ib, err := b.GetSnapshot(ts).Iter([]byte{0}, nil)
	if err != nil {
		return 0, err
	}
	defer ib.Close()
	n := 0
	for ia.Valid() || ib.Valid() {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		switch {
		case !ib.Valid():
			return n, fmt.Errorf("restored cluster lacks key %q at T", ia.Key())
		case !ia.Valid():
			return n, fmt.Errorf("restored cluster has extra key %q at T", ib.Key())
		case !bytes.Equal(ia.Key(), ib.Key()):
			return n, fmt.Errorf("restored cluster differs at T: source key %q, target key %q", ia.Key(), ib.Key())
		case !bytes.Equal(ia.Value(), ib.Value()):
			return n, fmt.Errorf("restored cluster differs at T: key %q is %q on the source, %q on the target", ia.Key(), ia.Value(), ib.Value())
		}
		n++
		if err := ia.Next(); err != nil {
			return n, err
		}
		if err := ib.Next(); err != nil {
			return n, err
		}
	}
	return n, nil
}
