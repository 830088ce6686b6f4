package agent

import (
	"context"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
)

func TestStoresOnHost(t *testing.T) {
	stores := []*metapb.Store{
		{Id: 1, Address: "10.0.0.5:20160"},
		{Id: 2, Address: "basic-tikv-1.basic-tikv-peer.tidb.svc:20160"},
		{Id: 3, Address: "Host-C:20160"},
		{Id: 4, Address: "[fd00::7]:20160"},
		{Id: 5, Address: "not an address"},
	}
	ids := func(names ...string) []uint64 {
		var out []uint64
		for _, s := range storesOnHost(context.Background(), stores, names) {
			out = append(out, s.GetId())
		}
		return out
	}
	require.Equal(t, []uint64{1}, ids("10.0.0.5", "myhost"), "an interface address")
	require.Equal(t, []uint64{2}, ids("basic-tikv-1", "10.1.1.1"), "a StatefulSet pod's name is the first label of its store's DNS name")
	require.Equal(t, []uint64{2}, ids("basic-tikv-1.basic-tikv-peer.tidb.svc.cluster.local"), "the pod's FQDN")
	require.Equal(t, []uint64{3}, ids("host-c"), "names compare case-insensitively")
	require.Equal(t, []uint64{4}, ids("fd00:0::7"), "IPv6 in any spelling")
	require.Empty(t, ids("basic-tikv-10", "10.0.0.50"), "no prefix matches")
	require.Equal(t, []uint64{1, 3}, ids("10.0.0.5", "host-c"))
}

// TestTiKVAuto: with --tikv auto the agent finds the one store on its host
// and dials it; several stores on one host is an error naming them, none is
// an error naming the host.
func TestTiKVAuto(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	one, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer one.Close()
	cfg := Config{PDAddrs: []string{one.PDAddr()}, TiKVAddr: TiKVAuto, LocalNames: []string{"127.0.0.1"},
		ListenAddr: "127.0.0.1:0", HTTPAddr: "-", DataDir: t.TempDir(), ConnectTimeout: 3 * time.Second}
	a, err := New(cfg)
	require.NoError(t, err)
	require.EqualValues(t, 1, a.StoreID())
	require.Equal(t, one.StoreAddrs()[1], a.cfg.TiKVAddr)
	require.NoError(t, a.Close())

	cfg.LocalNames = []string{"192.0.2.1", "elsewhere"}
	_, err = New(cfg)
	require.ErrorIs(t, err, ErrStoreNotFound)
	require.Contains(t, err.Error(), "no store of PD's is on this host (this host: 192.0.2.1, elsewhere")

	three, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	defer three.Close()
	cfg.PDAddrs, cfg.LocalNames = []string{three.PDAddr()}, []string{"127.0.0.1"}
	_, err = New(cfg)
	require.ErrorIs(t, err, ErrStoreNotFound)
	require.Contains(t, err.Error(), "3 stores are on this host")
}
