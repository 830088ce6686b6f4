package main

import (
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/restore"
)

func newCompactCmd() *cobra.Command {
	var url, until, target string
	var grace, sealIdle time.Duration
	var concurrency int
	var tz tzFlag
	c := &cobra.Command{
		Use:   "compact --storage URL [--until TS]",
		Short: "Merge small log files into restore-ready files",
		Long: `Merge the data files of the sealed chains of metas (those their agent has
moved on from, or idle for --seal-idle, flushed at or before --until,
default the checkpoint), and of earlier compacted metas under half the
target, into
sorted, de-duplicated files of --file-target bytes, and write one compacted
meta that supersedes those metas: restores then read a few large files
instead of many small ones, and return exactly what they returned before.
Superseded metas and their files are deleted by a later run once the
compacted meta is older than --grace, and outputs of a run that was killed
before its meta once they are that old. A run killed at any point loses
nothing; run it again.

Exit status: 4 another process is compacting the root (its lease), 10
--until past the checkpoint, and verify's for a damaged root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := cmd.CommandPath()
			if url == "" {
				return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
			}
			if concurrency < 1 {
				return cli.Usagef("%s: --concurrency must be at least 1", path)
			}
			o := restore.CompactOptions{Grace: grace, Concurrency: concurrency, Progress: cmd.ErrOrStderr(),
				Logger: hclog.New(&hclog.LoggerOptions{Name: "pitr", Level: hclog.Warn, Output: cmd.ErrOrStderr()})}
			if until != "" {
				ts, err := parseTS(cmd.ErrOrStderr(), path, "until", until, &tz)
				if err != nil {
					return cli.Usagef("%s: %v", path, err)
				}
				o.Until = ts
			}
			if target != "" {
				n, err := cli.ParseSize(target)
				if err != nil || n <= 0 {
					return cli.Usagef("%s: --file-target %q: want a positive size, e.g. 128MiB", path, target)
				}
				o.FileTarget = n
			}
			if sealIdle < 0 {
				return cli.Usagef("%s: --seal-idle must not be negative", path)
			}
			o.SealIdle = sealIdle
			if sealIdle == 0 {
				o.SealIdle = -1 // every chain, whatever its age
			}
			if grace < 0 {
				return cli.Usagef("%s: --grace must not be negative", path)
			}
			ctx := cmd.Context()
			st, err := openBackupStorage(ctx, url)
			if err != nil {
				return err
			}
			defer st.Close()
			res, err := restore.Compact(ctx, st, o)
			if err != nil {
				return restoreError(path, err)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), res.Summary())
			return err
		},
	}
	c.Flags().StringVar(&url, "storage", "", "log backup storage URL")
	c.Flags().StringVar(&until, "until", "", `compact chains flushed at or before this: TSO, RFC3339, now-1h, or "2026-12-01 21:00:00" in --tz (default: the checkpoint)`)
	c.Flags().StringVar(&target, "file-target", "128MiB", "size of the merged files")
	c.Flags().IntVar(&concurrency, "concurrency", restore.DefaultConcurrency, "files read and key-range parts merged at once (parts: no more than the CPUs)")
	c.Flags().DurationVar(&sealIdle, "seal-idle", restore.DefaultSealIdle, "compact a store's newest chain too once it is idle this long before --until (0: whatever its age)")
	c.Flags().DurationVar(&grace, "grace", restore.DefaultCompactGrace, "keep superseded metas and files this long after their compacted meta (longer than any restore)")
	tz.register(c.Flags())
	return c
}
