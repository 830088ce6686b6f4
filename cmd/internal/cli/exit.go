// Package cli holds what pitr's binaries share: the exit statuses of the
// CLI contract, one-line errors, main's error handling, the client
// libraries' log routing and size parsing.
package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
)

// Exit statuses. They are part of the CLI contract: scripts branch on them,
// so a number, once given a meaning, keeps it.
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailure: the command failed for a reason not listed below (the
	// error line says which); retrying may help.
	ExitFailure = 1
	// ExitUsage: wrong flags or arguments, or a subcommand this build does
	// not provide yet. Nothing was changed.
	ExitUsage = 2
	// ExitUnavailable: a required service (PD, etcd, TiKV, storage) could not
	// be reached. Nothing was changed.
	ExitUnavailable = 3
	// ExitConflict: the request conflicts with existing state: the storage
	// root belongs to another task or cluster, the task name is taken, the
	// task's state does not allow the operation, or GC has already passed
	// the requested start ts. The task was not started or changed.
	ExitConflict = 4
)

// exitError carries an exit status through cobra to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// WithExit gives err the exit status code (nil stays nil).
func WithExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// Usagef is a usage error (ExitUsage).
func Usagef(format string, args ...any) error {
	return WithExit(ExitUsage, fmt.Errorf(format, args...))
}

// Code maps an error to its exit status (ExitFailure unless WithExit gave
// it one).
func Code(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitFailure
}

// Restore and verify refusals (DESIGN I7). Restore refuses before its
// first write, and its error line then ends with "nothing was written to
// the target". The same statuses also report a cause found after writing
// began (e.g. a data file that rots while the restore reads it); the line
// then says how much of the restore the target holds and to rerun the same
// command to resume.
const (
	// ExitOutOfRange: the restore point is outside the restorable range
	// [task start ts, global checkpoint]; the message names the range.
	ExitOutOfRange = 10
	// ExitCorrupt: a data file's size or sha256, or a meta or root object,
	// is not what was written; or a checksum does not match: a snapshot
	// range against TiKV's checksum at the backup ts, a restored range
	// against what the backup says a read at T returns.
	ExitCorrupt = 11
	// ExitMissing: a file a meta references is missing, or the log's
	// coverage has a hole (the message names the keys and timestamps).
	ExitMissing = 12
	// ExitNotBackup: the storage root is not a pitr log backup (no
	// pitr.lock or task.pb) or belongs to another task.
	ExitNotBackup = 13
	// ExitTargetNotEmpty: the target cluster holds data in the task ranges,
	// or a change stream (BR log backup, TiCDC changefeed, pitr task) is
	// registered on it, which would not see the restored data
	// (restore.ErrTargetInUse; --force does not override that).
	ExitTargetNotEmpty = 14
	// ExitFormat: the backup was written by a newer pitr.
	ExitFormat = 15
	// ExitNoBase: restoring needs a base snapshot and the backup holds no
	// finished one (the task did not start on empty ranges).
	ExitNoBase = 16
)

// Strict makes flag and argument-count mistakes usage errors (exit 2) in
// root and every command under it, on one line naming the command.
func Strict(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return Usagef("%s: %v (see '%s --help')", c.CommandPath(), err, c.CommandPath())
	})
	strictArgs(root)
}

func strictArgs(c *cobra.Command) {
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return Usagef("%s: %v (see '%s --help')", cmd.CommandPath(), err, cmd.CommandPath())
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		strictArgs(sub)
	}
}
