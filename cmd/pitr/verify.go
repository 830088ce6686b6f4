package main

import (
	"context"
	"fmt"
	"io"
	"math"

	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/volsnap"
)

// verifyOptions are the flags of `pitr verify`.
type verifyOptions struct {
	storage     string
	to          string
	concurrency int
	noProgress  bool
	snapshot    string
	volume      bool
	tz          tzFlag
	providerOptions
}

func newVerifyCmd() *cobra.Command {
	o := &verifyOptions{}
	c := &cobra.Command{
		Use:   "verify --storage URL [--to TS] [--snapshot URL]",
		Short: "Prove offline that a restore to TS would succeed",
		Long: `Check a log backup offline, without any cluster: every meta parses, every
file a meta references exists with its recorded size and sha256, and the
metas' coverage leaves no hole in the task ranges over (B, --to]
(default --to: the global checkpoint), B the backup ts of the base
snapshot a restore to --to would use (as restore picks it; --snapshot
names one) or the task's start ts. The base's files are checked like the
log's, its checksums must tile its ranges and match its files' rows
(11), and its ranges must cover the task ranges (16 when a needed base is
missing). With --volume the base is the newest finished volume backup
at or before --to instead (pitr backup volume): its volumebackupmeta must
pass its checksum and, with --provider, every snapshot it names must exist
(12) and be completed (11). It stops at the first problem and
names it (a file path, or a key range and timestamp interval), with the
exit status restore would give (10 out of range, 11 corrupt, 12 missing
file or hole, 13 not a pitr backup, 15 newer format).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVerify(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	c.Flags().StringVar(&o.storage, "storage", "", "log backup storage URL")
	c.Flags().StringVar(&o.to, "to", "", `restore point to verify: TSO, RFC3339, now-5m, or "2026-12-01 21:00:00" in --tz (default: the checkpoint)`)
	o.tz.register(c.Flags())
	c.Flags().StringVar(&o.snapshot, "snapshot", "", "base snapshot root URL (default: the snapshots under the task root)")
	c.Flags().BoolVar(&o.volume, "volume", false, "verify a restore from the volume backup at or before --to (and the log after it)")
	o.providerOptions.register(c)
	c.Flags().IntVar(&o.concurrency, "concurrency", restore.DefaultConcurrency, "files checked at once")
	c.Flags().BoolVar(&o.noProgress, "no-progress", false, "do not draw the progress bar on stderr")
	return c
}

func runVerify(ctx context.Context, stdout, stderr io.Writer, o *verifyOptions) error {
	if o.storage == "" {
		return cli.Usagef("pitr verify: --storage is required")
	}
	if o.concurrency < 1 {
		return cli.Usagef("pitr verify: --concurrency must be at least 1")
	}
	var ts uint64
	if o.to != "" {
		var err error
		if ts, err = parseTS(stderr, "pitr verify", "to", o.to, &o.tz); err != nil {
			return cli.Usagef("pitr verify: %v", err)
		}
	}
	src, err := openBackupStorage(ctx, o.storage)
	if err != nil {
		return err
	}
	defer src.Close()
	vo := restore.VerifyOptions{RestoreTS: ts, Concurrency: o.concurrency}
	if o.snapshot != "" {
		st, err := openBackupStorage(ctx, o.snapshot)
		if err != nil {
			return err
		}
		defer st.Close()
		vo.Snapshot = st
	}
	if !o.noProgress {
		vo.Progress = stderr
	}
	extra := ""
	if o.volume {
		if o.snapshot != "" {
			return cli.Usagef("pitr verify: --volume and --snapshot name two different bases")
		}
		infos, err := volsnap.List(ctx, src)
		if err != nil {
			return restoreError("pitr verify", err)
		}
		hasLog, err := volsnap.HasLog(ctx, src)
		if err != nil {
			return restoreError("pitr verify", err)
		}
		to := ts
		if to == 0 {
			// The newest a restore can use: at or before the checkpoint.
			to = math.MaxUint64
			if hasLog {
				b, err := restore.Load(ctx, src)
				if err != nil {
					return restoreError("pitr verify", err)
				}
				to = b.Checkpoint
			}
		}
		in, ok := volsnap.Choose(infos, to)
		if !ok {
			return cli.WithExit(cli.ExitNoBase, fmt.Errorf("pitr verify: %s holds no finished volume backup at or before the restore point", src.URL()))
		}
		vo.Volume = &restore.VolumeBase{Root: in.Root, BackupTS: in.ResolvedTS()}
		if o.provider != "" {
			prov, err := o.providerOptions.open(ctx, "pitr verify")
			if err != nil {
				return err
			}
			n, err := volsnap.CheckSnapshots(ctx, prov, in)
			if err != nil {
				return restoreError("pitr verify", err)
			}
			extra = fmt.Sprintf("; its %d volume snapshots are completed (%s)", n, prov.Name())
		} else {
			extra = "; its volume snapshots were not asked for (no --provider)"
		}
		if !hasLog {
			_, err = fmt.Fprintf(stdout, "ok: the volume backup %s%s at resolved ts %s (%d stores, provider %s): its meta is intact%s; the root holds no log\n",
				src.URL()+"/", in.Root, keyspace.Format(in.ResolvedTS()), len(in.Meta.GetStores()), in.Meta.GetFullBackupType(), extra)
			return err
		}
	}
	res, err := restore.Verify(ctx, src, vo)
	if err != nil {
		return restoreError("pitr verify", err)
	}
	_, err = fmt.Fprintln(stdout, res.Summary()+extra)
	return err
}
