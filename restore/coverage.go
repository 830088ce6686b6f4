package restore

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
)

// Coverage proof (DESIGN §4): every RegionCoverage of every meta claims that
// the changes committed in (from_ts, to_ts] inside [start_key, end_key) are
// in storage. The log is complete for a restore to T when the union of these
// rectangles covers every task range × (start_ts, T].
//
// CheckCoverage sweeps the key axis once (O(n log n) in the number of
// rectangles): at each rectangle edge it adds or removes the rectangle's
// timestamp interval in a segment tree over the compressed timestamps that
// keeps, per elementary interval, how many rectangles cover it, and reads the
// minimum; a zero inside a task range is a hole.

// Hole is a part of the key × time space that no meta covers: keys
// [Start, End) × commit timestamps (From, To].
type Hole struct {
	Keys     keyspace.Range
	From, To uint64
}

func (h *Hole) String() string {
	return fmt.Sprintf("keys %s have no log for commit_ts (%s, %s]", h.Keys, keyspace.Format(h.From), keyspace.Format(h.To))
}

// rect is one coverage rectangle.
type rect struct {
	keys     keyspace.Range
	from, to uint64
}

// coverageRects returns the rectangles of covers.
func coverageRects(covers []logfile.Cover) []rect {
	rs := make([]rect, len(covers))
	for i, c := range covers {
		rs[i] = rect{keys: keyspace.Range{Start: c.Start, End: c.End}, from: c.From, to: c.To}
	}
	return rs
}

// CheckCoverage returns an ErrMissing error naming the first hole (in key
// order, then time order) of the coverage over ranges × (from, to], or nil
// when there is none.
func CheckCoverage(ranges []keyspace.Range, covers []logfile.Cover, from, to uint64) error {
	if h := findHole(ranges, coverageRects(covers), from, to); h != nil {
		return fmt.Errorf("%w: coverage hole: %s", ErrMissing, h)
	}
	return nil
}

type edge struct {
	at    keyspace.Point
	delta int
	lo    int // first segment
	hi    int // one past the last segment
}

// findHole returns the first hole of rects over ranges × (from, to].
// ranges must be sorted and disjoint (taskRanges).
func findHole(ranges []keyspace.Range, rects []rect, from, to uint64) *Hole {
	if hs := findHoles(ranges, rects, from, to, 1); len(hs) > 0 {
		return &hs[0]
	}
	return nil
}

// findHoles returns up to limit holes of rects over ranges × (from, to], in
// key order, then time order; holes of adjacent keys over the same
// interval are one.
func findHoles(ranges []keyspace.Range, rects []rect, from, to uint64, limit int) []Hole {
	if from >= to || len(ranges) == 0 {
		return nil
	}
	// Compressed timestamps: c[0] = from < ... < c[m] = to; segment k is
	// (c[k], c[k+1]].
	cs := []uint64{from, to}
	for _, r := range rects {
		if r.to <= from || r.from >= to || r.from >= r.to {
			continue
		}
		cs = append(cs, max(r.from, from), min(r.to, to))
	}
	slices.Sort(cs)
	cs = slices.Compact(cs)
	seg := func(ts uint64) int { i, _ := slices.BinarySearch(cs, ts); return i }
	nseg := len(cs) - 1

	var edges []edge
	points := make([]keyspace.Point, 0, 2*len(ranges)+2*len(rects))
	for _, r := range ranges {
		points = append(points, keyspace.StartPoint(r.Start), keyspace.EndPoint(r.End))
	}
	for _, r := range rects {
		if r.to <= from || r.from >= to || r.from >= r.to {
			continue
		}
		if r.keys.Empty() {
			continue
		}
		lo, hi := seg(max(r.from, from)), seg(min(r.to, to))
		start, end := keyspace.StartPoint(r.keys.Start), keyspace.EndPoint(r.keys.End)
		edges = append(edges, edge{at: start, delta: 1, lo: lo, hi: hi})
		if !end.Inf {
			edges = append(edges, edge{at: end, delta: -1, lo: lo, hi: hi})
		}
		points = append(points, start, end)
	}
	slices.SortFunc(edges, func(a, b edge) int { return keyspace.ComparePoints(a.at, b.at) })
	slices.SortFunc(points, keyspace.ComparePoints)
	points = slices.CompactFunc(points, func(a, b keyspace.Point) bool { return keyspace.ComparePoints(a, b) == 0 })

	var holes []Hole
	t := newSegTree(nseg)
	e := 0
	for i := 0; i+1 < len(points); i++ {
		p := points[i]
		if p.Inf {
			break
		}
		for e < len(edges) && keyspace.ComparePoints(edges[e].at, p) <= 0 {
			t.add(edges[e].lo, edges[e].hi, edges[e].delta)
			e++
		}
		if !inRanges(ranges, p.Key) || t.min() > 0 {
			continue
		}
		next := points[i+1]
		keys := keyspace.Range{Start: p.Key}
		if !next.Inf {
			keys.End = next.Key
		}
		for k := t.firstZero(); k < nseg; k++ {
			if t.pointValue(k) != 0 {
				continue
			}
			k2 := k
			for k2+1 < nseg && t.pointValue(k2+1) == 0 {
				k2++
			}
			h := Hole{Keys: keys, From: cs[k], To: cs[k2+1]}
			if n := len(holes); n > 0 && holes[n-1].From == h.From && holes[n-1].To == h.To && bytes.Equal(holes[n-1].Keys.End, h.Keys.Start) && len(h.Keys.Start) > 0 {
				holes[n-1].Keys.End = h.Keys.End
			} else {
				if len(holes) == limit {
					return holes
				}
				holes = append(holes, h)
			}
			k = k2
		}
	}
	return holes
}

// inRanges reports whether key is inside one of the sorted, disjoint ranges.
func inRanges(ranges []keyspace.Range, key []byte) bool {
	i, _ := slices.BinarySearchFunc(ranges, key, func(r keyspace.Range, k []byte) int {
		if bytes.Compare(r.Start, k) > 0 {
			return 1
		}
		return -1
	})
	// ranges[i-1] is the last range starting at or before key.
	return i > 0 && ranges[i-1].Contains(key)
}

// segTree keeps per segment a cover count, with range add and global min.
type segTree struct {
	n          int
	mins, adds []int
}

func newSegTree(n int) *segTree {
	size := 1
	for size < n {
		size *= 2
	}
	t := &segTree{n: n, mins: make([]int, 2*size), adds: make([]int, 2*size)}
	// Leaves past n never count: give them a large count.
	for i := n; i < size; i++ {
		t.mins[size+i] = 1 << 40
	}
	for i := size - 1; i >= 1; i-- {
		t.mins[i] = min(t.mins[2*i], t.mins[2*i+1])
	}
	return t
}

func (t *segTree) size() int { return len(t.mins) / 2 }

func (t *segTree) addRange(node, nlo, nhi, lo, hi, d int) {
	if hi <= nlo || nhi <= lo {
		return
	}
	if lo <= nlo && nhi <= hi {
		t.mins[node] += d
		t.adds[node] += d
		return
	}
	mid := (nlo + nhi) / 2
	t.addRange(2*node, nlo, mid, lo, hi, d)
	t.addRange(2*node+1, mid, nhi, lo, hi, d)
	t.mins[node] = min(t.mins[2*node], t.mins[2*node+1]) + t.adds[node]
}

func (t *segTree) add(lo, hi, d int) {
	if lo < hi {
		t.addRange(1, 0, t.size(), lo, hi, d)
	}
}

func (t *segTree) min() int { return t.mins[1] }

// firstZero returns the leftmost segment whose count is zero; min() must be 0.
func (t *segTree) firstZero() int {
	node, acc := 1, 0
	for node < t.size() {
		acc += t.adds[node]
		if t.mins[2*node]+acc == 0 {
			node = 2 * node
		} else {
			node = 2*node + 1
		}
	}
	return node - t.size()
}

// pointValue returns segment i's count.
func (t *segTree) pointValue(i int) int {
	node := i + t.size()
	v := t.mins[node]
	for node /= 2; node >= 1; node /= 2 {
		v += t.adds[node]
	}
	return v
}
