package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/task"
)

// taskOptions are the flags every `pitr task` subcommand shares.
type taskOptions struct {
	pd      string
	timeout time.Duration
	gcTTL   time.Duration
	tls     tlsFlags
}

// taskStartOptions are the flags of `pitr task start`.
type taskStartOptions struct {
	storage      string
	startTS      string
	ranges       []string
	withSnapshot bool
	tz           tzFlag
}

func newTaskCmd() *cobra.Command {
	o := &taskOptions{}
	so := &taskStartOptions{}
	var asJSON bool
	taskCmd := &cobra.Command{
		Use:   "task",
		Short: "Start, inspect, pause, resume and stop log backup tasks",
	}
	start := &cobra.Command{
		Use:   "start NAME --storage URL [--start-ts TS] [--range START:END]",
		Short: "Start a log backup task writing to storage",
		Long: `Start a log backup task. It claims the storage root (pitr.lock: a root
owned by another task or cluster is refused, exit 4), writes task.pb,
holds PD's GC safepoint "pitr-NAME" at the start ts, then records the task
in etcd, where agents and coordinators pick it up.

--start-ts is a TSO or an RFC3339 time (default: now); it must be above
PD's GC safepoint. --range START:END limits the backup to raw keys
[START, END) (repeatable; empty START or END is unbounded; a 0x prefix
gives a key in hex, e.g. --range 0x7480:0x7481). Default: every key.

A task on ranges that already hold data needs a base snapshot before any
point can be restored: --with-snapshot takes it at the start ts right
away (as pitr backup full --ts START would; its progress is on stderr).
If the snapshot fails, the task keeps running and the error says how to
take it again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTaskStart(cmd, o, so, args[0])
		},
	}
	start.Flags().StringVar(&so.storage, "storage", "", "storage URL (s3://, gs://, azblob://, file://)")
	start.Flags().StringVar(&so.startTS, "start-ts", "", `start timestamp: TSO, RFC3339, now-5m, or "2026-12-01 21:00:00" in --tz; default now`)
	so.tz.register(start.Flags())
	start.Flags().StringSliceVar(&so.ranges, "range", nil, "key range START:END to back up (repeatable); default all")
	start.Flags().BoolVar(&so.withSnapshot, "with-snapshot", false, "also take the base snapshot at the start ts (pitr backup full), so that any point after it can be restored")
	status := &cobra.Command{
		Use:   "status [NAME] [--json]",
		Short: "Show task state, checkpoint, lag and the slowest regions",
		Long: `Show tasks: state, start ts, checkpoint (ts and wall time), lag, and, from
the elected coordinator's last tick, the uncovered ranges, the slowest
regions with the reason each is slow, each agent's state and the last
error. Without NAME, a table of every task; with NAME, the detail.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return runTaskStatus(cmd, o, name, asJSON)
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	pause := &cobra.Command{
		Use: "pause NAME", Short: "Pause a task (the GC safepoint stays held)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runTaskChange(cmd, o, "pause", args[0]) },
	}
	resume := &cobra.Command{
		Use: "resume NAME", Short: "Resume a paused task", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runTaskChange(cmd, o, "resume", args[0]) },
	}
	stop := &cobra.Command{
		Use: "stop NAME", Short: "Stop a task (releases the GC safepoint, keeps the backup)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runTaskChange(cmd, o, "stop", args[0]) },
	}
	for _, c := range []*cobra.Command{start, status, pause, resume, stop} {
		c.Flags().StringVar(&o.pd, "pd", "", "PD addresses, comma separated")
		c.Flags().DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on reaching PD and etcd")
		o.tls.register(c.Flags())
	}
	for _, c := range []*cobra.Command{start, pause, resume} {
		c.Flags().DurationVar(&o.gcTTL, "gc-ttl", coordinator.DefaultSafePointTTL, "TTL of the GC safepoint set here (the coordinator refreshes it)")
		_ = c.Flags().MarkHidden("gc-ttl")
	}
	taskCmd.AddCommand(start, status, pause, resume, stop)
	return taskCmd
}

// taskErr maps the task operations' errors to exit statuses, on one line
// naming the command.
func taskErr(cmd *cobra.Command, err error) error {
	if err == nil {
		return nil
	}
	code := cli.ExitFailure
	switch {
	case errors.Is(err, coordinator.ErrUnavailable):
		code = cli.ExitUnavailable
	case errors.Is(err, task.ErrInvalidRequest), errors.Is(err, task.ErrInvalidName):
		code = cli.ExitUsage
	case errors.Is(err, task.ErrTaskExists), errors.Is(err, task.ErrStorageOwned),
		errors.Is(err, task.ErrStartTS), errors.Is(err, task.ErrTaskState):
		code = cli.ExitConflict
	}
	return cli.WithExit(code, &lineError{msg: cmd.CommandPath() + ": " + oneLine(err), err: err})
}

// lineError is an error shown on one line that still unwraps to its cause.
type lineError struct {
	msg string
	err error
}

func (e *lineError) Error() string { return e.msg }
func (e *lineError) Unwrap() error { return e.err }

func (o *taskOptions) check(cmd *cobra.Command) ([]string, error) {
	addrs := splitAddrs(o.pd)
	if len(addrs) == 0 {
		return nil, cli.Usagef("%s: --pd is required (see '%s --help')", cmd.CommandPath(), cmd.CommandPath())
	}
	if o.timeout <= 0 {
		return nil, cli.Usagef("%s: --timeout must be positive", cmd.CommandPath())
	}
	if err := o.tls.get(nil, func(string) bool { return true }).Validate(); err != nil {
		return nil, cli.Usagef("%s: %v", cmd.CommandPath(), err)
	}
	return addrs, nil
}

// connCfg is how the task commands reach the cluster.
func (o *taskOptions) connCfg(addrs []string) connector.Config {
	return connector.Config{PDAddrs: addrs, TLS: o.tls.get(nil, func(string) bool { return true }), Timeout: o.timeout, Component: "pitr-cli"}
}

// connect reaches PD and its etcd within the timeout (PD only when
// withPD).
func (o *taskOptions) connect(ctx context.Context, cmd *cobra.Command, addrs []string, withPD bool) (*coordinator.Clients, error) {
	cli.RouteClientLogs(cmd.ErrOrStderr(), hclog.Off)
	cc := o.connCfg(addrs)
	if withPD {
		cl, err := coordinator.Connect(ctx, cc)
		if err != nil {
			return nil, taskErr(cmd, err)
		}
		return cl, nil
	}
	e, err := coordinator.ConnectEtcd(ctx, cc)
	if err != nil {
		return nil, taskErr(cmd, err)
	}
	return &coordinator.Clients{Etcd: e}, nil
}

// parseRanges reads every --range flag.
func parseRanges(flags []string) ([]keyspace.Range, error) {
	var out []keyspace.Range
	for _, r := range flags {
		kr, err := parseRange(r)
		if err != nil {
			return nil, fmt.Errorf("--range: %w", err)
		}
		out = append(out, kr)
	}
	return out, nil
}

// parseRange reads START:END (0x-prefixed sides are hex).
func parseRange(s string) (keyspace.Range, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return keyspace.Range{}, fmt.Errorf("range %q: want START:END", s)
	}
	key := func(k string) ([]byte, error) {
		if h, ok := strings.CutPrefix(k, "0x"); ok {
			b, err := hex.DecodeString(h)
			if err != nil {
				return nil, fmt.Errorf("range %q: bad hex key %q", s, k)
			}
			return b, nil
		}
		return []byte(k), nil
	}
	start, err := key(a)
	if err != nil {
		return keyspace.Range{}, err
	}
	end, err := key(b)
	if err != nil {
		return keyspace.Range{}, err
	}
	r := keyspace.Range{Start: start, End: end}
	if r.Empty() {
		return keyspace.Range{}, fmt.Errorf("range %q is empty (START must sort before END)", s)
	}
	return r, nil
}

func runTaskStart(cmd *cobra.Command, o *taskOptions, so *taskStartOptions, name string) error {
	addrs, err := o.check(cmd)
	if err != nil {
		return err
	}
	path := cmd.CommandPath()
	if err := task.ValidateName(name); err != nil {
		return cli.Usagef("%s: %v", path, err)
	}
	if so.storage == "" {
		return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
	}
	opts := task.StartOptions{Name: name, StorageURL: so.storage, SafePointTTL: o.gcTTL}
	if so.startTS != "" {
		if opts.StartTS, err = parseTS(cmd.ErrOrStderr(), path, "start-ts", so.startTS, &so.tz); err != nil {
			return cli.Usagef("%s: %v", path, err)
		}
	}
	if opts.Ranges, err = parseRanges(so.ranges); err != nil {
		return cli.Usagef("%s: %v", path, err)
	}
	if o.gcTTL < time.Second {
		return cli.Usagef("%s: --gc-ttl must be at least 1s", path)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout+30*time.Second)
	defer cancel()
	cl, err := o.connect(ctx, cmd, addrs, true)
	if err != nil {
		return err
	}
	defer cl.Close()
	// A snapshot read at the start ts tells whether the log alone will be
	// a complete base for restores (TaskInfo.started_empty).
	kv, err := connector.KV(ctx, o.connCfg(addrs))
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("%s: connect to TiKV: %v", path, err))
	}
	defer kv.Close()
	opts.EmptyAt = task.EmptyAtTiKV(kv)
	rec, err := task.StartTask(ctx, cl.Etcd, cl.PD, opts)
	if err != nil {
		return taskErr(cmd, err)
	}
	ts := rec.GetInfo().GetStartTs()
	fmt.Fprintf(cmd.OutOrStdout(), "task %s started at ts %s; GC safepoint %s held; storage %s\n",
		name, keyspace.Format(ts), task.SafePointID(name), rec.GetStorageUrl())
	if so.withSnapshot {
		res, err := takeSnapshot(cmd.Context(), cmd, o, addrs, snapshot.Options{
			StorageURL: so.storage, BackupTS: ts, Progress: cmd.ErrOrStderr(), Logger: cliLogger(cmd.ErrOrStderr()),
		})
		if err != nil {
			return cli.WithExit(cli.Code(err), fmt.Errorf("%w; the task is running: take the snapshot with pitr backup full --storage %s --pd %s --ts %d",
				err, so.storage, o.pd, ts))
		}
		printBackup(cmd.OutOrStdout(), so.storage, res)
		return nil
	}
	if !rec.GetInfo().GetStartedEmpty() {
		fmt.Fprintf(cmd.OutOrStdout(), "note: the task ranges held data at the start ts; a restore needs a base snapshot (pitr backup full, or task start --with-snapshot) taken at or after it\n")
	}
	return nil
}

func runTaskStatus(cmd *cobra.Command, o *taskOptions, name string, asJSON bool) error {
	addrs, err := o.check(cmd)
	if err != nil {
		return err
	}
	if name != "" {
		if err := task.ValidateName(name); err != nil {
			return cli.Usagef("%s: %v", cmd.CommandPath(), err)
		}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*o.timeout)
	defer cancel()
	cl, err := o.connect(ctx, cmd, addrs, false)
	if err != nil {
		return err
	}
	defer cl.Close()
	views, err := task.ReadViews(ctx, cl.Etcd, name, time.Now())
	if err != nil {
		return taskErr(cmd, err)
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if name != "" {
			return enc.Encode(views[0])
		}
		if views == nil {
			views = []task.TaskView{}
		}
		return enc.Encode(views)
	}
	return renderViews(out, views, name != "")
}

func runTaskChange(cmd *cobra.Command, o *taskOptions, op, name string) error {
	addrs, err := o.check(cmd)
	if err != nil {
		return err
	}
	if err := task.ValidateName(name); err != nil {
		return cli.Usagef("%s: %v", cmd.CommandPath(), err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout+30*time.Second)
	defer cancel()
	cl, err := o.connect(ctx, cmd, addrs, true)
	if err != nil {
		return err
	}
	defer cl.Close()
	var changed bool
	var done, already string
	switch op {
	case "pause":
		changed, err = task.PauseTask(ctx, cl.Etcd, cl.PD, name, o.gcTTL, time.Now())
		done, already = "paused; GC safepoint "+task.SafePointID(name)+" stays held", "already paused"
	case "resume":
		changed, err = task.ResumeTask(ctx, cl.Etcd, cl.PD, name, o.gcTTL, time.Now())
		done, already = "resumed", "already running"
	case "stop":
		changed, err = task.StopTask(ctx, cl.Etcd, cl.PD, name, time.Now())
		done, already = "stopped; GC safepoint "+task.SafePointID(name)+" removed; the backup in storage is kept",
			"already stopped; GC safepoint "+task.SafePointID(name)+" removed"
	}
	if err != nil {
		return taskErr(cmd, err)
	}
	msg := done
	if !changed {
		msg = already
	}
	fmt.Fprintf(cmd.OutOrStdout(), "task %s %s\n", name, msg)
	return nil
}
