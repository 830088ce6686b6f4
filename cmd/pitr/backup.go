package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/volsnap"
)

// backupOptions are the flags of `pitr backup full`.
type backupOptions struct {
	taskOptions
	storage     string
	ts          string
	ranges      []string
	concurrency int
	rateLimit   string
	noProgress  bool
	tz          tzFlag
}

func newBackupCmd() *cobra.Command {
	b := &cobra.Command{Use: "backup", Short: "Snapshot backups (the base of a point-in-time restore)"}
	o := &backupOptions{}
	full := &cobra.Command{
		Use:   "full --storage URL --pd ADDRS [--ts TS] [--range START:END]",
		Short: "Take a full snapshot backup at one timestamp",
		Long: `Take a consistent copy of the key ranges at one backup ts B: the base a
restore starts from when the log backup began on a cluster that already
held data.

--storage is a task's storage root (the snapshot goes to snapshot/<B>/
under it and backs up the task's ranges) or a root of its own. --ts is a
TSO or an RFC3339 time (default: now); below PD's GC safepoint it is
refused (exit 4). A service GC safepoint "pitr-backup-<B>" is held at B
while the backup runs (TTL --gc-ttl, refreshed) and removed at the end,
also on failure.

Every range is scanned at B where its region's leader is: by the agent
beside that store when one runs (the data goes from the store to storage
without passing through this command), else by this command. Each range's
checksum is compared with TiKV's own checksum of it at B (the coprocessor
checksum request); a mismatch fails the backup (exit 11). Finished ranges
are recorded in storage: rerunning the same command after a failure or a
kill resumes the unfinished backup and skips them. The backupmeta, written
last, commits the snapshot. A second backup into a root of its own, or at
a ts that already has a snapshot, is exit 4.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBackupFull(cmd, o) },
	}
	f := full.Flags()
	f.StringVar(&o.storage, "storage", "", "storage URL: a task's root or a root of its own")
	f.StringVar(&o.ts, "ts", "", `backup ts: TSO, RFC3339, now-5m, or "2026-12-01 21:00:00" in --tz; default now`)
	o.tz.register(f)
	f.StringSliceVar(&o.ranges, "range", nil, "key range START:END (repeatable); default the task's ranges, or all keys")
	f.IntVar(&o.concurrency, "concurrency", snapshot.DefaultConcurrency, "ranges backed up at once")
	f.StringVar(&o.rateLimit, "ratelimit", "", "upload rate limit per process, e.g. 100MiB (per second; default none)")
	f.BoolVar(&o.noProgress, "no-progress", false, "do not print progress lines on stderr")
	f.StringVar(&o.pd, "pd", "", "PD addresses, comma separated")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on reaching PD and etcd")
	f.DurationVar(&o.gcTTL, "gc-ttl", snapshot.DefaultSafePointTTL, "TTL of the backup's GC safepoint (refreshed while it runs)")
	o.tls.register(f)

	var statusStorage string
	var asJSON bool
	status := &cobra.Command{
		Use:   "status --storage URL [--json]",
		Short: "List the snapshot backups in storage",
		Long: `List the snapshots under a task's storage root (or the one in a root of
its own): backup ts, state (finished, or unfinished with the ranges done),
files, bytes and keys. It reads storage only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBackupStatus(cmd, statusStorage, asJSON)
		},
	}
	status.Flags().StringVar(&statusStorage, "storage", "", "storage URL")
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	b.AddCommand(full, newBackupVolumeCmd(), status)
	return b
}

func runBackupFull(cmd *cobra.Command, o *backupOptions) error {
	path := cmd.CommandPath()
	addrs, err := o.check(cmd)
	if err != nil {
		return err
	}
	if o.storage == "" {
		return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
	}
	so := snapshot.Options{StorageURL: o.storage, Concurrency: o.concurrency, SafePointTTL: o.gcTTL}
	if o.ts != "" {
		if so.BackupTS, err = parseTS(cmd.ErrOrStderr(), path, "ts", o.ts, &o.tz); err != nil {
			return cli.Usagef("%s: %v", path, err)
		}
	}
	if so.Ranges, err = parseRanges(o.ranges); err != nil {
		return cli.Usagef("%s: %v", path, err)
	}
	if o.concurrency <= 0 {
		return cli.Usagef("%s: --concurrency must be positive", path)
	}
	if o.gcTTL < 10*time.Second {
		return cli.Usagef("%s: --gc-ttl must be at least 10s", path)
	}
	var limit int64
	if o.rateLimit != "" {
		if limit, err = cli.ParseSize(o.rateLimit); err != nil || limit <= 0 {
			return cli.Usagef("%s: --ratelimit %q: want a positive size per second, e.g. 100MiB", path, o.rateLimit)
		}
	}
	so.RateLimit = limit
	if !o.noProgress {
		so.Progress = cmd.ErrOrStderr()
	}
	so.Logger = cliLogger(cmd.ErrOrStderr())
	res, err := takeSnapshot(cmd.Context(), cmd, &o.taskOptions, addrs, so)
	if err != nil {
		return err
	}
	printBackup(cmd.OutOrStdout(), o.storage, res)
	return nil
}

// takeSnapshot connects to the cluster (PD, etcd for the agents, client-go)
// and runs the backup; errors come back as one line with their exit status.
func takeSnapshot(ctx context.Context, cmd *cobra.Command, o *taskOptions, addrs []string, so snapshot.Options) (*snapshot.Result, error) {
	path := cmd.CommandPath()
	cctx, cancel := context.WithTimeout(ctx, o.timeout+30*time.Second)
	defer cancel()
	cl, err := o.connect(cctx, cmd, addrs, true)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	kv, err := connector.KV(cctx, o.connCfg(addrs))
	if err != nil {
		return nil, cli.WithExit(cli.ExitUnavailable, fmt.Errorf("%s: connect to TiKV: %v", path, err))
	}
	defer kv.Close()
	tls := o.tls.get(nil, func(string) bool { return true })
	agents, err := snapshot.NewEtcdAgents(cctx, cl.Etcd, tls)
	if err != nil {
		return nil, backupErr(cmd, err)
	}
	defer agents.Close()
	if agents.Stores() > 0 {
		so.Agents = agents
	}
	st, err := storage.OpenStack(ctx, so.StorageURL, storage.StackOptions{RateLimit: so.RateLimit})
	if err != nil {
		return nil, cli.Usagef("%s: --storage: %v", path, err)
	}
	defer st.Close()
	so.Storage, so.PD, so.KV = st, cl.PD, kv.KVStore
	res, err := snapshot.Run(ctx, so)
	if err != nil {
		return nil, backupErr(cmd, err)
	}
	return res, nil
}

func printBackup(w io.Writer, url string, res *snapshot.Result) {
	resumed := ""
	if res.Resumed {
		resumed = fmt.Sprintf(" (resumed: %d ranges were done)", res.RangesSkipped)
	}
	fmt.Fprintf(w, "snapshot at %s stored in %s/%s%s: %d ranges (%d scanned by agents), %d files, %s, %d keys, in %s\n",
		keyspace.Format(res.BackupTS), url, res.Root, resumed, res.Ranges, res.ByAgents, res.Files, storage.FormatBytes(res.Bytes), res.Kvs, res.Duration.Round(time.Millisecond))
}

// backupErr maps the errors of the backup commands (snapshot and volume)
// and of restore volume's own steps to exit statuses.
func backupErr(cmd *cobra.Command, err error) error {
	code := cli.ExitFailure
	switch {
	case errors.Is(err, snapshot.ErrConflict), errors.Is(err, volsnap.ErrNotRecovering):
		code = cli.ExitConflict
	case errors.Is(err, snapshot.ErrChecksum), errors.Is(err, logfile.ErrCorrupt):
		code = cli.ExitCorrupt
	case errors.Is(err, logfile.ErrFormat):
		code = cli.ExitFormat
	case errors.Is(err, snapshot.ErrInvalid), errors.Is(err, volsnap.ErrInvalid):
		code = cli.ExitUsage
	case errors.Is(err, coordinator.ErrUnavailable):
		code = cli.ExitUnavailable
	}
	return cli.WithExit(code, &lineError{msg: cmd.CommandPath() + ": " + oneLine(err), err: err})
}

// snapshotView is one line of `pitr backup status`.
type snapshotView struct {
	// Kind is "snapshot" (pitr backup full) or "volume" (pitr backup
	// volume; BackupTS is its resolved ts).
	Kind       string `json:"kind"`
	Root       string `json:"root"`
	BackupTS   uint64 `json:"backup_ts"`
	BackupTime string `json:"backup_time"`
	State      string `json:"state"`
	Task       string `json:"task,omitempty"`
	Files      int    `json:"files"`
	Bytes      int64  `json:"bytes"`
	Keys       uint64 `json:"keys"`
	// Volume backups: the provider and the snapshots per store.
	Provider  string `json:"provider,omitempty"`
	Stores    int    `json:"stores,omitempty"`
	Snapshots int    `json:"snapshots,omitempty"`
}

func runBackupStatus(cmd *cobra.Command, url string, asJSON bool) error {
	path := cmd.CommandPath()
	if url == "" {
		return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
	}
	ctx := cmd.Context()
	st, err := storage.OpenStack(ctx, url, storage.StackOptions{})
	if err != nil {
		return cli.Usagef("%s: --storage: %v", path, err)
	}
	defer st.Close()
	infos, err := snapshot.List(ctx, st)
	if err == nil && len(infos) == 0 {
		var one snapshot.Info
		if one, err = snapshot.Load(ctx, st, ""); errors.Is(err, snapshot.ErrNoSnapshot) {
			err = nil
		} else if err == nil {
			infos = append(infos, one)
		}
	}
	if err != nil {
		return backupErr(cmd, err)
	}
	views := make([]snapshotView, 0, len(infos))
	for _, in := range infos {
		v := snapshotView{Kind: "snapshot", Root: in.Root, BackupTS: in.BackupTS, BackupTime: keyspace.Time(in.BackupTS).Format(time.RFC3339), State: "unfinished"}
		if in.Lock != nil {
			v.Task = in.Lock.GetTask()
		}
		if m := in.Meta; m != nil {
			v.State, v.Task, v.Files, v.Keys = "finished", m.GetTask(), len(m.GetFiles()), m.GetTotalKvs()
			for _, f := range m.GetFiles() {
				v.Bytes += f.GetSize()
			}
		}
		views = append(views, v)
	}
	vols, err := volsnap.List(ctx, st)
	if err != nil {
		return backupErr(cmd, err)
	}
	for _, in := range vols {
		ts := in.ResolvedTS()
		v := snapshotView{Kind: "volume", Root: in.Root, BackupTS: ts, BackupTime: keyspace.Time(ts).Format(time.RFC3339), State: "unfinished",
			Task: in.Lock.GetTask(), Provider: in.Lock.GetProvider()}
		if m := in.Meta; m != nil {
			v.State, v.Task, v.Provider, v.Stores = "finished", m.GetTask(), m.GetFullBackupType(), len(m.GetStores())
			for _, s := range m.GetStores() {
				v.Snapshots += len(s.GetVolumes())
				for _, sv := range s.GetVolumes() {
					v.Bytes += sv.GetBytes()
				}
			}
		}
		views = append(views, v)
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(views)
	}
	if len(views) == 0 {
		fmt.Fprintf(out, "no snapshot in %s\n", st.URL())
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tBACKUP TS\tTIME (UTC)\tSTATE\tFILES\tSIZE\tKEYS\tROOT")
	for _, v := range views {
		root := v.Root
		if root == "" {
			root = "."
		}
		files, keys := fmt.Sprint(v.Files), fmt.Sprint(v.Keys)
		if v.Kind == "volume" {
			// A volume backup holds snapshots, not files, and no key count.
			files, keys = fmt.Sprintf("%d snapshots (%s)", v.Snapshots, v.Provider), "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Kind, v.BackupTS, v.BackupTime, v.State, files, storage.FormatBytes(v.Bytes), keys, root)
	}
	return tw.Flush()
}

// cliLogger is a command's log: structured lines on stderr, warnings and
// errors only (progress has its own lines).
func cliLogger(w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: hclog.Warn, Output: w})
}
