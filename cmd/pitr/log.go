package main

import (
	"encoding/json"
	"time"

	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/restore"
)

func newLogCmd() *cobra.Command {
	var url string
	var asJSON bool
	var window time.Duration
	c := &cobra.Command{
		Use:   "log --storage URL [--window 1h] [--json]",
		Short: "Show what a log backup holds: restorable range, snapshots, windows, holes",
		Long: `Read a task's storage root (metas and snapshots, no data file) and show
the restorable range, the snapshots and whether a restore can start from
each, the metas (keyframes, metas continuing a chain, older formats) and
data files per window of flush time, and every hole in the log's coverage
over the task ranges up to the checkpoint (up to 20). Like verify, it
needs no cluster; unlike verify, it reads no data file and does not stop
at the first hole. Exit statuses as verify's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := cmd.CommandPath()
			if url == "" {
				return cli.Usagef("%s: --storage is required (see '%s --help')", path, path)
			}
			if window <= 0 {
				return cli.Usagef("%s: --window must be positive", path)
			}
			ctx := cmd.Context()
			src, err := openBackupStorage(ctx, url)
			if err != nil {
				return err
			}
			defer src.Close()
			li, err := restore.DescribeLog(ctx, src, window)
			if err != nil {
				return restoreError(path, err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(li)
			}
			return li.Print(cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&url, "storage", "", "log backup storage URL")
	c.Flags().DurationVar(&window, "window", time.Hour, "length of the windows files and metas are counted in")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
