package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/volsnap"
	"github.com/pitr-io/pitr/volume"
	"github.com/pitr-io/pitr/volume/awsebs"
	"github.com/pitr-io/pitr/volume/local"
)

// providerOptions choose and configure a volume provider.
type providerOptions struct {
	provider    string
	localRoot   string
	awsRegion   string
	awsEndpoint string
}

func (p *providerOptions) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.provider, "provider", "", "volume provider: local or aws-ebs")
	f.StringVar(&p.localRoot, "local-root", "", "local provider: the directory of its snapshots and volumes (on the volumes' filesystem)")
	f.StringVar(&p.awsRegion, "aws-region", "", "aws-ebs: the region (default: the standard AWS chain's)")
	f.StringVar(&p.awsEndpoint, "aws-endpoint", "", "aws-ebs: the EC2 endpoint (default: AWS's, or AWS_ENDPOINT_URL_EC2)")
}

// open returns the provider the flags name.
func (p *providerOptions) open(ctx context.Context, path string) (volume.Provider, error) {
	switch p.provider {
	case "":
		return nil, cli.Usagef("%s: --provider is required: local or aws-ebs", path)
	case local.Name:
		if p.localRoot == "" {
			return nil, cli.Usagef("%s: --provider local needs --local-root DIR", path)
		}
		pr, err := local.New(p.localRoot)
		if err != nil {
			return nil, cli.Usagef("%s: --local-root: %v", path, err)
		}
		return pr, nil
	case awsebs.Name:
		pr, err := awsebs.New(ctx, awsebs.Config{Region: p.awsRegion, Endpoint: p.awsEndpoint})
		if err != nil {
			return nil, cli.Usagef("%s: --provider aws-ebs: %v", path, err)
		}
		return pr, nil
	default:
		return nil, cli.Usagef("%s: --provider %q: want local or aws-ebs", path, p.provider)
	}
}

// volumeBackupOptions are the flags of `pitr backup volume`.
type volumeBackupOptions struct {
	taskOptions
	providerOptions
	storage    string
	volumeFile string
	pauseTTL   time.Duration
	noProgress bool
}

func newBackupVolumeCmd() *cobra.Command {
	o := &volumeBackupOptions{}
	cmd := &cobra.Command{
		Use:   "volume --storage URL --pd ADDRS --provider local|aws-ebs --volume-file FILE",
		Short: "Take a volume-snapshot backup of every store",
		Long: `Snapshot every TiKV store's data volumes, crash-consistent, while the
stores run: the base of a point-in-time restore for large clusters, as
TiDB's EBS backup is (DESIGN.md §12).

--volume-file names each store's volumes, in the shape of BR's volume file
(tikv.stores[].volumes[] with volume_id and type), as TiDB Operator writes
it; every store PD has must be in it (exit 2 otherwise). The backup sets
PD's scheduling limits to 0 and holds GC (both with --pause-ttl, so a
backup that dies leaves nothing held longer), reads PD's min resolved ts
(the resolved ts the backup restores to), starts every store's snapshot,
and resumes scheduling and GC as soon as the snapshots' points in time are
fixed. It then waits for the snapshots to complete and writes the
checksummed volumebackupmeta: under volume/<resolved ts>/ when --storage
is a task root, else at its top. A snapshot that fails is exit 1 with the
provider's reason, and the backup's snapshots are deleted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBackupVolume(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.storage, "storage", "", "storage URL: a task's root or a root of its own")
	f.StringVar(&o.volumeFile, "volume-file", "", "the stores' volumes (BR's volume file JSON)")
	f.DurationVar(&o.pauseTTL, "pause-ttl", volsnap.DefaultPauseTTL, "TTL of PD's lowered scheduling limits and of the GC hold")
	f.BoolVar(&o.noProgress, "no-progress", false, "do not print progress lines on stderr")
	f.StringVar(&o.pd, "pd", "", "PD addresses, comma separated")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on reaching PD")
	o.tls.register(f)
	o.providerOptions.register(cmd)
	return cmd
}

func runBackupVolume(cmd *cobra.Command, o *volumeBackupOptions) error {
	path := cmd.CommandPath()
	addrs, err := o.check(cmd)
	if err != nil {
		return err
	}
	if o.storage == "" {
		return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
	}
	if o.volumeFile == "" {
		return cli.Usagef("%s: --volume-file is required (see '%s --help')", path, path)
	}
	if o.pauseTTL < 10*time.Second {
		return cli.Usagef("%s: --pause-ttl must be at least 10s", path)
	}
	vf, err := volsnap.ReadVolumeFile(o.volumeFile)
	if err != nil {
		return cli.Usagef("%s: %v", path, err)
	}
	ctx := cmd.Context()
	prov, err := o.providerOptions.open(ctx, path)
	if err != nil {
		return err
	}
	st, err := storage.OpenStack(ctx, o.storage, storage.StackOptions{})
	if err != nil {
		return cli.Usagef("%s: --storage: %v", path, err)
	}
	defer st.Close()
	cli.RouteClientLogs(cmd.ErrOrStderr(), hclog.Off)
	cc := o.connCfg(addrs)
	pd, err := connector.PD(ctx, cc)
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("%s: %v", path, err))
	}
	defer pd.Close()
	hc, err := connector.HTTPClient(cc.TLS, 30*time.Second)
	if err != nil {
		return cli.Usagef("%s: %v", path, err)
	}
	bo := volsnap.BackupOptions{Storage: st, Provider: prov, File: vf, PD: pd, PDAddrs: addrs, TLS: cc.TLS, HTTP: hc,
		PauseTTL: o.pauseTTL, Logger: cliLogger(cmd.ErrOrStderr())}
	if !o.noProgress {
		bo.Progress = cmd.ErrOrStderr()
	}
	res, err := volsnap.Backup(ctx, bo)
	if err != nil {
		return backupErr(cmd, err)
	}
	printVolumeBackup(cmd.OutOrStdout(), st.URL(), res)
	return nil
}

func printVolumeBackup(w io.Writer, url string, res *volsnap.BackupResult) {
	fmt.Fprintf(w, "volume backup at resolved ts %s stored in %s/%s%s: %d stores, %d snapshots (%s, %s), PD paused %s, in %s\n",
		keyspace.Format(res.ResolvedTS), url, res.Root, volsnap.MetaName, res.Stores, res.Snapshots, res.Meta.GetFullBackupType(),
		storage.FormatBytes(res.Bytes), res.Paused.Round(time.Millisecond), res.Duration.Round(time.Millisecond))
}

// volumeRestoreOptions are the flags of `pitr restore volume`.
type volumeRestoreOptions struct {
	restoreOptions
	providerOptions
	prepare    bool
	output     string
	volumeFile string
	storeWait  time.Duration
}

func newRestoreVolumeCmd() *cobra.Command {
	o := &volumeRestoreOptions{}
	c := &cobra.Command{
		Use:   "volume --storage URL --pd ADDRS --to TS (--prepare --provider P --output FILE | [--volume-file FILE])",
		Short: "Restore a cluster from a volume backup and the log after it",
		Long: `Restore a whole cluster from a volume-snapshot backup (pitr backup volume),
then apply the log up to --to, in two phases, as BR's EBS restore does:

  --prepare   (PD of the new cluster running, its stores not started)
              picks the newest volume backup with resolved ts <= --to,
              makes a volume from every snapshot (--provider, in the zone
              of the volume it was taken from), marks PD
              snapshot-recovering, and writes --output: the volume file
              with restore_volume_id set. Start each store on its volumes
              then (TiDB Operator does; for the playground: its
              start-stores call): they start in recovery mode.

  (no flag)   runs TiKV's recovery protocol on those stores: each region's
              leader from the peers with the newest log, every version after
              the resolved ts deleted, PD's marker cleared; then restores the
              log in (resolved ts, --to] as pitr restore does (GC off,
              import mode, progress file, resume by rerunning). A rerun
              after the recovery goes on to the log. --volume-file (the
              --output of --prepare) pins the backup.

There is no post-restore checksum: a volume backup carries no range
checksums. Exit statuses are those of pitr restore.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRestoreVolume(cmd, o) },
	}
	f := c.Flags()
	f.StringVar(&o.storage, "storage", "", "the task's storage URL (where the volume backup and the log are)")
	f.StringVar(&o.to, "to", "", `restore point: TSO, RFC3339, now-5m, or "2026-12-01 21:00:00" in --tz`)
	f.StringVar(&o.pd, "pd", "", "PD addresses of the new cluster, comma separated")
	f.BoolVar(&o.prepare, "prepare", false, "phase 1: make the volumes, mark PD, write --output")
	f.StringVar(&o.output, "output", "", "--prepare: where to write the volume file of the new volumes")
	f.StringVar(&o.volumeFile, "volume-file", "", "phase 2: the --output of --prepare (default: choose the backup by --to again)")
	f.DurationVar(&o.storeWait, "store-wait", 2*time.Minute, "phase 2: how long to wait for every store to register with PD")
	f.StringVar(&o.progressFile, "progress-file", "", "where finished ranges are recorded (default: under the user cache dir)")
	f.IntVar(&o.concurrency, "concurrency", restore.DefaultConcurrency, "key ranges restored at once")
	f.StringVar(&o.memory, "memory", "1GiB", "memory budget for reading and writing")
	f.BoolVar(&o.noProgress, "no-progress", false, "do not draw progress on stderr")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve the restore's progress as Prometheus metrics on this address")
	f.StringVar(&o.logLevel, "log-level", "warn", "log level: trace, debug, info, warn, error")
	o.tls.register(f)
	o.tz.register(f)
	o.providerOptions.register(c)
	return c
}

func runRestoreVolume(cmd *cobra.Command, o *volumeRestoreOptions) error {
	path := cmd.CommandPath()
	ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
	if o.pd == "" {
		return cli.Usagef("%s: --pd is required", path)
	}
	if o.prepare && o.output == "" {
		return cli.Usagef("%s: --prepare needs --output FILE", path)
	}
	if !o.prepare && o.output != "" {
		return cli.Usagef("%s: --output goes with --prepare", path)
	}
	rs, err := setupRestore(ctx, stderr, path, &o.restoreOptions)
	if err != nil {
		return err
	}
	defer rs.close()
	st := rs.opts.Source.(storage.Storage)
	infos, err := volsnap.List(ctx, st)
	if err != nil {
		return backupErr(cmd, err)
	}
	var pinned uint64
	if o.volumeFile != "" {
		vf, err := volsnap.ReadVolumeFile(o.volumeFile)
		if err != nil {
			return cli.Usagef("%s: %v", path, err)
		}
		if vf.ClusterInfo == nil || vf.ClusterInfo.ResolvedTS == 0 {
			return cli.Usagef("%s: --volume-file %s has no cluster_info.resolved_ts: pass the --output of --prepare", path, o.volumeFile)
		}
		pinned = vf.ClusterInfo.ResolvedTS
	}
	chosen, ok := volsnap.Choose(infos, rs.opts.RestoreTS)
	if pinned != 0 {
		ok = false
		for _, in := range infos {
			if in.Finished() && in.ResolvedTS() == pinned {
				chosen, ok = in, true
			}
		}
		if !ok {
			return cli.WithExit(cli.ExitNoBase, fmt.Errorf("%s: no finished volume backup at resolved ts %s in %s", path, keyspace.Format(pinned), st.URL()))
		}
	}
	if !ok {
		return cli.WithExit(cli.ExitNoBase, fmt.Errorf("%s: %s holds no finished volume backup with resolved ts at or before %s: take one with `pitr backup volume`",
			path, st.URL(), keyspace.Format(rs.opts.RestoreTS)))
	}
	tlsCfg := rs.opts.TLS
	hc, err := connector.HTTPClient(tlsCfg, 30*time.Second)
	if err != nil {
		return cli.Usagef("%s: %v", path, err)
	}
	if o.prepare {
		prov, err := o.providerOptions.open(ctx, path)
		if err != nil {
			return err
		}
		po := volsnap.PrepareOptions{Provider: prov, Backup: chosen, PDAddrs: rs.opts.PDAddrs, TLS: tlsCfg, HTTP: hc, Logger: rs.opts.Logger}
		if !o.noProgress {
			po.Progress = stderr
		}
		vf, err := volsnap.Prepare(ctx, po)
		if err != nil {
			return backupErr(cmd, err)
		}
		if err := volsnap.WriteVolumeFile(o.output, vf); err != nil {
			return cli.WithExit(cli.ExitFailure, fmt.Errorf("%s: write --output %s (the volumes are made and PD is marked): %v", path, o.output, err))
		}
		n := 0
		for _, s := range vf.TiKV.Stores {
			n += len(s.Volumes)
		}
		_, err = fmt.Fprintf(stdout, "prepared %d volumes of %d stores from the volume backup at %s; PD is marked snapshot-recovering; start the stores on them (%s), then run this command without --prepare\n",
			n, len(vf.TiKV.Stores), keyspace.Format(chosen.ResolvedTS()), o.output)
		return err
	}
	cc := connector.Config{PDAddrs: rs.opts.PDAddrs, TLS: tlsCfg, Timeout: 10 * time.Second, Component: "pitr-restore"}
	pd, err := connector.PD(ctx, cc)
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("%s: %v", path, err))
	}
	defer pd.Close()
	etcd, err := connector.Etcd(ctx, cc, volsnap.RecoveredKey)
	if err != nil {
		return cli.WithExit(cli.ExitUnavailable, fmt.Errorf("%s: %v", path, err))
	}
	defer etcd.Close()
	do := volsnap.DataOptions{
		Recover: volsnap.RecoverOptions{PD: pd, PDAddrs: rs.opts.PDAddrs, TLS: tlsCfg, HTTP: hc, StoreWait: o.storeWait, Logger: rs.opts.Logger},
		Etcd:    etcd, Restore: rs.opts, Backup: chosen,
	}
	if !o.noProgress {
		do.Recover.Progress = stderr
	}
	res, err := volsnap.RestoreData(ctx, do)
	if err != nil && res == nil {
		if errors.Is(err, volsnap.ErrNotRecovering) || errors.Is(err, volsnap.ErrRecovery) || errors.Is(err, volsnap.ErrInvalid) ||
			errors.Is(err, volsnap.ErrUnavailable) {
			return backupErr(cmd, err)
		}
		return restoreError(path, err)
	}
	if err != nil {
		// The recovery is done and recorded: only the log is left.
		hint := fmt.Sprintf("the cluster is recovered to the volume backup at %s; rerun this command to restore the log up to %s",
			keyspace.Format(chosen.ResolvedTS()), keyspace.Format(rs.opts.RestoreTS))
		var we *restore.WrittenError
		if errors.As(err, &we) {
			hint += fmt.Sprintf(" (%d of %d key ranges of the log are done; progress file %s)", we.UnitsDone, we.Units, we.ProgressFile)
		}
		e := restoreError(path, err)
		return cli.WithExit(cli.Code(e), fmt.Errorf("%v; %s", e, hint))
	}
	if r := res.Recovered; r != nil {
		fmt.Fprintf(stdout, "recovered %d stores at resolved ts %s: %d regions, %d stale regions tombstoned, %d versions and locks after it deleted, in %s\n",
			r.Stores, keyspace.Format(chosen.ResolvedTS()), r.Regions, r.Tombstoned, r.ResolvedKeys, r.Duration.Round(time.Millisecond))
	}
	if res.Restore == nil {
		_, err = fmt.Fprintf(stdout, "no log in %s: the cluster is restored to the volume backup's resolved ts %s\n", st.URL(), keyspace.Format(chosen.ResolvedTS()))
		return err
	}
	_, err = fmt.Fprintln(stdout, res.Restore.Summary())
	return err
}
