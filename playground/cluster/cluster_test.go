package cluster

import (
	"testing"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/stretchr/testify/require"
)

func ctxFor(r *Region, store uint64) *kvrpcpb.Context {
	ep := r.Epoch
	return &kvrpcpb.Context{RegionId: r.ID, RegionEpoch: &ep, Peer: r.PeerOn(store)}
}

func TestSplitMergeTransfer(t *testing.T) {
	c, err := Open("", 7, 3)
	require.NoError(t, err)
	require.Len(t, c.Stores(), 3)
	var events []Event
	cancel := c.Watch(func(ev Event) { events = append(events, ev) })
	defer cancel()

	orig := c.Regions()[0]
	rs, err := c.Split([]byte("m"))
	require.NoError(t, err)
	require.Len(t, rs, 2)
	left, right := rs[0], rs[1]
	require.Equal(t, orig.ID, right.ID, "right-derive: the original id keeps the right half")
	require.NotEqual(t, orig.ID, left.ID)
	require.Equal(t, orig.Epoch.Version+1, left.Epoch.Version)
	require.Equal(t, orig.Epoch.Version+1, right.Epoch.Version)
	require.True(t, left.ContainsRaw([]byte("a")))
	require.False(t, left.ContainsRaw([]byte("m")))
	require.True(t, right.ContainsRaw([]byte("m")))
	require.Equal(t, EventSplit, events[0].Kind)

	_, err = c.Split([]byte("m"))
	require.ErrorIs(t, err, ErrBadSplitKey, "splitting at a boundary")

	require.NoError(t, c.TransferLeader(right.ID, 2))
	require.Equal(t, uint64(2), c.LocateRaw([]byte("z")).Leader)
	require.Equal(t, EventLeaderChange, events[1].Kind)

	merged, err := c.Merge(left.ID, right.ID)
	require.NoError(t, err)
	require.Equal(t, right.ID, merged.ID)
	require.Empty(t, merged.StartKey)
	require.Empty(t, merged.EndKey)
	require.Equal(t, right.Epoch.Version+1, merged.Epoch.Version)
	require.Len(t, c.Regions(), 1)
	_, err = c.RegionByID(left.ID)
	require.ErrorIs(t, err, ErrRegionNotFound)
}

func TestCheckRegionErrors(t *testing.T) {
	c, err := Open("", 7, 3)
	require.NoError(t, err)
	r := c.Regions()[0]
	leader := r.Leader
	rs, err := c.Split([]byte("m"))
	require.NoError(t, err)
	right := rs[1]

	// Stale epoch: EpochNotMatch carrying the regions that now cover it.
	e := c.Check(leader, ctxFor(r, leader), []byte("x"))
	require.NotNil(t, e.GetEpochNotMatch())
	require.Len(t, e.GetEpochNotMatch().CurrentRegions, 2)

	// Not leader, with a hint.
	other := right.Peers[1].StoreId
	e = c.Check(other, ctxFor(right, other), []byte("x"))
	require.NotNil(t, e.GetNotLeader())
	require.Equal(t, leader, e.GetNotLeader().GetLeader().GetStoreId())

	// Key outside the region.
	e = c.Check(leader, ctxFor(right, leader), []byte("a"))
	require.NotNil(t, e.GetKeyNotInRegion())

	// Unknown region.
	e = c.Check(leader, &kvrpcpb.Context{RegionId: 999, RegionEpoch: &metapb.RegionEpoch{}})
	require.NotNil(t, e.GetRegionNotFound())

	// Request meant for another store.
	e = c.Check(other, ctxFor(right, leader), []byte("x"))
	require.NotNil(t, e.GetStoreNotMatch())

	require.Nil(t, c.Check(leader, ctxFor(right, leader), []byte("x")))
}

func TestStoreDownMovesLeaders(t *testing.T) {
	c, err := Open("", 7, 3)
	require.NoError(t, err)
	r := c.Regions()[0]
	var kinds []EventKind
	c.Watch(func(ev Event) { kinds = append(kinds, ev.Kind) })
	require.NoError(t, c.SetStoreUp(r.Leader, false, 0))
	now := c.Regions()[0]
	require.NotEqual(t, r.Leader, now.Leader)
	require.NotZero(t, now.Leader)
	require.Equal(t, []EventKind{EventStoreDown, EventLeaderChange}, kinds)
	require.ErrorIs(t, c.TransferLeader(now.ID, r.Leader), ErrStoreDown)
	require.NoError(t, c.SetStoreUp(r.Leader, true, 1))
	require.NoError(t, c.TransferLeader(now.ID, r.Leader))
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 7, 2)
	require.NoError(t, err)
	_, err = c.Split([]byte("k"))
	require.NoError(t, err)
	require.NoError(t, c.SetStoreAddr(1, "127.0.0.1:1234"))
	id, err := c.AllocID()
	require.NoError(t, err)

	c2, err := Open(dir, 99, 5)
	require.NoError(t, err)
	require.Equal(t, uint64(7), c2.ID(), "a reopened cluster keeps its id")
	require.Equal(t, c.Regions(), c2.Regions())
	require.Len(t, c2.Stores(), 2)
	s, err := c2.Store(1)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:1234", s.Addr)
	id2, err := c2.AllocID()
	require.NoError(t, err)
	require.Greater(t, id2, id, "ids never repeat across restarts")
}

func TestScanAndPrev(t *testing.T) {
	c, err := Open("", 7, 1)
	require.NoError(t, err)
	for _, k := range []string{"b", "d", "f"} {
		_, err := c.Split([]byte(k))
		require.NoError(t, err)
	}
	all := c.ScanRegions(nil, nil, 0)
	require.Len(t, all, 4)
	got := c.ScanRegions(EncodeKey([]byte("c")), EncodeKey([]byte("e")), 0)
	require.Len(t, got, 2)
	require.Equal(t, []byte("b"), DecodeKey(got[0].StartKey))
	require.Len(t, c.ScanRegions(nil, nil, 2), 2)
	prev := c.PrevRegion(EncodeKey([]byte("e")))
	require.Equal(t, []byte("b"), DecodeKey(prev.StartKey))
	require.Nil(t, c.PrevRegion(nil))
}
