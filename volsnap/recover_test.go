package volsnap

import (
	"testing"

	"github.com/pingcap/kvproto/pkg/metapb"
	recoverpb "github.com/pingcap/kvproto/pkg/recoverdatapb"
	"github.com/stretchr/testify/require"
)

func meta(region, peer, index, version uint64, start, end string) *recoverpb.RegionMeta {
	return &recoverpb.RegionMeta{RegionId: region, PeerId: peer, LastLogTerm: 1, LastIndex: index, CommitIndex: index, Version: version,
		StartKey: []byte(start), EndKey: []byte(end)}
}

func TestMakePlan(t *testing.T) {
	st := func(id uint64, ms ...*recoverpb.RegionMeta) storeMeta {
		return storeMeta{store: &metapb.Store{Id: id}, metas: ms}
	}
	// Store 1's copy is older: it has region 2 before its split at "m";
	// stores 2 and 3 have the split (region 2 [a, m), region 9 [m, +inf)).
	p, err := makePlan([]storeMeta{
		st(1, meta(1, 11, 100, 1, "", "a"), meta(2, 12, 100, 1, "a", "")),
		st(2, meta(1, 21, 120, 1, "", "a"), meta(2, 22, 120, 2, "a", "m"), meta(9, 29, 120, 2, "m", "")),
		st(3, meta(1, 31, 130, 1, "", "a"), meta(2, 32, 130, 2, "a", "m"), meta(9, 39, 130, 2, "m", "")),
	})
	require.NoError(t, err)
	require.Equal(t, 3, p.regions)
	require.Equal(t, 0, p.tombstoned)
	// The newest log wins: store 3 for every region.
	require.Equal(t, map[uint64]uint64{1: 3, 2: 3, 9: 3}, p.leaders)
	require.Equal(t, uint64(39), p.maxAllocID)

	// Region 2 reported by store 1 alone at the old range: a region of a
	// newer version overlaps it, so it is tombstoned.
	p, err = makePlan([]storeMeta{
		st(1, meta(1, 11, 100, 1, "", "a"), meta(5, 15, 100, 1, "a", "")),
		st(2, meta(1, 21, 100, 1, "", "a"), meta(6, 26, 100, 3, "a", "m"), meta(7, 27, 100, 3, "m", "")),
	})
	require.NoError(t, err)
	require.Equal(t, 3, p.regions)
	require.Equal(t, 1, p.tombstoned)
	require.Equal(t, []*recoverpb.RecoverRegionRequest{{RegionId: 5, Tombstone: true}}, filterTomb(p.commands[1]))
	// Equal logs: leaders spread over the stores.
	require.ElementsMatch(t, []uint64{1, 2}, []uint64{p.leaders[1], 2})

	// A hole: nobody holds [m, +inf).
	_, err = makePlan([]storeMeta{st(1, meta(1, 11, 1, 1, "", "m"))})
	require.ErrorIs(t, err, ErrRecovery)
	require.ErrorContains(t, err, "6d")
}

func filterTomb(cs []*recoverpb.RecoverRegionRequest) []*recoverpb.RecoverRegionRequest {
	var out []*recoverpb.RecoverRegionRequest
	for _, c := range cs {
		if c.Tombstone {
			out = append(out, c)
		}
	}
	return out
}
