package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
)

func run(args ...string) (string, error) { return cli.Execute(newRootCmd(), args...) }

// TestHelpListsContract checks that `pitr --help` shows every command line
// of DESIGN.md §7.
func TestHelpListsContract(t *testing.T) {
	out, err := run("--help")
	require.NoError(t, err)
	for _, want := range []string{
		"pitr-playground demo", "pitr-playground [--stores 3] [--dir D] [--pd-addr ADDR] [--ctl-addr ADDR] [--tls-dir D]",
		"pitr agent --pd ADDRS --tikv ADDR [--config agent.toml]",
		"pitr coordinator --pd ADDRS [--config coordinator.toml]",
		"pitr task start NAME --storage URL [--start-ts TS] [--range START:END]",
		"pitr task status [NAME] [--json] | pause NAME | resume NAME | stop NAME",
		"pitr restore --storage URL --to TS|RFC3339 --pd ADDRS [--snapshot URL] [--dry-run]",
		"pitr verify --storage URL [--to TS]", "pitr backup full --storage URL --pd ADDRS",
		"pitr log --storage URL", "pitr truncate --storage URL --until TS [--dry-run]", "pitr compact --storage URL [--until TS]",
	} {
		require.Contains(t, out, want)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown flag", []string{"task", "status", "--nope"}, cli.ExitUsage, "unknown flag"},
		{"moved: playground", []string{"playground", "--stores", "3"}, cli.ExitUsage, "moved to pitr-playground"},
		{"moved: demo", []string{"demo"}, cli.ExitUsage, "moved to pitr-playground demo"},
		{"compact without storage", []string{"compact"}, cli.ExitUsage, "--storage is required"},
		{"backup without pd", []string{"backup", "full", "--storage", "mem://"}, cli.ExitUsage, "--pd is required"},
		{"backup bad ratelimit", []string{"backup", "full", "--storage", "mem://", "--pd", "127.0.0.1:1", "--ratelimit", "fast"}, cli.ExitUsage, "--ratelimit"},
		{"backup status without storage", []string{"backup", "status"}, cli.ExitUsage, "--storage is required"},
		{"extra args", []string{"compact", "x"}, cli.ExitUsage, "unknown command"},
		{"missing name", []string{"task", "pause"}, cli.ExitUsage, "accepts 1 arg"},
		{"unknown command", []string{"nope"}, cli.ExitUsage, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(tc.args...)
			require.Error(t, err)
			require.Equal(t, tc.code, cli.Code(err), "%v", err)
			require.Contains(t, err.Error(), tc.msg)
			require.False(t, strings.Contains(err.Error(), "\n"), "one line: %q", err.Error())
		})
	}
	require.Equal(t, cli.ExitFailure, cli.Code(errors.New("x")))
}

// TestTimesPeopleType: --to takes a wall-clock time in --tz, now-5m and a
// TSO, and says on stderr which TSO it chose, in UTC and in the zone; a bad
// time or zone is a usage error in one line.
func TestTimesPeopleType(t *testing.T) {
	root := "file://" + t.TempDir()
	out, err := runCtx(context.Background(), "restore", "--storage", root, "--to", "2026-12-01 21:00:00", "--tz", "Europe/Berlin", "--dry-run")
	require.Equal(t, cli.ExitNotBackup, cli.Code(err), "%v", err)
	require.Contains(t, out, "--to 2026-12-01 21:00:00 is TSO 470851308748800000: 2026-12-01 20:00:00.000 UTC, 2026-12-01 21:00:00.000 CET")
	out, err = runCtx(context.Background(), "verify", "--storage", root, "--to", "now-5m", "--tz", "UTC")
	require.Equal(t, cli.ExitNotBackup, cli.Code(err), "%v", err)
	require.Contains(t, out, "--to now-5m is TSO ")
	for _, args := range [][]string{
		{"restore", "--storage", root, "--to", "yesterday", "--dry-run"},
		{"restore", "--storage", root, "--to", "now", "--tz", "Mars/Base", "--dry-run"},
		{"backup", "full", "--storage", root, "--pd", "127.0.0.1:1", "--ts", "now+5m"},
	} {
		_, err := run(args...)
		require.Equal(t, cli.ExitUsage, cli.Code(err), "%v: %v", args, err)
		require.NotContains(t, err.Error(), "\n")
	}
}

// TestVersion: --version prints the version make package links in
// (-X main.version), and "dev" in a plain go build.
func TestVersion(t *testing.T) {
	out, err := run("--version")
	require.NoError(t, err)
	require.Equal(t, "pitr dev\n", out)

	old := version
	t.Cleanup(func() { version = old })
	version = "v1.2.3-4-gabcdef"
	out, err = run("--version")
	require.NoError(t, err)
	require.Equal(t, "pitr v1.2.3-4-gabcdef\n", out)
}
