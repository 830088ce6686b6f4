package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
)

func run(args ...string) (string, error) { return cli.Execute(newRootCmd(), args...) }

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown flag", []string{"--nope"}, cli.ExitUsage, "unknown flag"},
		{"bad store count", []string{"--stores", "0"}, cli.ExitUsage, "--stores"},
		{"bad log level", []string{"--log-level", "loud"}, cli.ExitUsage, "--log-level"},
		{"extra args", []string{"x"}, cli.ExitUsage, "unknown command"},
		{"demo: short duration", []string{"demo", "--duration", "1s"}, cli.ExitUsage, "--duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(tc.args...)
			require.Error(t, err)
			require.Equal(t, tc.code, cli.Code(err), "%v", err)
			require.Contains(t, err.Error(), tc.msg)
			require.False(t, strings.Contains(err.Error(), "\n"), "one line: %q", err.Error())
		})
	}
}

func TestHelp(t *testing.T) {
	out, err := run("--help")
	require.NoError(t, err)
	require.Contains(t, out, "pitr-playground demo")
	require.Contains(t, out, "--tls-dir")
}
