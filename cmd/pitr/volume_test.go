package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/cmd/internal/cli"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/volsnap"
	"github.com/pitr-io/pitr/volume/awsebs/ec2test"
)

// TestVolumeCommands runs the volume commands as an operator would on the
// playground: backup volume (local provider) of a cluster that holds data,
// backup status and verify --volume list and check it, then a new cluster
// from PD alone: restore volume --prepare, the stores started on its
// volumes, and restore volume, which recovers the cluster to the resolved
// ts (the root has no log). The new cluster reads what the source read
// there, key for key.
func TestVolumeCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srcDir := filepath.Join(t.TempDir(), "source")
	p, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: srcDir, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	pd := p.PDAddr()
	kv, err := connector.KV(ctx, connector.Config{PDAddrs: []string{pd}})
	require.NoError(t, err)
	defer kv.Close()
	txn, err := kv.Begin()
	require.NoError(t, err)
	for i := range 500 {
		require.NoError(t, txn.Set(fmt.Appendf(nil, "v/%04d", i), fmt.Appendf(nil, "value-%d", i)))
	}
	require.NoError(t, txn.Commit(ctx))
	_, err = p.Cluster.Split([]byte("v/0250"))
	require.NoError(t, err)

	root := "file://" + t.TempDir()
	provRoot := filepath.Join(filepath.Dir(srcDir), "provider")
	volumes := filepath.Join(srcDir, playground.VolumesFileName)
	out, err := run("backup", "volume", "--storage", root, "--pd", pd, "--provider", "local", "--local-root", provRoot,
		"--volume-file", volumes, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "3 stores, 6 snapshots (local")

	out, err = run("backup", "status", "--storage", root, "--json")
	require.NoError(t, err)
	var views []snapshotView
	require.NoError(t, json.Unmarshal([]byte(out), &views))
	require.Len(t, views, 1)
	require.Equal(t, "volume", views[0].Kind)
	require.Equal(t, "finished", views[0].State)
	require.Equal(t, 6, views[0].Snapshots)
	B := views[0].BackupTS
	want, err := testkit.ReadAll(kv, B)
	require.NoError(t, err)
	require.Len(t, want, 500)

	// Verify: a root of its own has no log; with the provider, every
	// snapshot is asked for.
	out, err = run("verify", "--storage", root, "--volume", "--provider", "local", "--local-root", provRoot, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "6 volume snapshots are completed")

	// The new cluster: PD alone, as TiDB Operator holds the stores back.
	dst, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: filepath.Join(t.TempDir(), "target"), DeferStores: true, GCInterval: -1})
	require.NoError(t, err)
	defer dst.Close()
	tpd := dst.PDAddr()
	_, err = run("restore", "volume", "--storage", root, "--pd", tpd, "--to", fmt.Sprint(B), "--no-progress")
	requireExit(t, err, cli.ExitConflict, "not marked snapshot-recovering")

	prepared := filepath.Join(t.TempDir(), "restore-volumes.json")
	out, err = run("restore", "volume", "--prepare", "--storage", root, "--pd", tpd, "--to", fmt.Sprint(B), "--provider", "local",
		"--local-root", provRoot, "--output", prepared, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "prepared 6 volumes of 3 stores")
	vf, err := volsnap.ReadVolumeFile(prepared)
	require.NoError(t, err)
	require.Equal(t, B, vf.ClusterInfo.ResolvedTS)
	for _, s := range vf.TiKV.Stores {
		for _, v := range s.Volumes {
			require.DirExists(t, v.RestoreVolumeID)
		}
	}
	require.NoError(t, dst.StartStoresFromVolumes(ctx, prepared))

	_, err = run("restore", "volume", "--storage", root, "--pd", tpd, "--to", fmt.Sprint(B+1), "--volume-file", prepared, "--no-progress")
	requireExit(t, err, cli.ExitOutOfRange, "the only restore point is its resolved ts")
	out, err = run("restore", "volume", "--storage", root, "--pd", tpd, "--to", fmt.Sprint(B), "--volume-file", prepared, "--no-progress")
	require.NoError(t, err)
	require.Contains(t, out, "recovered 3 stores")
	require.Contains(t, out, "no log in")
	// PD allocates above every id the restored stores hold (base-alloc-id),
	// so a new region or peer cannot take one of theirs.
	next, err := dst.Cluster.AllocID()
	require.NoError(t, err)
	for _, r := range dst.Cluster.Regions() {
		require.Greater(t, next, r.ID, "region %d", r.ID)
		for _, pr := range r.Peers {
			require.Greater(t, next, pr.GetId(), "peer %d of region %d", pr.GetId(), r.ID)
		}
	}
	// A rerun finds the recovery done.
	out, err = run("restore", "volume", "--storage", root, "--pd", tpd, "--to", fmt.Sprint(B), "--volume-file", prepared, "--no-progress")
	require.NoError(t, err)
	require.NotContains(t, out, "recovered 3 stores")

	tkv, err := connector.KV(ctx, connector.Config{PDAddrs: []string{tpd}})
	require.NoError(t, err)
	defer tkv.Close()
	ts, err := dst.TS(ctx)
	require.NoError(t, err)
	got, err := testkit.ReadAll(tkv, ts)
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// TestVolumeBackupErrors: bad input and provider failures are one line
// with their documented exit status.
func TestVolumeBackupErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "cluster")
	p, err := playground.Start(ctx, playground.Config{Stores: 2, Dir: dir, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	pd := p.PDAddr()
	volumes := filepath.Join(dir, playground.VolumesFileName)
	root := "file://" + t.TempDir()

	_, err = run("backup", "volume", "--storage", root, "--pd", pd, "--volume-file", volumes)
	requireExit(t, err, cli.ExitUsage, "--provider is required")
	_, err = run("backup", "volume", "--storage", root, "--pd", pd, "--volume-file", volumes, "--provider", "gce")
	requireExit(t, err, cli.ExitUsage, `--provider "gce"`)
	_, err = run("backup", "volume", "--storage", root, "--pd", pd, "--volume-file", volumes, "--provider", "local")
	requireExit(t, err, cli.ExitUsage, "needs --local-root")

	// A volume file that misses a store of the cluster.
	vf, err := volsnap.ReadVolumeFile(volumes)
	require.NoError(t, err)
	vf.TiKV.Stores = vf.TiKV.Stores[:1]
	short := filepath.Join(t.TempDir(), "short.json")
	require.NoError(t, volsnap.WriteVolumeFile(short, vf))
	_, err = run("backup", "volume", "--storage", root, "--pd", pd, "--volume-file", short, "--provider", "local", "--local-root", t.TempDir(), "--no-progress")
	requireExit(t, err, cli.ExitUsage, "does not name store")

	// aws-ebs against the EC2 test server: each store is an instance
	// with a data and a raft volume.
	srv := ec2test.New(t, ec2test.Options{})
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ebs := volsnap.VolumeFile{}
	for _, s := range p.Cluster.Stores() {
		inst := fmt.Sprintf("i-%d", s.ID)
		data, raft := fmt.Sprintf("vol-data-%d", s.ID), fmt.Sprintf("vol-raft-%d", s.ID)
		srv.AddInstance(inst, "us-east-1a", 100, fmt.Sprintf("vol-root-%d", s.ID), data, raft)
		ebs.TiKV.Stores = append(ebs.TiKV.Stores, volsnap.FileStore{StoreID: s.ID, Instance: inst, Volumes: []volsnap.FileVolume{
			{ID: data, Type: "storage.data-dir", Zone: "us-east-1a"}, {ID: raft, Type: "raft-engine.dir", Zone: "us-east-1a"}}})
	}
	ebsFile := filepath.Join(t.TempDir(), "ebs.json")
	require.NoError(t, volsnap.WriteVolumeFile(ebsFile, &ebs))
	backup := func(root string) (string, error) {
		return run("backup", "volume", "--storage", root, "--pd", pd, "--volume-file", ebsFile, "--provider", "aws-ebs",
			"--aws-endpoint", srv.URL, "--no-progress")
	}
	srv.FailCalls("CreateSnapshots", 1, 403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
	_, err = backup("file://" + t.TempDir())
	requireExit(t, err, cli.ExitFailure, "aws-ebs: CreateSnapshots i-")
	require.Contains(t, err.Error(), "UnauthorizedOperation: You are not authorized")

	srv.FailNextSnapshot("vol-raft-1", "the volume's snapshot could not be completed")
	_, err = backup("file://" + t.TempDir())
	requireExit(t, err, cli.ExitFailure, "the volume's snapshot could not be completed")

	srv.Throttle("CreateSnapshots", 2)
	out, err := backup("file://" + t.TempDir())
	require.NoError(t, err, "throttling twice is retried")
	require.Contains(t, out, "2 stores, 4 snapshots (aws-ebs")
}
