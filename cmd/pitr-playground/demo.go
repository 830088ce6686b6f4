package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
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

// demoRun is the demo's report: where it goes and the clock it counts from.
type demoRun struct {
	out   io.Writer
	log   hclog.Logger
	dir   string
	start time.Time
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
	d.say("pitr-playground demo: continuous log backup and point-in-time restore, end to end (working dir %s)", d.dir)
	// The demo runs on the tests' harness; its TB reports on stdout and
	// turns a failure into the demo's error. Everything it started stops
	// before Run returns.
	started := false
	err := testkit.Run(testkit.RunOptions{Log: d.out, Dir: dir}, func(tb testkit.TB) error {
		return d.run(tb, cmd.Context(), o, &started)
	})
	if err != nil && !started {
		// The source cluster did not come up: nothing of pitr ran yet.
		err = cli.WithExit(cli.ExitUnavailable, fmt.Errorf("start source: %w", err))
	}
	if err != nil && o.keep {
		d.say("working directory kept: %s", dir)
	}
	return err
}

func (d *demoRun) run(tb testkit.TB, ctx context.Context, o *demoOptions, started *bool) error {
	// 1. Source cluster that already holds data (as every real one does),
	// task, agents, coordinators.
	bank := &workload.Bank{Prefix: "demo/", Accounts: o.accounts, Initial: 1000}
	var setupErr error
	p := pipeline.Start(tb, ctx, pipeline.Options{Task: "demo", HoldsData: true,
		Setup: func(c *testkit.Cluster) {
			bank.Client = c.KV
			setupErr = bank.Init(ctx)
		},
		Cluster: testkit.Options{Component: "pitr-demo",
			Playground: playground.Config{Stores: 3, Dir: filepath.Join(d.dir, "source"), Logger: d.log}},
		Agent: func(_ uint64, cfg *agent.Config) { cfg.FlushInterval = agent.DefaultFlushInterval },
		Coordinator: func(i int, cfg *coordinator.Config) {
			cfg.ID, cfg.SessionTTL, cfg.TickInterval = fmt.Sprintf("coordinator-%d", i+1), 3*time.Second, coordinator.DefaultTickInterval
			// Transfers cut off by the end of the workload leave locks of
			// dead transactions; the coordinator resolves them (60s in
			// production, shortened so the demo ends soon).
			cfg.ResolveLocksAfter = 5 * time.Second
		},
	})
	*started = true
	if setupErr != nil {
		return fmt.Errorf("load accounts: %w", setupErr)
	}
	d.say("[1/5] source cluster: 3 stores, PD %s, already holding %d bank accounts", p.P.PDAddr(), o.accounts)
	d.say("[2/5] task %q started at ts %d; storage %s; 3 agents, 2 coordinators", p.Task, p.StartTS, p.StorageURL)
	// The data that existed before the task needs a base: a snapshot at the
	// start ts, scanned by the agents (pitr task start --with-snapshot).
	snap := p.Snapshot(p.StartTS, snapshot.Options{})
	d.say("  %s  base snapshot at the start ts: %d ranges (%d scanned by agents), %d files, %d keys, in %.2fs",
		d.elapsed(), snap.Ranges, snap.ByAgents, snap.Files, snap.Kvs, snap.Duration.Seconds())
	rng := testkit.Rand(tb)

	// 2. Workload with chaos; the checkpoint as it moves.
	d.say("[3/5] bank workload: %d clients, %d accounts, for %s; regions split and leaders move meanwhile",
		o.clients, o.accounts, o.duration)
	var st workload.Stats
	work := p.StartWorkload(func(ctx context.Context) error { return bank.Run(ctx, o.clients, &st) })

	var lags []time.Duration
	var restoreTS uint64
	var killedAt time.Time
	killed := -1
	lastPrint := time.Time{}
	// Kill the leading coordinator halfway through.
	killLeader := testkit.Fault{Name: "coordinator kill", At: 0.5, Inject: func(context.Context, *rand.Rand) (bool, error) {
		i, ok := p.KillLeader()
		if ok {
			killed, killedAt = i, time.Now()
			d.say("  %s  killed the leading coordinator %s", d.elapsed(), p.Coordinators[i].ID())
		}
		return ok, nil
	}}
	chaos := &testkit.Chaos{Rand: rng, Step: 500 * time.Millisecond, For: o.duration,
		// A split, then a leader move, every 2.5 s.
		Routine: testkit.Spaced(5, p.Split(24, func(rng *rand.Rand) []byte { return bank.Key(rng.Intn(bank.Accounts)) }), p.MoveLeader()),
		Faults:  []testkit.Fault{killLeader},
		Watch:   []*testkit.Workload{work},
		OnStep: func(_ int, run time.Duration) error {
			cp, err := p.Checkpoint()
			if err != nil {
				return err
			}
			lag := time.Duration(0)
			if cp > p.StartTS {
				lag = time.Since(keyspace.Time(cp))
				lags = append(lags, lag)
			}
			// The restore point: the state at 60% of the run.
			if restoreTS == 0 && run >= o.duration*6/10 {
				restoreTS = p.TS()
				d.say("  %s  restore point T = %s", d.elapsed(), keyspace.Format(restoreTS))
			}
			if killed >= 0 && !killedAt.IsZero() {
				if other := p.Coordinators[1-killed]; other.IsLeader() {
					d.say("  %s  %s took over after %.1fs", d.elapsed(), other.ID(), time.Since(killedAt).Seconds())
					killedAt = time.Time{}
				}
			}
			if time.Since(lastPrint) >= 3*time.Second {
				lastPrint = time.Now()
				cpText := "not yet"
				if cp > p.StartTS {
					cpText = fmt.Sprintf("%s, lag %.1fs", keyspace.Time(cp).Format("15:04:05.000"), lag.Seconds())
				}
				d.say("  %s  %6d transfers, %4d retried conflicts, %3d regions; checkpoint %s",
					d.elapsed(), st.Committed.Load(), st.Conflicts.Load(), len(p.P.Cluster.Regions()), cpText)
			}
			return nil
		},
	}
	if err := chaos.Run(ctx); err != nil {
		return err
	}
	if err := work.Stop(); err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	if restoreTS == 0 {
		return errors.New("no restore point was taken")
	}
	// Nothing here reads the accounts to resolve the locks the cut-off
	// transfers left: the coordinator does, as it would in production.
	cp := p.WaitCheckpoint(restoreTS, 60*time.Second)
	d.say("  %s  workload stopped: %d transfers committed; checkpoint %d ≥ T", d.elapsed(), st.Committed.Load(), cp)

	// 3. Verify the backup offline, then restore T into a fresh cluster.
	vr := p.Verify(restoreTS)
	d.say("[4/5] verify: %d metas, %d files (%.1f MB) intact; coverage has no hole up to T", vr.Metas, vr.Files, float64(vr.Bytes)/1e6)
	var total int64
	var accounts int
	r := p.RestoreInto(0, restoreTS, pipeline.RestoreOptions{
		Target: &playground.Config{Stores: 3, Dir: filepath.Join(d.dir, "target"), Logger: d.log},
		Inspect: func(dst *testkit.Cluster) {
			var err error
			if total, accounts, err = (&workload.Bank{Client: dst.KV, Prefix: bank.Prefix}).Sum(ctx, restoreTS); err != nil {
				dst.TB.Fatalf("read the restored accounts: %v", err)
			}
		},
	})
	res := r.Result
	d.say("  %s  restored %d versions (%.1f MB) from %d files into %d regions in %.2fs: the base snapshot at %d, then the log up to T; the target's checksum matches the backup's (key ranges checked: %d)",
		d.elapsed(), res.Rows, float64(res.Bytes)/1e6, res.Files, res.Regions, res.Duration.Seconds(), res.BaseTS, res.ChecksumRanges)

	// 4. Check: key for key at T, and the bank total.
	if err := testkit.Diff(p.ReadAll(restoreTS), r.Read, restoreTS); err != nil {
		return fmt.Errorf("restored cluster differs from the source: %w", err)
	}
	if total != bank.Total() || accounts != o.accounts {
		return fmt.Errorf("restored bank at T has %d accounts totalling %d; want %d totalling %d", accounts, total, o.accounts, bank.Total())
	}
	d.say("[5/5] check: %d keys equal at T on source and target; bank total %d over %d accounts, as at start", len(r.Read), total, accounts)

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
