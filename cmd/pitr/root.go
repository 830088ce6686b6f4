package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

const rootLong = `pitr: continuous log backup and point-in-time restore for TiKV.

A sidecar agent beside every TiKV store captures committed changes from the
store's change stream into Parquet files in object storage; an elected
coordinator keeps the cluster-wide global checkpoint and holds the GC
safepoint; "pitr restore --to T" rebuilds the cluster as it was at T.

Commands:
  pitr demo                                  embedded playground + agents + coordinator + workload + restore + check
  pitr playground [--stores 3] [--dir D] [--pd-addr ADDR] [--ctl-addr ADDR]
  pitr agent --pd ADDRS --tikv ADDR [--config agent.toml]
  pitr coordinator --pd ADDRS [--config coordinator.toml]
  pitr task start NAME --storage URL [--start-ts TS] [--range START:END]
  pitr task status [NAME] [--json] | pause NAME | resume NAME | stop NAME
  pitr restore --storage URL --to TS|RFC3339 --pd ADDRS [--snapshot URL] [--dry-run]
  pitr verify --storage URL [--to TS]
  pitr backup full --storage URL --pd ADDRS
  pitr compact --storage URL | pitr truncate --storage URL --until TS

Exit status:
  0  success
  1  failure (the error line says why)
  2  usage error, or a subcommand this build does not provide yet
  3  a required service (PD, etcd, storage) is unreachable`

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:               "pitr",
		Short:             "Continuous log backup and point-in-time restore for TiKV",
		Long:              rootLong,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
		// An unknown subcommand is then an argument error (exit 2).
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErrorf("%s: %v (see '%s --help')", c.CommandPath(), err, c.CommandPath())
	})
	root.AddCommand(
		newDemoCmd(),
		newPlaygroundCmd(),
		newAgentCmd(),
		newCoordinatorCmd(),
		newTaskCmd(),
		newRestoreCmd(),
		newVerifyCmd(),
		newBackupCmd(),
		newCompactCmd(),
		newTruncateCmd(),
	)
	usageArgs(root)
	return root
}

// usageArgs makes argument-count mistakes usage errors (exit 2) everywhere.
func usageArgs(c *cobra.Command) {
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageErrorf("%s: %v (see '%s --help')", cmd.CommandPath(), err, cmd.CommandPath())
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageArgs(sub)
	}
}

// notBuilt is the RunE of a subcommand whose implementation has not landed:
// one line, exit status 2, nothing else happens.
func notBuilt(issue string) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, _ []string) error {
		return withExit(ExitUsage, fmt.Errorf("%s is not available in this build yet (tracked in %s)", c.CommandPath(), issue))
	}
}

func newCoordinatorCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "coordinator --pd ADDRS [--config coordinator.toml]",
		Short: "Run a coordinator (one is elected leader and advances the global checkpoint)",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("issue #5"),
	}
	c.Flags().String("pd", "", "PD addresses, comma separated")
	c.Flags().String("config", "", "coordinator TOML config file")
	return c
}

func newTaskCmd() *cobra.Command {
	task := &cobra.Command{
		Use:   "task",
		Short: "Start, inspect, pause, resume and stop log backup tasks",
	}
	start := &cobra.Command{
		Use:   "start NAME --storage URL [--start-ts TS] [--range START:END]",
		Short: "Start a log backup task writing to storage",
		Args:  cobra.ExactArgs(1),
		RunE:  notBuilt("issue #5"),
	}
	start.Flags().String("storage", "", "storage URL (s3://, gs://, azblob://, file://)")
	start.Flags().String("start-ts", "", "start timestamp (TSO or RFC3339); default now")
	start.Flags().StringSlice("range", nil, "key range START:END to back up (repeatable); default all")
	status := &cobra.Command{
		Use:   "status [NAME] [--json]",
		Short: "Show task state, checkpoint, lag and the slowest regions",
		Args:  cobra.MaximumNArgs(1),
		RunE:  notBuilt("issue #5"),
	}
	status.Flags().Bool("json", false, "print JSON")
	pause := &cobra.Command{Use: "pause NAME", Short: "Pause a task (the GC safepoint stays held)", Args: cobra.ExactArgs(1), RunE: notBuilt("issue #5")}
	resume := &cobra.Command{Use: "resume NAME", Short: "Resume a paused task", Args: cobra.ExactArgs(1), RunE: notBuilt("issue #5")}
	stop := &cobra.Command{Use: "stop NAME", Short: "Stop a task (releases the GC safepoint, keeps the backup)", Args: cobra.ExactArgs(1), RunE: notBuilt("issue #5")}
	for _, c := range []*cobra.Command{start, status, pause, resume, stop} {
		c.Flags().String("pd", "", "PD addresses, comma separated")
	}
	task.AddCommand(start, status, pause, resume, stop)
	return task
}

func newRestoreCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "restore --storage URL --to TS|RFC3339 --pd ADDRS [--snapshot URL] [--dry-run]",
		Short: "Restore a cluster to a point in time",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("issue #6"),
	}
	c.Flags().String("storage", "", "log backup storage URL")
	c.Flags().String("to", "", "restore point: TSO or RFC3339 time")
	c.Flags().String("pd", "", "PD addresses of the target cluster")
	c.Flags().String("snapshot", "", "base snapshot URL")
	c.Flags().Bool("dry-run", false, "print the plan and write nothing")
	return c
}

func newVerifyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "verify --storage URL [--to TS]",
		Short: "Prove offline that a restore to TS would succeed",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("issue #6"),
	}
	c.Flags().String("storage", "", "log backup storage URL")
	c.Flags().String("to", "", "restore point to verify (default: the checkpoint)")
	return c
}

func newBackupCmd() *cobra.Command {
	b := &cobra.Command{Use: "backup", Short: "Snapshot backups (the base of a point-in-time restore)"}
	full := &cobra.Command{
		Use:   "full --storage URL --pd ADDRS",
		Short: "Take a full snapshot backup at one timestamp",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("the snapshot issue (not filed yet)"),
	}
	full.Flags().String("storage", "", "storage URL")
	full.Flags().String("pd", "", "PD addresses")
	b.AddCommand(full)
	return b
}

func newCompactCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "compact --storage URL",
		Short: "Merge small log files into restore-ready files",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("the compaction issue (not filed yet)"),
	}
	c.Flags().String("storage", "", "storage URL")
	return c
}

func newTruncateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "truncate --storage URL --until TS",
		Short: "Delete log data no longer needed to restore to any point after TS",
		Args:  cobra.NoArgs,
		RunE:  notBuilt("the retention issue (not filed yet)"),
	}
	c.Flags().String("storage", "", "storage URL")
	c.Flags().String("until", "", "timestamp (TSO or RFC3339)")
	return c
}
