package playground

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
)

func pdClient(t *testing.T, addr string) pd.Client {
	t.Helper()
	cli, err := pd.NewClientWithContext(context.Background(), caller.Component("playground-test"), []string{addr}, pd.SecurityOption{},
		opt.WithInitMetricsOption(false), opt.WithCustomTimeoutOption(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(cli.Close)
	return cli
}

// TestTiKVVersionReachesPD: every store reports the configured version in
// metapb.Store.Version, where clients read it.
func TestTiKVVersionReachesPD(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 2, GCInterval: -1, TiKVVersion: "7.1"})
	require.NoError(t, err)
	defer p.Close()
	cli := pdClient(t, p.PDAddr())
	stores, err := cli.GetAllStores(ctx)
	require.NoError(t, err)
	require.Len(t, stores, 2)
	for _, s := range stores {
		require.Equal(t, "7.1.0", s.GetVersion())
	}
	s, err := cli.GetStore(ctx, stores[0].GetId())
	require.NoError(t, err)
	require.Equal(t, "7.1.0", s.GetVersion())
}

// TestRestartPDForgetsLeaders: after a PD restart, regions have no leader
// in PD until their leaders heartbeat (a topology change of the region, or
// PDLeaderDelay); data in etcd survives.
func TestRestartPDForgetsLeaders(t *testing.T) {
	ctx := context.Background()
	// Long enough that the client's reconnect on a loaded machine (CI runs
	// packages in parallel) still finds PD without leaders.
	const delay = 8 * time.Second
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1, PDLeaderDelay: delay})
	require.NoError(t, err)
	defer p.Close()
	_, err = p.Cluster.Split([]byte("m"))
	require.NoError(t, err)
	_, err = p.PD.Etcd().Put(ctx, "/pitr/test", "kept")
	require.NoError(t, err)
	before, err := p.TS(ctx)
	require.NoError(t, err)
	cli := pdClient(t, p.PDAddr())
	r, err := cli.GetRegion(ctx, []byte{})
	require.NoError(t, err)
	require.NotNil(t, r.Leader)

	require.NoError(t, p.RestartPD(ctx))
	restarted := time.Now()
	after, err := p.TS(ctx)
	require.NoError(t, err)
	require.Greater(t, after, before)
	got, err := p.PD.Etcd().Get(ctx, "/pitr/test")
	require.NoError(t, err)
	require.Len(t, got.Kvs, 1)

	// The client reconnects on its own; every region is leaderless.
	var regions int
	require.Eventually(t, func() bool {
		rs, err := cli.ScanRegions(ctx, []byte{}, nil, 10)
		if err != nil {
			return false
		}
		regions = len(rs)
		if time.Since(restarted) < delay {
			for _, r := range rs {
				require.Zero(t, r.Leader.GetStoreId(), "leader of region %d right after the restart", r.Meta.GetId())
			}
		}
		return true
	}, 10*time.Second, 50*time.Millisecond)
	if time.Since(restarted) >= delay {
		t.Skip("the PD client took longer than the leader delay to reconnect; nothing left to check")
	}
	require.Equal(t, 2, regions)
	// A leader change is a heartbeat: that region's leader is known again.
	right := p.Cluster.LocateRaw([]byte("x"))
	var to uint64
	for _, pr := range right.Peers {
		if pr.StoreId != right.Leader {
			to = pr.StoreId
		}
	}
	require.NoError(t, p.Cluster.TransferLeader(right.ID, to))
	r, err = cli.GetRegion(ctx, right.StartKey)
	require.NoError(t, err)
	require.Equal(t, to, r.Leader.GetStoreId())
	left, err := cli.GetRegion(ctx, []byte{})
	require.NoError(t, err)
	require.Nil(t, left.Leader)
	// After the delay every leader is back.
	require.Eventually(t, func() bool {
		r, err := cli.GetRegion(ctx, []byte{})
		return err == nil && r.Leader != nil
	}, 10*time.Second, 50*time.Millisecond)
}

// TestCtlMovePeer: POST /move-peer adds the new peer and removes the old
// one, conf_ver +1 for each.
func TestCtlMovePeer(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 4, Replicas: 3, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	r := p.Cluster.Regions()[0]
	require.Len(t, r.Peers, 3)
	from := r.Leader
	code, body := ctlDo(t, p, http.MethodPost, "/move-peer", map[string]uint64{"region_id": r.ID, "from_store": from, "to_store": 4})
	require.Equal(t, http.StatusOK, code, "%s", body)
	var ri RegionInfo
	require.NoError(t, json.Unmarshal(body, &ri))
	require.Equal(t, r.Epoch.ConfVer+2, ri.EpochConfVer)
	require.Equal(t, r.Epoch.Version, ri.EpochVersion)
	require.NotContains(t, ri.Stores, from)
	require.Contains(t, ri.Stores, uint64(4))
	require.NotEqual(t, from, ri.Leader, "the leader moved off the removed store first")
	code, body = ctlDo(t, p, http.MethodPost, "/move-peer", map[string]uint64{"region_id": r.ID, "from_store": from, "to_store": 4})
	require.Equal(t, http.StatusBadRequest, code, "%s", body)
}
