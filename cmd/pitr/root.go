package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pitr-io/pitr/cmd/internal/cli"
)

const rootLong = `pitr: continuous log backup and point-in-time restore for TiKV.

A sidecar agent beside every TiKV store captures committed changes from the
store's change stream into Parquet files in object storage; an elected
coordinator keeps the cluster-wide global checkpoint and holds the GC
safepoint; "pitr restore --to T" rebuilds the cluster as it was at T.

Commands:
  pitr agent --pd ADDRS --tikv ADDR [--config agent.toml]
  pitr coordinator --pd ADDRS [--config coordinator.toml]
  pitr task start NAME --storage URL [--start-ts TS] [--range START:END] [--with-snapshot]
  pitr task status [NAME] [--json] | pause NAME | resume NAME | stop NAME
  pitr restore --storage URL --to TS|RFC3339 --pd ADDRS [--snapshot URL] [--dry-run]
  pitr verify --storage URL [--to TS]
  pitr backup full --storage URL --pd ADDRS [--ts TS] [--range START:END]
  pitr backup status --storage URL [--json]
  pitr log --storage URL [--window 1h] [--json]
  pitr truncate --storage URL --until TS [--dry-run]
  pitr compact --storage URL [--until TS]
  pitr --version

The playground and the demo are a separate binary, pitr-playground:
  pitr-playground demo                       embedded playground + agents + coordinator + workload + restore + check
  pitr-playground [--stores 3] [--dir D] [--pd-addr ADDR] [--ctl-addr ADDR] [--tls-dir D]

Exit status:
  0  success
  1  failure (the error line says why)
  2  usage error
  3  a required service (PD, etcd, storage) is unreachable
  4  conflict with existing state (storage root owned by another task or
     cluster, task name taken, wrong task state, start or backup ts
     already GC'd, a snapshot root holding another backup, a root another
     process is compacting)
  10 restore or truncate point outside the restorable range (the message
     names it)
  11 corrupt backup: a file's size or sha256, or a meta, is wrong, or a
     checksum does not match (a snapshot range, a restored range)
  12 incomplete backup: a referenced file is missing, or the log has a hole
  13 not a pitr backup (no pitr.lock or task.pb), or another task's root
  14 the restore target holds data in the task ranges
  15 the backup was written by a newer pitr
  16 the restore needs a base snapshot and the backup has none
     (pitr backup full, or task start --with-snapshot), or truncate
     finds no usable snapshot at or before its point
  restore errors say whether anything was written to the target; after a
  write began, rerun the same command to resume (the progress file)`

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:               "pitr",
		Short:             "Continuous log backup and point-in-time restore for TiKV",
		Long:              rootLong,
		Version:           version,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
		// An unknown subcommand is then an argument error (exit 2).
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.AddCommand(
		movedCmd("demo", "pitr-playground demo (make demo)"),
		movedCmd("playground", "pitr-playground"),
		newAgentCmd(),
		newCoordinatorCmd(),
		newTaskCmd(),
		newRestoreCmd(),
		newVerifyCmd(),
		newBackupCmd(),
		newLogCmd(),
		newCompactCmd(),
		newTruncateCmd(),
	)
	root.SetVersionTemplate("pitr {{.Version}}\n")
	cli.Strict(root)
	return root
}

// movedCmd runs a command that lives in the pitr-playground binary, which
// keeps the playground and its embedded etcd out of this one: it runs
// pitr-playground from this binary's directory or PATH with the same
// arguments (DESIGN §7 keeps "pitr demo" and "pitr playground"), or says in
// one line where the command went (exit 2).
func movedCmd(name, where string) *cobra.Command {
	return &cobra.Command{
		Use: name, Short: "Runs " + where, Hidden: true,
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, args []string) error {
			bin := playgroundBinary()
			if bin == "" {
				return cli.WithExit(cli.ExitUsage, fmt.Errorf("%s: moved to %s; build it with make build (bin/pitr-playground)", c.CommandPath(), where))
			}
			argv := []string{bin}
			if name == "demo" {
				argv = append(argv, "demo")
			}
			argv = append(argv, args...)
			if err := syscall.Exec(bin, argv, os.Environ()); err != nil {
				return fmt.Errorf("%s: run %s: %w", c.CommandPath(), bin, err)
			}
			return nil
		},
	}
}

// playgroundBinary finds pitr-playground beside this binary or on PATH
// ("" when there is none).
func playgroundBinary() string {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "pitr-playground")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath("pitr-playground"); err == nil {
		return p
	}
	return ""
}
