package volsnap_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/volsnap"
	"github.com/pitr-io/pitr/volume/local"
)

// TestRecoveryRerun: a recovery that fails after the stores resolved
// their data, before PD's marker is cleared (here: recording it fails),
// leaves PD marked; rerunning the data phase runs the protocol again on
// the same stores and ends with the cluster at the resolved ts.
func TestRecoveryRerun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two playgrounds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srcDir := filepath.Join(t.TempDir(), "source")
	src, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: srcDir, GCInterval: -1})
	require.NoError(t, err)
	defer src.Close()
	cfg := connector.Config{PDAddrs: []string{src.PDAddr()}}
	kv, err := connector.KV(ctx, cfg)
	require.NoError(t, err)
	defer kv.Close()
	txn, err := kv.Begin()
	require.NoError(t, err)
	for i := range 200 {
		require.NoError(t, txn.Set(fmt.Appendf(nil, "r/%04d", i), fmt.Appendf(nil, "v%d", i)))
	}
	require.NoError(t, txn.Commit(ctx))
	_, err = src.Cluster.Split([]byte("r/0100"))
	require.NoError(t, err)
	pd, err := connector.PD(ctx, cfg)
	require.NoError(t, err)
	defer pd.Close()

	st, err := storage.Open(ctx, "file://"+t.TempDir())
	require.NoError(t, err)
	defer st.Close()
	prov, err := local.New(filepath.Join(filepath.Dir(srcDir), "provider"))
	require.NoError(t, err)
	vf, err := volsnap.ReadVolumeFile(filepath.Join(srcDir, playground.VolumesFileName))
	require.NoError(t, err)
	res, err := volsnap.Backup(ctx, volsnap.BackupOptions{Storage: st, Provider: prov, File: vf, PD: pd, PDAddrs: cfg.PDAddrs, Poll: 50 * time.Millisecond})
	require.NoError(t, err)
	want, err := testkit.ReadAll(kv, res.ResolvedTS)
	require.NoError(t, err)
	require.Len(t, want, 200)

	dst, err := playground.Start(ctx, playground.Config{Stores: 3, Dir: filepath.Join(t.TempDir(), "target"), DeferStores: true, GCInterval: -1})
	require.NoError(t, err)
	defer dst.Close()
	tcfg := connector.Config{PDAddrs: []string{dst.PDAddr()}}
	info, err := volsnap.Load(ctx, st, "")
	require.NoError(t, err)
	prepared, err := volsnap.Prepare(ctx, volsnap.PrepareOptions{Provider: prov, Backup: info, PDAddrs: tcfg.PDAddrs})
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "volumes.json")
	require.NoError(t, volsnap.WriteVolumeFile(file, prepared))
	require.NoError(t, dst.StartStoresFromVolumes(ctx, file))
	cl, err := connector.Connect(ctx, tcfg, task.Root)
	require.NoError(t, err)
	defer cl.Close()

	rec := volsnap.RecoverOptions{PD: cl.PD, PDAddrs: tcfg.PDAddrs, ResolvedTS: res.ResolvedTS, Stores: 3,
		Mark: func(context.Context) error { return errors.New("injected: etcd is down") }}
	_, err = volsnap.Recover(ctx, rec)
	require.ErrorContains(t, err, "injected")
	require.True(t, dst.Recovering(), "PD is still marked: the stores stay in recovery")

	out, err := volsnap.RestoreData(ctx, volsnap.DataOptions{Recover: volsnap.RecoverOptions{PD: cl.PD, PDAddrs: tcfg.PDAddrs},
		Etcd: cl.Etcd, Backup: info, Restore: restore.Options{Source: st, RestoreTS: res.ResolvedTS}})
	require.NoError(t, err, "the rerun recovers")
	require.NotNil(t, out.Recovered)
	tkv, err := connector.KV(ctx, tcfg)
	require.NoError(t, err)
	defer tkv.Close()
	ts, err := dst.TS(ctx)
	require.NoError(t, err)
	got, err := testkit.ReadAll(tkv, ts)
	require.NoError(t, err)
	require.Equal(t, want, got)
}
