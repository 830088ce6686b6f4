package cdc_test

import (
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBefore73EveryRequestIsRegister: TiKV v7.1 has no Deregister (its
// service.rs schedules every request as a Register) and a Conn holds one
// downstream per region, so a Deregister, or a second Register of the
// region under another request id, is answered DuplicateRequest while the
// first subscription goes on.
func TestBefore73EveryRequestIsRegister(t *testing.T) {
	h := newHarness(t, harnessOpts{version: "7.1.0"})
	r := h.region("a")
	f := h.feed("a", feedOpts{})
	k := subID{1, r.ID}
	f.register(r, k.req, 0)
	f.initializedRows(k)

	require.NoError(t, f.send(&cdcpb.ChangeDataRequest{
		Header: f.header(), RegionId: r.ID, RequestId: k.req,
		Request: &cdcpb.ChangeDataRequest_Deregister_{Deregister: &cdcpb.ChangeDataRequest_Deregister{}},
	}))
	e, _ := f.errorOf(k)
	require.NotNil(t, e.DuplicateRequest, "%v", e)
	require.Equal(t, r.ID, e.DuplicateRequest.RegionId)
	// The answer does not end the subscription: its rows keep coming
	// under the same request id.
	delete(f.failed, k)
	s, c := h.txn(put("a", []byte("after")))
	rows := f.nextRows(k, 2)
	requireRows(t, []wantRow{
		{cdcpb.Event_PREWRITE, cdcpb.Event_Row_PUT, "a", s, 0, []byte("after"), nil},
		{cdcpb.Event_COMMIT, cdcpb.Event_Row_PUT, "a", s, c, []byte("after"), nil},
	}, rows)

	k2 := subID{2, r.ID}
	f.register(r, k2.req, 0)
	e, _ = f.errorOf(k2)
	require.NotNil(t, e.DuplicateRequest, "a second request id for the region on one stream")

	// Another stream may subscribe the region.
	g := h.feed("a", feedOpts{})
	g.register(r, 1, 0)
	g.initializedRows(k)
}

func TestBefore73NoEventFeedV2(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    codes.Code
	}{
		{"7.1.0", codes.Unimplemented},
		{"7.3.0", codes.OK},
	} {
		t.Run(tc.version, func(t *testing.T) {
			h := newHarness(t, harnessOpts{version: tc.version})
			r := h.region("a")
			f := openFeed(t, h.leaderAddr("a"), feedOpts{v2: true, version: "8.5.0", clusterID: testClusterID})
			if tc.want != codes.OK {
				require.Equal(t, tc.want, status.Code(f.streamErr()))
				return
			}
			f.register(r, 1, 0)
			f.initializedRows(subID{1, r.ID})
		})
	}
}

// TestCongestedStopsTheRegionForEveryone: the sink memory quota is
// store-wide and an overflow stops the region's delegate, so a fast
// subscriber of the region on another stream gets Congested too
// (delegate.rs sink_downstream_tidb → Endpoint::on_multi_batch →
// Deregister::Delegate → Delegate::stop), even one whose key span got no
// row at all. A region no one congested goes on.
func TestCongestedStopsTheRegionForEveryone(t *testing.T) {
	h := newHarness(t, harnessOpts{memoryQuota: 256 << 10})
	_, err := h.cl.Split([]byte("m"))
	require.NoError(t, err)
	r, other := h.region("a"), h.region("x")
	require.Equal(t, r.Leader, other.Leader)
	slow := h.feed("a", feedOpts{smallWindow: true})
	fast := h.feed("a", feedOpts{})
	k := subID{1, r.ID}
	slow.register(r, k.req, 0)
	slow.initializedRows(k)
	// The fast one watches only [b, c): the load below sends it nothing.
	req := fast.registerReq(r, k.req, 0)
	req.StartKey, req.EndKey = encodeKey("b"), encodeKey("c")
	fast.sendReq(req)
	fast.initializedRows(k)
	ko := subID{2, other.ID}
	fast.register(other, ko.req, 0)
	fast.initializedRows(ko)

	slow.pause()
	done := make(chan struct{})
	go func() {
		defer close(done)
		loadBig(h, "a", 4<<10, 1024)
	}()
	deadline := time.Now().Add(20 * time.Second)
	fast.until(func() bool {
		require.True(t, time.Now().Before(deadline), "the fast subscriber of the congested region got no error within 20s")
		return fast.log(k).err != nil
	})
	e, _ := fast.errorOf(k)
	require.NotNil(t, e.Congested, "the fast subscriber's region was stopped: %v", e)
	require.Equal(t, r.ID, e.Congested.RegionId)
	<-done
	slow.resume()
	e, _ = slow.errorOf(k)
	require.NotNil(t, e.Congested, "%v", e)

	s, c := h.txn(put("y", []byte("v")))
	rows := fast.nextRows(ko, 2)
	require.Equal(t, s, rows[0].StartTs)
	require.Equal(t, c, rows[1].CommitTs)
	// A new subscription of the congested region works again.
	fast.register(h.region("a"), 3, 0)
	fast.initializedRows(subID{3, r.ID})
}

// TestMovePeerIsNotAnError: a conf change moves conf_ver, which TiKV CDC
// ignores (delegate.rs check_epoch_on_ready: check_conf_ver false); moving
// the leader's peer moves the leader first (NotLeader); a store without a
// peer answers RegionNotFound.
func TestMovePeerIsNotAnError(t *testing.T) {
	h := newHarness(t, harnessOpts{stores: 4, replicas: 3})
	r := h.region("a")
	require.Len(t, r.Peers, 3)
	f := h.feed("a", feedOpts{})
	k := subID{1, r.ID}
	f.register(r, k.req, 0)
	f.initializedRows(k)

	follower := h.follower(r)
	require.NoError(t, h.cl.MovePeer(r.ID, follower, 4))
	moved := h.region("a")
	require.Equal(t, r.Epoch.ConfVer+2, moved.Epoch.ConfVer, "add + remove: two conf changes")
	require.Equal(t, r.Epoch.Version, moved.Epoch.Version)
	require.Nil(t, moved.PeerOn(follower))
	require.NotNil(t, moved.PeerOn(4))
	s, c := h.txn(put("a", []byte("v1")))
	rows := f.nextRows(k, 2)
	require.Equal(t, s, rows[0].StartTs)
	require.Equal(t, c, rows[1].CommitTs)

	// A Register with the old conf_ver is fine too.
	k2 := subID{2, r.ID}
	f.register(r, k2.req, 0)
	f.initializedRows(k2)

	// The removed peer's store no longer knows the region.
	g := openFeed(t, h.addrs[follower], feedOpts{version: "8.5.0", clusterID: testClusterID})
	g.register(moved, 1, 0)
	e, _ := g.errorOf(subID{1, r.ID})
	require.NotNil(t, e.RegionNotFound, "%v", e)

	// Moving the leader's peer transfers the leader first.
	require.NoError(t, h.cl.MovePeer(r.ID, r.Leader, follower))
	e, _ = f.errorOf(k)
	require.NotNil(t, e.NotLeader, "%v", e)
	now := h.region("a")
	require.NotEqual(t, r.Leader, now.Leader)
	require.Equal(t, r.Epoch.ConfVer+4, now.Epoch.ConfVer)
}
