package logfile

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// simRegion is a region as a simulated agent sees it.
type simRegion struct {
	id, ver    uint64
	start, end []byte
	from, res  uint64 // stored checkpoint, resolved ts
}

// simStore drives a Chain the way agent/cut.go drives flush: each flush
// claims (from, resolved] of the regions that advanced, and advances them
// from the ToTs the chain left.
type simStore struct {
	rng     *rand.Rand
	regions []*simRegion
	nextID  uint64
	chain   Chain
	ts      uint64
}

func newSimStore(seed int64, n int) *simStore {
	s := &simStore{rng: rand.New(rand.NewSource(seed)), nextID: 1, ts: 1000}
	for i := 0; i < n; i++ {
		var start, end []byte
		if i > 0 {
			start = []byte(fmt.Sprintf("k%06d", i*100))
		}
		if i < n-1 {
			end = []byte(fmt.Sprintf("k%06d", (i+1)*100))
		}
		s.regions = append(s.regions, &simRegion{id: s.nextID, ver: 1, start: start, end: end, from: s.ts, res: s.ts})
		s.nextID++
	}
	return s
}

// step advances the resolved ts (most regions together, some lagging, a
// few stuck), sometimes splits a region, and returns this flush's claims.
func (s *simStore) step() []*pitrpb.RegionCoverage {
	s.ts += 100
	if s.rng.Intn(5) == 0 && len(s.regions) > 0 { // split
		i := s.rng.Intn(len(s.regions))
		r := s.regions[i]
		mid := append(append([]byte(nil), r.start...), byte('a'+s.rng.Intn(26)))
		if (r.end == nil || string(mid) < string(r.end)) && string(mid) > string(r.start) {
			right := &simRegion{id: s.nextID, ver: r.ver + 1, start: mid, end: r.end, from: r.from, res: r.res}
			s.nextID++
			r.ver++
			r.end = mid
			s.regions = slices.Insert(s.regions, i+1, right)
		}
	}
	var covs []*pitrpb.RegionCoverage
	for _, r := range s.regions {
		switch p := s.rng.Intn(20); {
		case p == 0: // stuck
		case p < 3:
			r.res = max(r.res, s.ts-uint64(s.rng.Intn(90)))
		default:
			r.res = s.ts
		}
		if r.res > r.from {
			covs = append(covs, &pitrpb.RegionCoverage{RegionId: r.id, EpochVersion: r.ver, EpochConfVer: 1,
				StartKey: r.start, EndKey: r.end, FromTs: r.from, ToTs: r.res})
		}
	}
	return covs
}

func (s *simStore) advance(covs []*pitrpb.RegionCoverage) {
	byID := map[uint64]*pitrpb.RegionCoverage{}
	for _, c := range covs {
		byID[c.RegionId] = c
	}
	for _, r := range s.regions {
		if c, ok := byID[r.id]; ok && c.EpochVersion == r.ver {
			r.from = max(r.from, c.ToTs)
		}
	}
}

type coverKey struct {
	start, end string
	from, to   uint64
}

func keysOf(cs []Cover) []coverKey {
	out := make([]coverKey, len(cs))
	for i, c := range cs {
		out[i] = coverKey{string(c.Start), string(c.End), c.From, c.To}
	}
	return out
}

// TestChainMatchesFullLists: a chain's metas, through the codec, give the
// reader exactly the coverage the same claims give as full lists (the
// format before chains), under splits, lagging and stuck regions,
// keyframes and a failed store.
func TestChainMatchesFullLists(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			s := newSimStore(seed, 50)
			chained, full := NewCoverageReader(), NewCoverageReader()
			for i := 0; i < 200; i++ {
				covs := s.step()
				m := &pitrpb.Meta{StoreId: 4, FlushTs: s.ts + 50, Task: "t"}
				path := MetaPath(m.FlushTs, 4)
				step := s.chain.Next(m, path, covs, 37)
				b, err := EncodeMeta(m)
				require.NoError(t, err)
				if s.rng.Intn(40) == 0 { // the store failed: it may have landed or not
					s.chain.Reset()
					if s.rng.Intn(2) == 0 {
						continue
					}
				} else {
					s.chain.Commit(path, step)
				}
				got, err := DecodeMeta(b)
				require.NoError(t, err)
				require.NoError(t, chained.Add(path, got))
				// The same claims as a version 2 full list.
				old := &pitrpb.Meta{StoreId: 4, FlushTs: m.FlushTs, Task: "t"}
				for _, c := range covs {
					old.Regions = append(old.Regions, proto.Clone(c).(*pitrpb.RegionCoverage))
				}
				ob, err := EncodeMeta(old)
				require.NoError(t, err)
				og, err := DecodeMeta(ob)
				require.NoError(t, err)
				require.Equal(t, FormatVersion, og.GetFormatVersion())
				require.NoError(t, full.Add(path, og))
				s.advance(covs)
			}
			require.Equal(t, keysOf(full.Covers()), keysOf(chained.Covers()))
		})
	}
}

// TestChainIdleMetaIsSmall: at 10k regions that all advance together, a
// keyframe is the region list and the metas after it are a few bytes.
func TestChainIdleMetaIsSmall(t *testing.T) {
	s := newSimStore(1, 10000)
	var sizes []int
	for i := 0; i < 3; i++ {
		s.ts += 100
		var covs []*pitrpb.RegionCoverage
		for _, r := range s.regions {
			covs = append(covs, &pitrpb.RegionCoverage{RegionId: r.id, EpochVersion: r.ver, EpochConfVer: 1,
				StartKey: r.start, EndKey: r.end, FromTs: r.from, ToTs: s.ts})
		}
		m := &pitrpb.Meta{StoreId: 4, FlushTs: s.ts + 1, Task: "t"}
		step := s.chain.Next(m, MetaPath(m.FlushTs, 4), covs, 0)
		b, err := EncodeMeta(m)
		require.NoError(t, err)
		s.chain.Commit(MetaPath(m.FlushTs, 4), step)
		s.advance(covs)
		sizes = append(sizes, len(b))
	}
	t.Logf("meta bytes at 10k regions: keyframe %d, then %d and %d", sizes[0], sizes[1], sizes[2])
	require.Greater(t, sizes[0], 10000*10)
	require.Less(t, sizes[1], 128)
	require.Less(t, sizes[2], 128)
}

// TestCoverageReaderRefuses: a meta continuing one the reader has not seen,
// another store's, or naming regions its chain does not hold is an error
// that names the metas.
func TestCoverageReaderRefuses(t *testing.T) {
	key := func(ts uint64) string { return MetaPath(ts, 4) }
	kf := &pitrpb.Meta{FormatVersion: MetaFormatVersion, StoreId: 4, FlushTs: 10,
		Regions: []*pitrpb.RegionCoverage{{RegionId: 1, EpochVersion: 1, FromTs: 1, ToTs: 5}}}
	for _, tc := range []struct {
		name string
		m    *pitrpb.Meta
		want string
	}{
		{"missing prev", &pitrpb.Meta{FormatVersion: 3, StoreId: 4, FlushTs: 20, PrevMeta: key(15), ExtendToTs: 9},
			"continues meta " + key(15) + ", which is not in storage"},
		{"other store", &pitrpb.Meta{FormatVersion: 3, StoreId: 5, FlushTs: 20, PrevMeta: key(10), ExtendToTs: 9},
			"of store 5 continues meta " + key(10) + " of store 4"},
		{"unknown region", &pitrpb.Meta{FormatVersion: 3, StoreId: 4, FlushTs: 20, PrevMeta: key(10),
			Extends: []*pitrpb.CoverageExtend{{ToTs: 9, RegionIds: []uint64{2}}}}, "extends region 2, which its chain does not hold"},
		{"backwards", &pitrpb.Meta{FormatVersion: 3, StoreId: 4, FlushTs: 20, PrevMeta: key(10),
			Extends: []*pitrpb.CoverageExtend{{ToTs: 3, RegionIds: []uint64{1}}}}, "below its coverage to 5"},
		{"unknown drop", &pitrpb.Meta{FormatVersion: 3, StoreId: 4, FlushTs: 20, PrevMeta: key(10), Dropped: []uint64{3}},
			"drops region 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewCoverageReader()
			require.NoError(t, r.Add(key(10), kf))
			err := r.Add(MetaPath(20, tc.m.StoreId), tc.m)
			require.ErrorContains(t, err, tc.want)
		})
	}
	// A keyframe with chain fields, and a region named twice, do not decode.
	for _, m := range []*pitrpb.Meta{
		{StoreId: 4, FlushTs: 20, ExtendToTs: 9},
		{StoreId: 4, FlushTs: 20, PrevMeta: key(10), Dropped: []uint64{1}, Extends: []*pitrpb.CoverageExtend{{ToTs: 9, RegionIds: []uint64{1}}}},
	} {
		_, err := EncodeMeta(m)
		require.Error(t, err)
	}
}
