package playground

import (
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// TestBuildRecoveredRefuses: WaitApply's build refuses a leader plan that
// would lose or duplicate data, naming the region.
func TestBuildRecoveredRefuses(t *testing.T) {
	k := func(s string) []byte { return cluster.EncodeKey([]byte(s)) }
	// Store 1 and 2 both hold region 10 [-inf, m) and 11 [m, +inf); store
	// 2 also holds region 12 [m, t) of a split store 1 did not see.
	metas := map[uint64][]cluster.PeerRegion{
		1: {{RegionID: 10, PeerID: 101, EndKey: k("m"), Version: 2}, {RegionID: 11, PeerID: 111, StartKey: k("m"), Version: 2}},
		2: {{RegionID: 10, PeerID: 102, EndKey: k("m"), Version: 2}, {RegionID: 11, PeerID: 112, StartKey: k("t"), Version: 3},
			{RegionID: 12, PeerID: 122, StartKey: k("m"), EndKey: k("t"), Version: 3}},
	}
	cases := []struct {
		name    string
		leaders map[uint64][]uint64 // store -> regions it is told to lead
		err     string
	}{
		{"ok", map[uint64][]uint64{1: {10}, 2: {11, 12}}, ""},
		{"elected twice", map[uint64][]uint64{1: {10}, 2: {10, 11, 12}}, "region 10: stores 1 and 2 were both elected leader"},
		{"no leader and not covered", map[uint64][]uint64{2: {11, 12}}, "region 10 [, 6d00000000000000f8) has no leader elected"},
		{"overlap", map[uint64][]uint64{1: {10, 11}, 2: {12}}, "overlap: BR's leader selection must keep only the newer one"},
		{"gap", map[uint64][]uint64{1: {10}, 2: {11}}, "region 12 [6d00000000000000f8, 7400000000000000f8) has no leader elected and no elected region covers it"},
		{"nothing elected", nil, "has no leader elected"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := cluster.Open("", 1, 2)
			require.NoError(t, err)
			require.NoError(t, cl.BeginRecovery([]uint64{1, 2}, nil))
			eng, err := mvcc.Open("", nil)
			require.NoError(t, err)
			defer eng.Close()
			p := &Playground{Cluster: cl, Engine: eng, log: hclog.NewNullLogger()}
			rec := &recovery{stores: map[uint64]*recoveringStore{}}
			for id, m := range metas {
				copyEng, err := mvcc.Open("", nil)
				require.NoError(t, err)
				st := &recoveringStore{id: id, eng: copyEng, meta: &cluster.RegionMetaFile{StoreID: id, Regions: m}, leaders: map[uint64]bool{}}
				for _, r := range tc.leaders[id] {
					st.leaders[r] = true
				}
				rec.stores[id] = st
			}
			err = p.buildRecovered(rec)
			if tc.err == "" {
				require.NoError(t, err)
				require.Len(t, cl.Regions(), 3)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}
