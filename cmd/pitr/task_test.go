package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/coordinator"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/task"
)

// runCtx runs the CLI with a context.
func runCtx(ctx context.Context, args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func requireExit(t *testing.T, err error, code int, msg string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, cli.Code(err), "%v", err)
	require.Contains(t, err.Error(), msg)
	require.NotContains(t, err.Error(), "\n", "one line")
}

func TestTaskUsageErrors(t *testing.T) {
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.toml")
	require.NoError(t, os.WriteFile(badCfg, []byte("tick-interval = \"1s\"\nnope = 1\n"), 0o600))
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"start without storage", []string{"task", "start", "t", "--pd", "x:1"}, "--storage is required"},
		{"start without pd", []string{"task", "start", "t", "--storage", "mem://"}, "--pd is required"},
		{"bad name", []string{"task", "start", "a/b", "--storage", "mem://", "--pd", "x:1"}, "invalid task name"},
		{"bad range", []string{"task", "start", "t", "--storage", "mem://", "--pd", "x:1", "--range", "b:a"}, "is empty"},
		{"range without colon", []string{"task", "start", "t", "--storage", "mem://", "--pd", "x:1", "--range", "b"}, "want START:END"},
		{"bad hex", []string{"task", "start", "t", "--storage", "mem://", "--pd", "x:1", "--range", "0xzz:"}, "bad hex"},
		{"bad start ts", []string{"task", "start", "t", "--storage", "mem://", "--pd", "x:1", "--start-ts", "yesterday"}, "--start-ts"},
		{"unknown flag", []string{"task", "status", "--nope"}, "unknown flag"},
		{"status two names", []string{"task", "status", "a", "b", "--pd", "x:1"}, "accepts at most 1 arg"},
		{"stop without pd", []string{"task", "stop", "t"}, "--pd is required"},
		{"coordinator without pd", []string{"coordinator"}, "PD addresses are required"},
		{"coordinator tick", []string{"coordinator", "--pd", "x:1", "--tick", "1ms"}, "tick interval"},
		{"coordinator missing config", []string{"coordinator", "--pd", "x:1", "--config", filepath.Join(dir, "none.toml")}, "--config"},
		{"coordinator unknown key", []string{"coordinator", "--pd", "x:1", "--config", badCfg}, "unknown keys: nope"},
		{"coordinator log level", []string{"coordinator", "--pd", "x:1", "--log-level", "loud"}, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(tc.args...)
			requireExit(t, err, cli.ExitUsage, tc.msg)
		})
	}
}

// TestCoordinatorConfigLayers: defaults → file → flags (only those given).
func TestCoordinatorConfigLayers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "coordinator.toml")
	require.NoError(t, os.WriteFile(p, []byte(`
pd = ["10.0.0.1:2379"]
id = "c1"
http = "0.0.0.0:9597"
log-level = "debug"
tick-interval = "500ms"
poll-timeout = "3s"
safepoint-ttl = "12h"
session-ttl = "5s"
max-slow = 8
connect-timeout = "20s"
`), 0o600))
	changed := map[string]bool{"safepoint-ttl": true}
	o := coordinatorOptions{configPath: p, logLevel: "info"}
	require.NoError(t, loadCoordinatorOptions(&o, func(n string) bool { return changed[n] }, "", coordinator.DefaultHTTPAddr, "", time.Second, 6*time.Hour))
	c := o.cfg
	require.Equal(t, []string{"10.0.0.1:2379"}, c.PDAddrs)
	require.Equal(t, "c1", c.ID)
	require.Equal(t, "0.0.0.0:9597", c.HTTPAddr)
	require.Equal(t, "debug", o.logLevel)
	require.Equal(t, 500*time.Millisecond, c.TickInterval)
	require.Equal(t, 3*time.Second, c.PollTimeout)
	require.Equal(t, 6*time.Hour, c.SafePointTTL, "the flag wins")
	require.Equal(t, 5*time.Second, c.SessionTTL)
	require.Equal(t, 8, c.MaxSlow)
	require.Equal(t, 20*time.Second, c.ConnectTimeout)

	// The example config in deploy/ loads.
	o = coordinatorOptions{configPath: filepath.Join("..", "..", "deploy", "coordinator.toml"), logLevel: "info"}
	require.NoError(t, loadCoordinatorOptions(&o, func(string) bool { return false }, "", coordinator.DefaultHTTPAddr, "", time.Second, time.Hour))
	require.NotEmpty(t, o.cfg.PDAddrs)
	require.Equal(t, 7*24*time.Hour, o.cfg.Keep, `keep = "7d"`)
	require.Equal(t, 2, o.cfg.KeepSnapshots)
	require.Equal(t, time.Hour, o.cfg.RetentionInterval)
	require.False(t, o.cfg.NoCompaction)
	require.Equal(t, int64(100<<20), o.cfg.CompactRateLimit)
	require.Equal(t, int64(128<<20), o.cfg.CompactFileTarget)
	require.Equal(t, time.Hour, o.cfg.CompactGrace)
	var d duration
	require.Error(t, d.UnmarshalText([]byte("1.5d")))
	ao := agentOptions{configPath: filepath.Join("..", "..", "deploy", "agent.toml"), logLevel: "info"}
	require.NoError(t, loadAgentOptions(&ao, func(string) bool { return false }, "", "", "", "127.0.0.1:0", "-"))
	require.Equal(t, "/var/lib/pitr", ao.cfg.DataDir, "the systemd units' StateDirectory")
}

// TestTaskUnreachablePD: one line, exit 3, within the bound.
func TestTaskUnreachablePD(t *testing.T) {
	for _, args := range [][]string{
		{"task", "status", "--pd", "127.0.0.1:1", "--timeout", "1s"},
		{"task", "start", "t", "--storage", "file://" + t.TempDir(), "--pd", "127.0.0.1:1", "--timeout", "1s"},
		{"task", "stop", "t", "--pd", "127.0.0.1:1", "--timeout", "1s"},
	} {
		began := time.Now()
		_, err := run(args...)
		requireExit(t, err, cli.ExitUnavailable, "unavailable")
		require.Less(t, time.Since(began), 8*time.Second, "%v", args)
	}
}

// TestTaskCommands drives `pitr task` and `pitr coordinator` against a
// playground: start, refusal of an owned root (exit 4), status as a table
// and as JSON, pause, stop (no safepoint left), resume of a stopped task
// (exit 4).
func TestTaskCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	pd := p.PDAddr()
	root := "file://" + t.TempDir()

	out, err := run("task", "start", "nightly", "--storage", root, "--pd", pd, "--range", "t:u", "--range", "0x6d:0x6e")
	require.NoError(t, err)
	require.Contains(t, out, "task nightly started at ts")
	sps, err := p.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	require.Contains(t, sps, "pitr-nightly")

	_, err = run("task", "start", "other", "--storage", root, "--pd", pd)
	requireExit(t, err, cli.ExitConflict, `belongs to task "nightly"`)
	_, err = run("task", "start", "nightly", "--storage", "file://"+t.TempDir(), "--pd", pd)
	requireExit(t, err, cli.ExitConflict, "already exists")
	_, err = run("task", "pause", "ghost", "--pd", pd)
	requireExit(t, err, cli.ExitFailure, "not found")

	// A coordinator publishes the status.
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := runCtx(cctx, "coordinator", "--pd", pd, "--http", "127.0.0.1:0", "--tick", "100ms", "--id", "cli-test", "--log-level", "error")
		done <- err
	}()
	var view task.TaskView
	require.Eventually(t, func() bool {
		out, err := run("task", "status", "nightly", "--pd", pd, "--json")
		require.NoError(t, err)
		view = task.TaskView{}
		require.NoError(t, json.Unmarshal([]byte(out), &view))
		return view.Status != nil
	}, 20*time.Second, 100*time.Millisecond)
	require.Equal(t, "running", view.State)
	require.Equal(t, "cli-test", view.Status.Leader)
	require.Len(t, view.Ranges, 2)
	require.Positive(t, view.Status.UncoveredRanges, "no agents: the ranges are holes")
	require.Equal(t, "uncovered", view.Status.Slowest[0].Cause)

	out, err = run("task", "status", "--pd", pd)
	require.NoError(t, err)
	require.Contains(t, out, "NAME")
	require.Contains(t, out, "nightly")
	// The leader's first maintenance pass measured the task's root.
	require.Eventually(t, func() bool {
		out, err := run("task", "status", "nightly", "--pd", pd, "--json")
		require.NoError(t, err)
		view = task.TaskView{}
		require.NoError(t, json.Unmarshal([]byte(out), &view))
		return view.Status != nil && view.Status.Storage != nil
	}, 20*time.Second, 100*time.Millisecond)
	require.Positive(t, view.Status.Storage.Objects, "pitr.lock and task.pb at least")
	out, err = run("task", "status", "nightly", "--pd", pd)
	require.NoError(t, err)
	require.Contains(t, out, "Slowest:")
	require.Contains(t, out, "Storage used:")
	require.Contains(t, out, "Restorable:")
	require.Contains(t, out, `["m", "n")`)
	out, err = run("task", "status", "--pd", pd, "--json")
	require.NoError(t, err)
	var all []task.TaskView
	require.NoError(t, json.Unmarshal([]byte(out), &all))
	require.Len(t, all, 1)

	out, err = run("task", "pause", "nightly", "--pd", pd)
	require.NoError(t, err)
	require.Contains(t, out, "paused")
	out, err = run("task", "pause", "nightly", "--pd", pd)
	require.NoError(t, err)
	require.Contains(t, out, "already paused")
	out, err = run("task", "resume", "nightly", "--pd", pd)
	require.NoError(t, err)
	require.Contains(t, out, "resumed")
	out, err = run("task", "stop", "nightly", "--pd", pd)
	require.NoError(t, err)
	require.Contains(t, out, "stopped")
	sps, err = p.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	require.NotContains(t, sps, "pitr-nightly")
	_, err = run("task", "resume", "nightly", "--pd", pd)
	requireExit(t, err, cli.ExitConflict, "is stopped")

	ccancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("coordinator did not stop")
	}
	sps, err = p.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	require.NotContains(t, sps, "pitr-nightly")
}

// TestTaskTLS: against a playground serving TLS (client certificates
// required, as TiKV and PD with security configured), the task commands
// work with --ca/--cert/--key; without them they are refused with one
// line and exit 3; a half-given set is a usage error.
func TestTaskTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1, TLSDir: t.TempDir()})
	require.NoError(t, err)
	defer p.Close()
	pd, files := p.PDAddr(), p.ClientTLS()
	tlsArgs := []string{"--ca", files.CA, "--cert", files.Cert, "--key", files.Key}

	out, err := run(append([]string{"task", "start", "secure", "--storage", "file://" + t.TempDir(), "--pd", pd}, tlsArgs...)...)
	require.NoError(t, err)
	require.Contains(t, out, "task secure started at ts")
	out, err = run(append([]string{"task", "status", "secure", "--pd", pd}, tlsArgs...)...)
	require.NoError(t, err)
	require.Contains(t, out, "secure")

	began := time.Now()
	_, err = run("task", "status", "--pd", pd, "--timeout", "2s")
	requireExit(t, err, cli.ExitUnavailable, "unavailable")
	require.Less(t, time.Since(began), 10*time.Second)
	_, err = run("task", "status", "--pd", pd, "--cert", files.Cert, "--key", files.Key)
	requireExit(t, err, cli.ExitUsage, "--ca is required")
	_, err = run("task", "status", "--pd", pd, "--ca", files.CA, "--cert", files.Cert)
	requireExit(t, err, cli.ExitUsage, "go together")
}
