package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
)

// TestBackupCommands: task start --with-snapshot on a cluster that holds
// data takes the base; backup status lists it; a second backup at the same
// ts, or one below the GC safepoint, is exit 4; a backup into a root of its
// own works once, and no backup's GC safepoint is left.
func TestBackupCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	pd := p.PDAddr()
	kv, err := connector.KV(ctx, connector.Config{PDAddrs: []string{pd}})
	require.NoError(t, err)
	defer kv.Close()
	txn, err := kv.Begin()
	require.NoError(t, err)
	for i := range 300 {
		require.NoError(t, txn.Set(fmt.Appendf(nil, "t/%04d", i), []byte("value")))
	}
	require.NoError(t, txn.Commit(ctx))

	root := "file://" + t.TempDir()
	out, err := run("task", "start", "base", "--storage", root, "--pd", pd, "--with-snapshot")
	require.NoError(t, err)
	require.Contains(t, out, "task base started at ts")
	require.Contains(t, out, "snapshot at ")
	require.NotContains(t, out, "needs a base snapshot")

	out, err = run("backup", "status", "--storage", root, "--json")
	require.NoError(t, err)
	var views []snapshotView
	require.NoError(t, json.Unmarshal([]byte(out), &views))
	require.Len(t, views, 1)
	require.Equal(t, "finished", views[0].State)
	require.EqualValues(t, 300, views[0].Keys)
	require.Equal(t, "base", views[0].Task)

	_, err = run("backup", "full", "--storage", root, "--pd", pd, "--ts", fmt.Sprint(views[0].BackupTS), "--no-progress")
	requireExit(t, err, cli.ExitConflict, "a finished snapshot")

	own := "file://" + t.TempDir()
	out, err = run("backup", "full", "--storage", own, "--pd", pd, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "300 keys")
	_, err = run("backup", "full", "--storage", own, "--pd", pd, "--no-progress")
	requireExit(t, err, cli.ExitConflict, "already holds a finished snapshot")
	out, err = run("backup", "status", "--storage", own)
	require.NoError(t, err)
	require.Contains(t, out, "finished")

	old := views[0].BackupTS
	now, err := p.TS(ctx)
	require.NoError(t, err)
	pdc, err := connector.PD(ctx, connector.Config{PDAddrs: []string{pd}})
	require.NoError(t, err)
	defer pdc.Close()
	_, err = pdc.UpdateGCSafePoint(ctx, now)
	require.NoError(t, err)
	_, err = run("backup", "full", "--storage", "file://"+t.TempDir(), "--pd", pd, "--ts", fmt.Sprint(old), "--no-progress")
	requireExit(t, err, cli.ExitConflict, "below the cluster's GC safepoint")

	sps, err := p.PD.ServiceSafePoints(ctx)
	require.NoError(t, err)
	for id := range sps {
		require.False(t, strings.HasPrefix(id, "pitr-backup-"), "left behind: %s", id)
	}
}
