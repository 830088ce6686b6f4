package cdc_test

import (
	"context"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground"
)

// TestPlaygroundEndToEnd runs the service as the playground wires it: PD's
// TSO, the store servers, a store stopping and starting again.
func TestPlaygroundEndToEnd(t *testing.T) {
	ctx := context.Background()
	p, err := playground.Start(ctx, playground.Config{MinTSInterval: 50 * time.Millisecond, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	h := &harness{t: t, cl: p.Cluster, eng: p.Engine, tso: p.PD, addrs: p.StoreAddrs(), kv: map[uint64]tikvpb.TikvClient{}}
	for id, addr := range h.addrs {
		h.kv[id] = tikvpb.NewTikvClient(dialStore(t, addr, false))
	}
	r := h.region("a")
	f := openFeed(t, h.addrs[r.Leader], feedOpts{version: "8.5.0", clusterID: p.Cluster.ID()})
	f.register(r, 1, h.ts())
	f.initializedRows(subID{1, r.ID})
	s, c := h.txn(put("a", []byte("v")))
	requireRows(t, []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "a", s, 0, []byte("v"), nil},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "a", s, c, []byte("v"), nil},
	}, f.nextRows(subID{1, r.ID}, 2))
	f.until(func() bool { return f.resolved[subID{0, r.ID}] > c })

	// The leader's store stops: its streams break; the new leader serves.
	require.NoError(t, p.StopStore(r.Leader))
	require.Equal(t, codes.Unavailable, status.Code(f.streamErr()))
	nr := h.region("a")
	require.NotEqual(t, r.Leader, nr.Leader)
	g := openFeed(t, h.addrs[nr.Leader], feedOpts{version: "8.5.0", clusterID: p.Cluster.ID()})
	g.register(nr, 1, s-1)
	requireRows(t, []wantRow{
		{cdcpb.Event_COMMITTED, cdcpb.Event_Row_PUT, "a", s, c, []byte("v"), nil},
	}, g.initializedRows(subID{1, nr.ID}))

	// Back up on its old address, the store serves CDC again.
	require.NoError(t, p.StartStore(r.Leader))
	require.NoError(t, p.Cluster.TransferLeader(nr.ID, r.Leader))
	e, _ := g.errorOf(subID{1, nr.ID})
	require.NotNil(t, e.NotLeader, "%v", e)
	addr := p.StoreAddrs()[r.Leader]
	k := openFeed(t, addr, feedOpts{version: "8.5.0", clusterID: p.Cluster.ID()})
	k.register(h.region("a"), 1, s-1)
	require.Len(t, k.initializedRows(subID{1, nr.ID}), 1)
}
