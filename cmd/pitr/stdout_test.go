package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
)

// captureStdout runs f with os.Stdout redirected and returns what was
// written to it: the PD client's logger writes to the process's stdout
// itself, not to the command's writer.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	old := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		done <- b
	}()
	defer func() {
		os.Stdout = old
	}()
	f()
	os.Stdout = old
	require.NoError(t, w.Close())
	return string(<-done)
}

// TestNoLogsOnStdout: an agent at debug level and the task commands print
// the PD client's and client-go's logs on stderr (routed through hclog),
// never on stdout, which carries only a command's output.
func TestNoLogsOnStdout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	pd := p.PDAddr()
	store := p.StoreIDs()[0]

	var stderr bytes.Buffer
	stdout := captureStdout(t, func() {
		actx, stop := context.WithTimeout(ctx, 3*time.Second)
		defer stop()
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(&stderr)
		root.SetArgs([]string{"agent", "--pd", pd, "--tikv", p.StoreAddrs()[store], "--data-dir", filepath.Join(t.TempDir(), "agent"),
			"--listen", "127.0.0.1:0", "--http", "-", "--log-level", "debug"})
		require.NoError(t, root.ExecuteContext(actx))
	})
	require.Empty(t, stdout, "nothing but a command's output on stdout")
	require.Contains(t, stderr.String(), "[pd]", "the PD client's logs are routed to stderr")

	var out string
	stdout = captureStdout(t, func() {
		out, err = run("task", "start", "quiet", "--storage", "file://"+t.TempDir(), "--pd", pd)
		require.NoError(t, err)
		_, err = run("task", "status", "--pd", pd)
		require.NoError(t, err)
	})
	require.Empty(t, stdout)
	require.Contains(t, out, "task quiet started at ts")
}
