package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// restoreOptions are the flags of `pitr restore`.
type restoreOptions struct {
	storage      string
	to           string
	pd           string
	snapshot     string
	dryRun       bool
	force        bool
	noChecksum   bool
	progressFile string
	concurrency  int
	memory       string
	noProgress   bool
	metricsAddr  string
	logLevel     string
	tls          tlsFlags
	tz           tzFlag
}

func newRestoreCmd() *cobra.Command {
	o := &restoreOptions{}
	c := &cobra.Command{
		Use:   "restore --storage URL --to TS|RFC3339 --pd ADDRS [--snapshot URL] [--dry-run]",
		Short: "Restore a cluster to a point in time",
		Long: `Restore the task ranges of a log backup, as they were at --to, into the
cluster behind --pd: every version committed at or before --to, with its
own commit timestamp, through import_sstpb (the bulk-load path).

--to is a TSO, an RFC3339 time, now or now-DURATION (now-5m), or a
wall-clock time like "2026-12-01 21:00:00" read in --tz (default the
local zone); the TSO chosen is printed on stderr in UTC and in that zone.
It must be inside the restorable range [task start
ts, global checkpoint] (else exit 10, naming the range). Before anything is
written, every data file needed is checked against its size and sha256
(exit 11 corrupt, 12 missing), the log's coverage is checked for holes
(exit 12), and the target must hold nothing in the task ranges (exit 14;
--force writes anyway). A root that is not a pitr backup is exit 13.

Before the first write, GC is turned off on every TiKV of the target
(gc.ratio-threshold = -1 through each store's status address; a store that
cannot be reached is exit 3), re-applied while the restore runs, and set
back when it ends, also on failure.

A progress file (--progress-file; default under the user cache directory,
named after the storage URL, --to and the target cluster id) records the
finished key ranges and the GC values to set back: rerunning the same
command after a failure or a kill finishes the job without redoing them.
An error after the first write says so, with how far the restore got; an
error before it says that nothing was written.

The base is the newest finished snapshot under the task root
(snapshot/<ts>/, written by pitr backup full) with task start ts <= its
backup ts B <= --to, or the one --snapshot names; the log then replays
(B, --to]. A task that started on empty ranges needs none; any other task
without one is exit 16, and a --to before its first snapshot exit 10.

After the writes, every key range is checksummed on the target (TiKV's
coprocessor checksum) and compared with what the backup holds; a mismatch
is exit 11. --no-checksum skips it, for a target that legitimately holds
other keys in the task ranges.

--dry-run prints the plan (base, log window, files, bytes, rows, ranges)
and touches no cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRestore(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	c.AddCommand(newRestoreVolumeCmd())
	f := c.Flags()
	f.StringVar(&o.storage, "storage", "", "log backup storage URL")
	f.StringVar(&o.to, "to", "", `restore point: TSO, RFC3339, now-5m, or "2026-12-01 21:00:00" in --tz`)
	f.StringVar(&o.pd, "pd", "", "PD addresses of the target cluster, comma separated")
	f.StringVar(&o.snapshot, "snapshot", "", "base snapshot root URL (default: the newest fitting snapshot under the task root)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan and write nothing")
	f.BoolVar(&o.force, "force", false, "write even if the target holds data in the task ranges")
	f.BoolVar(&o.noChecksum, "no-checksum", false, "skip the post-restore checksum of the target (for a target that holds other keys in the task ranges)")
	f.StringVar(&o.progressFile, "progress-file", "", "where finished ranges are recorded (default: under the user cache dir)")
	f.IntVar(&o.concurrency, "concurrency", restore.DefaultConcurrency, "key ranges restored at once")
	f.StringVar(&o.memory, "memory", "1GiB", "memory budget for reading and writing")
	f.BoolVar(&o.noProgress, "no-progress", false, "do not draw the progress bar on stderr")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve the restore's progress as Prometheus metrics (pitr_restore_*) on this address while it runs, e.g. 127.0.0.1:9598")
	f.StringVar(&o.logLevel, "log-level", "warn", "log level: trace, debug, info, warn, error")
	o.tls.register(f)
	o.tz.register(f)
	return c
}

func runRestore(ctx context.Context, stdout, stderr io.Writer, o *restoreOptions) error {
	if o.pd == "" && !o.dryRun {
		return cli.Usagef("pitr restore: --pd is required (or --dry-run)")
	}
	rs, err := setupRestore(ctx, stderr, "pitr restore", o)
	if err != nil {
		return err
	}
	defer rs.close()
	var snap restore.Source
	if o.snapshot != "" {
		st, err := openBackupStorage(ctx, o.snapshot)
		if err != nil {
			return err
		}
		defer st.Close()
		snap = st
	}

	if o.dryRun {
		plan, err := restore.PlanRestore(ctx, rs.opts.Source, rs.opts.RestoreTS, snap)
		if err != nil {
			return restoreError("pitr restore", err)
		}
		return plan.Print(stdout)
	}
	rs.opts.Snapshot = snap
	res, err := restore.Run(ctx, rs.opts)
	if err != nil {
		return restoreError("pitr restore", err)
	}
	_, err = fmt.Fprintln(stdout, res.Summary())
	return err
}

// restoreSetup is a restore's options from its flags, and what to close
// after it.
type restoreSetup struct {
	opts    restore.Options
	closers []func()
}

func (r *restoreSetup) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
}

// setupRestore checks the flags a log restore shares with a volume
// restore's data phase and opens the source and the metrics server.
func setupRestore(ctx context.Context, stderr io.Writer, path string, o *restoreOptions) (_ *restoreSetup, err error) {
	switch {
	case o.storage == "":
		return nil, cli.Usagef("%s: --storage is required", path)
	case o.to == "":
		return nil, cli.Usagef("%s: --to is required", path)
	case o.concurrency < 1:
		return nil, cli.Usagef("%s: --concurrency must be at least 1", path)
	}
	ts, err := parseTS(stderr, path, "to", o.to, &o.tz)
	if err != nil {
		return nil, cli.Usagef("%s: %v", path, err)
	}
	mem, err := cli.ParseSize(o.memory)
	if err != nil || mem < 64<<20 {
		return nil, cli.Usagef("%s: --memory %q: want a size of at least 64MiB, like 1GiB", path, o.memory)
	}
	if err := restore.CheckBudget(o.concurrency, mem); err != nil {
		return nil, cli.Usagef("%s: --memory %s is %v", path, o.memory, err)
	}
	level := hclog.LevelFromString(o.logLevel)
	if level == hclog.NoLevel {
		return nil, cli.Usagef("%s: --log-level %q: want trace, debug, info, warn or error", path, o.logLevel)
	}
	// The clients' logs would tear the progress bar: errors only, unless
	// debugging.
	clientLevel := hclog.Error
	if level <= hclog.Debug {
		clientLevel = level
	}
	cli.RouteClientLogs(stderr, clientLevel)
	tlsCfg := o.tls.get(nil, func(string) bool { return true })
	if err := tlsCfg.Validate(); err != nil {
		return nil, cli.Usagef("%s: %v", path, err)
	}
	rs := &restoreSetup{}
	defer func() {
		if err != nil {
			rs.close()
		}
	}()
	src, err := openBackupStorage(ctx, o.storage)
	if err != nil {
		return nil, err
	}
	rs.closers = append(rs.closers, func() { _ = src.Close() })
	rs.opts = restore.Options{
		Source:       src,
		PDAddrs:      restoreAddrs(o.pd),
		TLS:          tlsCfg,
		RestoreTS:    ts,
		SkipChecksum: o.noChecksum,
		Force:        o.force,
		ProgressFile: o.progressFile,
		Concurrency:  o.concurrency,
		MemoryBudget: mem,
		Logger:       hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: level, Output: stderr}),
	}
	if !o.noProgress {
		rs.opts.Progress = stderr
	}
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return nil, cli.Usagef("%s: --metrics-addr: %v", path, err)
		}
		reg := prometheus.NewRegistry()
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		rs.closers = append(rs.closers, func() { _ = srv.Close() })
		rs.opts.Metrics = reg
	}
	return rs, nil
}

// openBackupStorage opens a backup root for reading, with retries of
// transient failures.
func openBackupStorage(ctx context.Context, url string) (storage.Storage, error) {
	st, err := storage.OpenStack(ctx, url, storage.StackOptions{})
	if err != nil {
		return nil, cli.WithExit(cli.ExitUnavailable, err)
	}
	return st, nil
}

// restoreError gives a restore or verify error its exit status. A restore
// error says whether the target was written to (restore.WrittenError:
// how far it got and how to resume) or not.
func restoreError(cmd string, err error) error {
	code := cli.ExitFailure
	switch {
	case errors.Is(err, restore.ErrOutOfRange):
		code = cli.ExitOutOfRange
	case errors.Is(err, restore.ErrCorrupt), errors.Is(err, restore.ErrChecksum):
		code = cli.ExitCorrupt
	case errors.Is(err, restore.ErrMissing):
		code = cli.ExitMissing
	case errors.Is(err, restore.ErrNotBackup):
		code = cli.ExitNotBackup
	case errors.Is(err, restore.ErrTargetNotEmpty):
		code = cli.ExitTargetNotEmpty
	case errors.Is(err, restore.ErrFormat):
		code = cli.ExitFormat
	case errors.Is(err, restore.ErrNoBase):
		code = cli.ExitNoBase
	case errors.Is(err, snapshot.ErrConflict):
		code = cli.ExitConflict
	case errors.Is(err, restore.ErrUnavailable), storage.IsTransient(err):
		code = cli.ExitUnavailable
	}
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if cmd == "pitr restore" {
		var we *restore.WrittenError
		switch {
		case errors.As(err, &we) && errors.Is(err, restore.ErrChecksum):
			msg += fmt.Sprintf("; every key range was written (%d of %d), but the target does not hold what the backup does: a target that held other keys in the task ranges (--force) gives this, rerun with --no-checksum to accept them (progress file %s)",
				we.UnitsDone, we.Units, we.ProgressFile)
		case errors.As(err, &we) && we.Finished:
			msg += fmt.Sprintf("; the restore itself finished (all %d key ranges are in the target)", we.Units)
		case errors.As(err, &we):
			msg += fmt.Sprintf("; the target already holds part of this restore (%d of %d key ranges done): rerun the same command to resume it (progress file %s); do not restore another point into this target",
				we.UnitsDone, we.Units, we.ProgressFile)
		default:
			msg += "; nothing was written to the target"
		}
	}
	return cli.WithExit(code, fmt.Errorf("%s: %s", cmd, msg))
}

func restoreAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
