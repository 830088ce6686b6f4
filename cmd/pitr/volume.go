package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/volsnap"
	"github.com/pitr-io/pitr/volume"
	"github.com/pitr-io/pitr/volume/local"
)

// providerOptions choose and configure a volume provider.
type providerOptions struct {
	provider  string
	localRoot string
}

func (p *providerOptions) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.provider, "provider", "", "volume provider: local or aws-ebs")
	f.StringVar(&p.localRoot, "local-root", "", "local provider: the directory of its snapshots and volumes (on the volumes' filesystem)")
}

// open returns the provider the flags name.
func (p *providerOptions) open(cmd *cobra.Command) (volume.Provider, error) {
	path := cmd.CommandPath()
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
	prov, err := o.providerOptions.open(cmd)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
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
		return volumeErr(cmd, err)
	}
	printVolumeBackup(cmd.OutOrStdout(), st.URL(), res)
	return nil
}

func printVolumeBackup(w io.Writer, url string, res *volsnap.BackupResult) {
	fmt.Fprintf(w, "volume backup at resolved ts %s stored in %s/%s%s: %d stores, %d snapshots (%s, %s), PD paused %s, in %s\n",
		keyspace.Format(res.ResolvedTS), url, res.Root, volsnap.MetaName, res.Stores, res.Snapshots, res.Meta.GetFullBackupType(),
		storage.FormatBytes(res.Bytes), res.Paused.Round(time.Millisecond), res.Duration.Round(time.Millisecond))
}

// volumeErr maps the volume commands' errors to exit statuses.
func volumeErr(cmd *cobra.Command, err error) error {
	code := cli.ExitFailure
	switch {
	case errors.Is(err, volsnap.ErrInvalid):
		code = cli.ExitUsage
	case errors.Is(err, volsnap.ErrConflict):
		code = cli.ExitConflict
	case errors.Is(err, volsnap.ErrUnavailable):
		code = cli.ExitUnavailable
	case errors.Is(err, logfile.ErrCorrupt):
		code = cli.ExitCorrupt
	case errors.Is(err, logfile.ErrFormat):
		code = cli.ExitFormat
	}
	return cli.WithExit(code, &lineError{msg: cmd.CommandPath() + ": " + oneLine(err), err: err})
}
