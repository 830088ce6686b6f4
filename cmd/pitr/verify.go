package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/restore"
)

// verifyOptions are the flags of `pitr verify`.
type verifyOptions struct {
	storage     string
	to          string
	concurrency int
	noProgress  bool
	snapshot    string
	tz          tzFlag
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
missing). It stops at the first problem and
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
	res, err := restore.Verify(ctx, src, vo)
	if err != nil {
		return restoreError("pitr verify", err)
	}
	_, err = fmt.Fprintln(stdout, res.Summary())
	return err
}
