package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/restore"
)

func newTruncateCmd() *cobra.Command {
	var url, until string
	var dryRun bool
	var tz tzFlag
	c := &cobra.Command{
		Use:   "truncate --storage URL --until TS [--dry-run]",
		Short: "Delete log data no longer needed to restore to any point at or after TS",
		Long: `Remove from a task's storage root what only restore points before --until
need. The newest usable snapshot S at or before --until is kept, with the
log after it, and the restorable range becomes [S, checkpoint]: the
truncation record is written first, so a restore to a point before S is
refused (exit 10, naming the new range), never half done. Then the data
files, the metas (chains whole, last meta first) and the snapshots older
than S are deleted. A truncate stopped at any point is finished by
running it again. --dry-run says what would go and deletes nothing.

Exit status: 10 --until is past the checkpoint, 16 no usable snapshot at
or before --until (nothing can go without losing every restore point),
and verify's for a damaged root. A restore reading the root while it is
truncated to a point after the restore's may fail with a missing file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := cmd.CommandPath()
			if url == "" {
				return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
			}
			if until == "" {
				return cli.Usagef("%s: --until is required", path)
			}
			ts, err := parseTS(cmd.ErrOrStderr(), path, "until", until, &tz)
			if err != nil {
				return cli.Usagef("%s: %v", path, err)
			}
			ctx := cmd.Context()
			st, err := openBackupStorage(ctx, url)
			if err != nil {
				return err
			}
			defer st.Close()
			res, err := restore.Truncate(ctx, st, ts, restore.TruncateOptions{DryRun: dryRun, Progress: cmd.ErrOrStderr()})
			if err != nil {
				return restoreError(path, err)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), res.Summary())
			return err
		},
	}
	c.Flags().StringVar(&url, "storage", "", "log backup storage URL")
	c.Flags().StringVar(&until, "until", "", `keep restore points at or after this: TSO, RFC3339, now-168h, or "2026-12-01 21:00:00" in --tz`)
	c.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed, remove nothing")
	tz.register(c.Flags())
	return c
}
