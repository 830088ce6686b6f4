package agent

import (
	"bytes"
	"sort"

	"github.com/pitr-io/pitr/keyspace"
)

// Keys here are raw user keys unless named enc*: PD and the EventFeed
// request use the memcomparable encoding (TIKV-PROTOCOLS §1.8, see
// keyspace.EncodeKey), files and coverage use raw keys. An empty start is
// -inf; a nil/empty end is +inf.

// span is a raw key range with a timestamp.
type span struct {
	start, end []byte
	ts         uint64
}

// spanMap maps disjoint raw key ranges to the highest checkpoint this agent
// has flushed for them: storage holds every change committed at or before
// ts inside [start, end). It lets a region subscribed again (after a split,
// a leader coming back, a broken stream) start from its own flushed
// progress instead of the global checkpoint.
type spanMap struct {
	spans []span // sorted by start, disjoint
}

// min returns the lowest ts over [start, end), or 0 when part of the range
// has no entry.
func (m *spanMap) min(start, end []byte) uint64 {
	i := sort.Search(len(m.spans), func(i int) bool { return keyspace.BeforeEnd(start, m.spans[i].end) })
	cur := start
	var lo uint64
	for ; i < len(m.spans); i++ {
		s := m.spans[i]
		if bytes.Compare(s.start, cur) > 0 {
			return 0 // gap
		}
		if lo == 0 || s.ts < lo {
			lo = s.ts
		}
		if keyspace.CompareEnds(s.end, end) >= 0 {
			return lo
		}
		cur = s.end
	}
	return 0
}

// apply records updates (disjoint among themselves); where a range already
// has a ts, the larger one stays.
func (m *spanMap) apply(updates []span) {
	if len(updates) == 0 {
		return
	}
	up := append([]span(nil), updates...)
	sort.Slice(up, func(i, j int) bool { return bytes.Compare(up[i].start, up[j].start) < 0 })
	// Elementary intervals between every boundary of both sides.
	var bounds [][]byte
	inf := false
	for _, s := range append(up, m.spans...) {
		bounds = append(bounds, s.start)
		if len(s.end) == 0 {
			inf = true
		} else {
			bounds = append(bounds, s.end)
		}
	}
	sort.Slice(bounds, func(i, j int) bool { return bytes.Compare(bounds[i], bounds[j]) < 0 })
	uniq := bounds[:0]
	for i, b := range bounds {
		if i == 0 || !bytes.Equal(b, uniq[len(uniq)-1]) {
			uniq = append(uniq, b)
		}
	}
	bounds = uniq
	ends := make([][]byte, len(bounds))
	copy(ends, bounds[1:])
	if !inf {
		bounds = bounds[:len(bounds)-1]
		ends = ends[:len(bounds)]
	} // else the last interval runs to +inf (ends[last] is nil)

	var out []span
	i, j := 0, 0
	for k, start := range bounds {
		end := ends[k]
		var ts uint64
		for i < len(m.spans) && !keyspace.BeforeEnd(start, m.spans[i].end) {
			i++
		}
		if i < len(m.spans) && bytes.Compare(m.spans[i].start, start) <= 0 {
			ts = m.spans[i].ts
		}
		for j < len(up) && !keyspace.BeforeEnd(start, up[j].end) {
			j++
		}
		if j < len(up) && bytes.Compare(up[j].start, start) <= 0 && up[j].ts > ts {
			ts = up[j].ts
		}
		if ts == 0 {
			continue
		}
		if n := len(out); n > 0 && out[n-1].ts == ts && bytes.Equal(out[n-1].end, start) {
			out[n-1].end = end
			continue
		}
		out = append(out, span{start: start, end: end, ts: ts})
	}
	m.spans = out
}
