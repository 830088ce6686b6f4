package playground

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

func regionIDs(t *testing.T, dir string, store uint64) map[uint64]cluster.PeerRegion {
	t.Helper()
	f, err := cluster.ReadRegionMeta(cluster.StoreRaftDir(dir, store))
	require.NoError(t, err)
	require.Equal(t, store, f.StoreID)
	out := map[uint64]cluster.PeerRegion{}
	for _, r := range f.Regions {
		out[r.RegionID] = r
	}
	return out
}

// TestVolumeLayout: every store's raft volume lists its regions and is
// rewritten on a split and a peer move; volumes.json and GET /volumes
// name both volumes of every store.
func TestVolumeLayout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := Start(ctx, Config{Dir: dir, Stores: 4, Replicas: 3, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()

	first := p.Cluster.Regions()[0]
	for _, s := range []uint64{1, 2, 3} {
		rs := regionIDs(t, dir, s)
		require.Len(t, rs, 1)
		require.Equal(t, first.PeerOn(s).Id, rs[first.ID].PeerID)
		require.Equal(t, first.Epoch.Version, rs[first.ID].Version)
	}
	require.Empty(t, regionIDs(t, dir, 4), "store 4 holds no peer yet")

	halves, err := p.Cluster.Split([]byte("m"))
	require.NoError(t, err)
	for _, s := range []uint64{1, 2, 3} {
		rs := regionIDs(t, dir, s)
		require.Len(t, rs, 2, "store %d after the split", s)
		require.Equal(t, cluster.EncodeKey([]byte("m")), rs[halves[0].ID].EndKey)
		require.Equal(t, cluster.EncodeKey([]byte("m")), rs[halves[1].ID].StartKey)
		require.Equal(t, halves[1].Epoch.Version, rs[halves[1].ID].Version)
	}
	require.NoError(t, p.Cluster.MovePeer(halves[1].ID, 1, 4))
	require.Len(t, regionIDs(t, dir, 1), 1, "the moved peer left store 1")
	moved := regionIDs(t, dir, 4)
	require.Len(t, moved, 1)
	require.EqualValues(t, halves[1].Epoch.ConfVer+2, moved[halves[1].ID].ConfVer)
	ents, err := os.ReadDir(cluster.StoreRaftDir(dir, 1))
	require.NoError(t, err)
	require.Len(t, ents, 1, "no temp file is left behind")

	abs, err := filepath.Abs(dir)
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir, VolumesFileName))
	require.NoError(t, err)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	tikv := raw["tikv"].(map[string]any)
	require.EqualValues(t, 3, tikv["replicas"])
	stores := tikv["stores"].([]any)
	require.Len(t, stores, 4)
	s1 := stores[0].(map[string]any)
	require.EqualValues(t, 1, s1["store_id"])
	require.Equal(t, []any{
		map[string]any{"volume_id": filepath.Join(abs, "data"), "type": "storage.data-dir", "mount_path": "/var/lib/tikv/data"},
		map[string]any{"volume_id": filepath.Join(abs, "stores", "1"), "type": "raft-engine.dir", "mount_path": "/var/lib/tikv/raft"},
	}, s1["volumes"])

	code, body := ctlDo(t, p, "GET", "/volumes", nil)
	require.Equal(t, http.StatusOK, code, string(body))
	var served VolumesFile
	require.NoError(t, json.Unmarshal(body, &served))
	var file VolumesFile
	require.NoError(t, json.Unmarshal(b, &file))
	require.Equal(t, file, served)
}

func TestVolumesWithoutDir(t *testing.T) {
	p, err := Start(context.Background(), Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	code, _ := ctlDo(t, p, "GET", "/volumes", nil)
	require.Equal(t, http.StatusNotFound, code)
}

// TestMinResolvedTSReports: PD's min resolved ts, fed by the stores'
// reports, stays at or below a held lock's start ts and advances past it
// once the lock is gone.
func TestMinResolvedTSReports(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1, MinResolvedTSInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	_, err = p.Cluster.Split([]byte("m"))
	require.NoError(t, err)
	regions := p.Cluster.Regions()
	require.NoError(t, p.Cluster.TransferLeader(regions[1].ID, 2))

	p.ReportMinResolvedTS(ctx)
	before := p.pd().MinResolvedTS()
	require.NotZero(t, before, "every store reported")

	lockTS, err := p.TS(ctx)
	require.NoError(t, err)
	_, err = p.Engine.Prewrite(mvcc.PrewriteArgs{StartTS: lockTS, Primary: []byte("x"), LockTTL: 60_000,
		Mutations: []mvcc.Mutation{{Op: mvcc.OpPut, Key: []byte("x"), Value: []byte("v")}}})
	require.NoError(t, err)
	for range 3 {
		p.ReportMinResolvedTS(ctx)
		got := p.pd().MinResolvedTS()
		require.LessOrEqual(t, got, lockTS, "never above the start ts of a held lock")
		require.GreaterOrEqual(t, got, before, "never backwards")
	}
	require.NoError(t, p.Engine.BatchRollback([][]byte{[]byte("x")}, lockTS))
	require.Eventually(t, func() bool {
		p.ReportMinResolvedTS(ctx)
		return p.pd().MinResolvedTS() > lockTS
	}, 5*time.Second, 10*time.Millisecond, "advances once no lock holds it")
}

func jsonMarshalIndent(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
