package main

import "fmt"

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
)

// exitError carries an exit status through cobra to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

func usageErrorf(format string, args ...any) error {
	return withExit(ExitUsage, fmt.Errorf(format, args...))
}
