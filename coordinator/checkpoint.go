package coordinator

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/pitr-io/pitr/keyspace"
)

// Report is one region's progress as an agent reported it (GetProgress).
type Report struct {
	StoreID      uint64
	RegionID     uint64
	EpochVersion uint64
	// Start and End are the region's raw key range (empty End: +inf).
	Start, End []byte
	// Checkpoint: every change committed at or before it inside the range
	// is in storage.
	Checkpoint uint64
	// OldestPendingStartTS is the start ts of the oldest prewrite still
	// pending in the region (0: none).
	OldestPendingStartTS uint64
	// Reason is the agent's own explanation of a lag (may be empty).
	Reason string
}

// Cause says why a key range holds the global checkpoint back.
type Cause int

// Causes, in the order Result.Slowest lists them.
const (
	// CauseUncovered: no current report covers the range; it pins the
	// checkpoint until one does.
	CauseUncovered Cause = 1
	// CauseLongTxn: a prewrite pending since Slow.StartTS holds the region's
	// resolved ts (and so its checkpoint) back.
	CauseLongTxn Cause = 2
	// CauseLagging: the store has not flushed the region further.
	CauseLagging Cause = 3
)

func (c Cause) String() string {
	switch c {
	case CauseUncovered:
		return "uncovered"
	case CauseLongTxn:
		return "long-txn"
	case CauseLagging:
		return "lagging-store"
	}
	return fmt.Sprintf("cause(%d)", int(c))
}

// Slow is one key range holding the global checkpoint back.
type Slow struct {
	Cause Cause
	Range keyspace.Range
	// The region and its report; zero for an uncovered range.
	RegionID, StoreID, EpochVersion uint64
	Checkpoint                      uint64
	// StartTS of the long transaction (CauseLongTxn).
	StartTS uint64
	// Reason is a one-line explanation for humans.
	Reason string
}

// DefaultMaxSlow is how many slow ranges Compute returns by default.
const DefaultMaxSlow = 5

// Input is everything one checkpoint computation looks at.
type Input struct {
	// Ranges are the task's key ranges; none means the whole key space.
	Ranges []keyspace.Range
	// Previous is the stored global checkpoint (the task's start ts before
	// the first advance).
	Previous uint64
	// Reports are the regions' reports from every agent, in any order.
	Reports []Report
	// MaxSlow bounds Result.Slowest (0: DefaultMaxSlow; < 0: none).
	MaxSlow int
	// LagBefore > 0 asks for Result.Lagging: the ranges of the current
	// reports whose checkpoint is below it.
	LagBefore uint64
}

// Result is the outcome of Compute.
type Result struct {
	// Checkpoint is the new global checkpoint: max(Previous, Candidate) when
	// the task ranges are covered, Previous otherwise. It never decreases.
	Checkpoint uint64
	// Candidate is the minimum checkpoint over the cover (0 when not
	// Covered).
	Candidate uint64
	// Covered reports that current reports cover every task range.
	Covered bool
	// Uncovered are the holes, clipped to the task ranges, in key order,
	// adjacent holes merged.
	Uncovered []keyspace.Range
	// Used counts the reports in the cover; Stale those dropped because an
	// overlapping report has a newer epoch; Invalid those with an empty or
	// inverted range.
	Used, Stale, Invalid int
	// Slowest lists what holds the checkpoint back: the holes first (each
	// pins it), then the regions with the lowest checkpoints.
	Slowest []Slow
	// Lagging (with Input.LagBefore) are the ranges of every current
	// in-task report with a checkpoint below LagBefore, clipped to the
	// task ranges and merged, in key order. Unlike Slowest it is not
	// bounded: TiKV reports resolved ts in batches at the batch's minimum
	// (cdc endpoint.rs on_min_ts), so the region a lock pins drags up to
	// 7 others to exactly its checkpoint, and the one holding the lock
	// may be any of the ties.
	Lagging []keyspace.Range
}

// Compute derives the global checkpoint from the regions' reports (DESIGN
// §5). Per key, the report with the newest epoch wins: a report that
// overlaps a report with a newer epoch version (a region since split,
// merged or re-reported by its new leader) is dropped as a whole, and where
// reports with equal versions overlap the lower checkpoint counts. If the
// surviving reports cover every task range, the candidate is the minimum
// checkpoint over the cover and the checkpoint becomes max(Previous,
// candidate) (I2); any uncovered range pins it at Previous and is reported.
//
// It sorts the boundary keys once and sweeps them, O(n log n) in the number
// of reports; it keeps no references to in's slices beyond the result's
// ranges.
func Compute(in Input) Result {
	maxSlow := in.MaxSlow
	if maxSlow == 0 {
		maxSlow = DefaultMaxSlow
	}
	res := Result{Checkpoint: in.Previous}
	s := newSweep(in.Reports, keyspace.Normalize(in.Ranges), &res)
	s.bounds()
	res.Stale = s.current()
	s.lowest()
	s.cover(&res)
	s.slowest(&res, maxSlow)
	if in.LagBefore > 0 {
		res.Lagging = lagging(s.reps, s.order, s.survive, s.task, in.LagBefore)
	}
	return res
}

// sweep is one checkpoint computation, in phases: order the reports
// (newSweep), cut the key space at every boundary (bounds), drop the
// reports an overlapping newer epoch replaces (current), find the lowest
// surviving report over each piece (lowest), then the cover and its holes
// (cover) and the slowest (slowest).
type sweep struct {
	reps []Report
	task []keyspace.Range

	starts []startIx // valid reports by start key
	order  []int32   // their indices, in that order
	ends   []keyIx   // their ends, sorted

	// The elementary intervals [bnd[j], bnd[j+1]), j < k; each report
	// spans [lo[i], hi[i]) of them, each task range [tlo[t], thi[t]).
	bnd      []keyspace.Point
	k        int
	lo, hi   []int32
	tlo, thi []int32
	// inTask[j]: interval j lies inside a task range; taskPrefix counts
	// them.
	inTask     []bool
	taskPrefix []int32

	disjoint bool    // no two valid reports overlap (the usual case)
	survive  []bool  // the report is current
	best     []int32 // the current report with the lowest checkpoint over interval j (-1: none)
}

// newSweep keeps the valid reports (counting the invalid ones in res)
// sorted by start key (ties in any order), and their ends sorted. The keys
// are copied beside the indices so the sort reads contiguous memory.
func newSweep(reps []Report, task []keyspace.Range, res *Result) *sweep {
	s := &sweep{reps: reps, task: task}
	s.starts = make([]startIx, 0, len(reps))
	for i := range reps {
		r := &reps[i]
		if (keyspace.Range{Start: r.Start, End: r.End}).Empty() {
			res.Invalid++
			continue
		}
		s.starts = append(s.starts, startIx{key: r.Start, i: int32(i)})
	}
	byStart := func(a, b startIx) int { return bytes.Compare(a.key, b.key) }
	if !slices.IsSortedFunc(s.starts, byStart) {
		slices.SortFunc(s.starts, byStart)
	}
	s.order = make([]int32, len(s.starts))
	s.ends = make([]keyIx, len(s.starts))
	for j, st := range s.starts {
		s.order[j] = st.i
		s.ends[j] = keyIx{p: keyspace.EndPoint(reps[st.i].End), i: st.i}
	}
	// Regions tile the key space, so in start order the ends are usually
	// sorted too; sort them only when they are not.
	byEnd := func(a, b keyIx) int { return keyspace.ComparePoints(a.p, b.p) }
	if !slices.IsSortedFunc(s.ends, byEnd) {
		slices.SortFunc(s.ends, byEnd)
	}
	return s
}

// bounds merges the three sorted streams of boundaries (report starts,
// report ends, task range bounds) into the unique boundary list,
// recording the index of each report's and each task range's bounds.
func (s *sweep) bounds() {
	starts, ends, task := s.starts, s.ends, s.task
	s.lo = make([]int32, len(s.reps))
	s.hi = make([]int32, len(s.reps))
	s.tlo = make([]int32, len(task))
	s.thi = make([]int32, len(task))
	s.bnd = make([]keyspace.Point, 0, 2*len(s.order)+2*len(task))
	var si, ei, ti int // ti counts task bounds: 2*range + (0 start, 1 end)
	taskPoint := func(t int) keyspace.Point {
		if t%2 == 0 {
			return keyspace.StartPoint(task[t/2].Start)
		}
		return keyspace.EndPoint(task[t/2].End)
	}
	for si < len(starts) || ei < len(ends) || ti < 2*len(task) {
		// Pick the smallest head.
		var p keyspace.Point
		have := false
		if si < len(starts) {
			p, have = keyspace.StartPoint(starts[si].key), true
		}
		if ei < len(ends) {
			if q := ends[ei].p; !have || keyspace.ComparePoints(q, p) < 0 {
				p, have = q, true
			}
		}
		if ti < 2*len(task) {
			if q := taskPoint(ti); !have || keyspace.ComparePoints(q, p) < 0 {
				p = q
			}
		}
		idx := int32(len(s.bnd))
		s.bnd = append(s.bnd, p)
		for si < len(starts) && keyspace.ComparePoints(keyspace.StartPoint(starts[si].key), p) == 0 {
			s.lo[starts[si].i] = idx
			si++
		}
		for ei < len(ends) && keyspace.ComparePoints(ends[ei].p, p) == 0 {
			s.hi[ends[ei].i] = idx
			ei++
		}
		for ti < 2*len(task) && keyspace.ComparePoints(taskPoint(ti), p) == 0 {
			if ti%2 == 0 {
				s.tlo[ti/2] = idx
			} else {
				s.thi[ti/2] = idx
			}
			ti++
		}
	}
	s.k = max(len(s.bnd)-1, 0)
	s.inTask = make([]bool, s.k)
	for t := range task {
		for j := s.tlo[t]; j < s.thi[t]; j++ {
			s.inTask[j] = true
		}
	}
	s.taskPrefix = make([]int32, s.k+1)
	for j := 0; j < s.k; j++ {
		s.taskPrefix[j+1] = s.taskPrefix[j]
		if s.inTask[j] {
			s.taskPrefix[j+1]++
		}
	}
}

// current marks the reports no overlapping report with a newer epoch
// replaces and returns how many it dropped. Reports that do not overlap
// (the usual case) are all current.
func (s *sweep) current() (stale int) {
	s.disjoint = true
	for j := 1; j < len(s.order) && s.disjoint; j++ {
		s.disjoint = s.lo[s.order[j]] >= s.hi[s.order[j-1]]
	}
	s.survive = make([]bool, len(s.reps))
	if s.disjoint {
		for _, i := range s.order {
			s.survive[i] = true
		}
		return 0
	}
	return markCurrent(s.reps, s.order, s.lo, s.hi, s.k, s.survive)
}

// lowest finds, for each interval, the current report with the lowest
// checkpoint over it. Disjoint reports fill their own intervals;
// overlapping ones need a heap sweep.
func (s *sweep) lowest() {
	s.best = make([]int32, s.k)
	for j := range s.best {
		s.best[j] = -1
	}
	if s.disjoint {
		for _, i := range s.order {
			for j := s.lo[i]; j < s.hi[i]; j++ {
				s.best[j] = i
			}
		}
		return
	}
	reps := s.reps
	h := ixHeap{less: func(a, b int32) bool { return reps[a].Checkpoint < reps[b].Checkpoint }}
	next := 0
	for j := 0; j < s.k; j++ {
		for next < len(s.order) && s.lo[s.order[next]] <= int32(j) {
			if i := s.order[next]; s.survive[i] {
				h.push(i)
			}
			next++
		}
		for h.len() > 0 && s.hi[h.top()] <= int32(j) {
			h.pop()
		}
		if h.len() > 0 {
			s.best[j] = h.top()
		}
	}
}

// cover sets the candidate and the checkpoint when the current reports
// cover every task interval, and the holes (adjacent ones merged) where
// they do not.
func (s *sweep) cover(res *Result) {
	covered, first := true, true
	var candidate uint64
	var holes []keyspace.Range
	for j := 0; j < s.k; j++ {
		if !s.inTask[j] {
			continue
		}
		if s.best[j] < 0 {
			covered = false
			hole := keyspace.Range{Start: s.bnd[j].Key, End: s.bnd[j+1].Key}
			if n := len(holes); n > 0 && bytes.Equal(holes[n-1].End, hole.Start) && len(hole.Start) > 0 {
				holes[n-1].End = hole.End
			} else {
				holes = append(holes, hole)
			}
			continue
		}
		if cp := s.reps[s.best[j]].Checkpoint; first || cp < candidate {
			candidate, first = cp, false
		}
	}
	res.Uncovered = holes
	res.Covered = covered
	if covered {
		res.Candidate = candidate
		res.Checkpoint = max(res.Checkpoint, candidate)
	}
}

// slowest counts the current in-task reports (Used) and lists the holes
// first, then the reports with the lowest checkpoints, at most maxSlow in
// all (a bounded insertion sort: O(n·maxSlow)).
func (s *sweep) slowest(res *Result, maxSlow int) {
	reps, lo, hi := s.reps, s.lo, s.hi
	inTask := func(i int32) bool { return s.survive[i] && s.taskPrefix[hi[i]]-s.taskPrefix[lo[i]] > 0 }
	if maxSlow <= 0 {
		for _, i := range s.order {
			if inTask(i) {
				res.Used++
			}
		}
		return
	}
	for _, h := range res.Uncovered {
		if len(res.Slowest) == maxSlow {
			break
		}
		res.Slowest = append(res.Slowest, Slow{
			Cause: CauseUncovered, Range: h,
			Reason: "no current region report covers this range (no leader reported it, or its agent is down)",
		})
	}
	room := maxSlow - len(res.Slowest)
	var worst []int32
	slower := func(a, b int32) bool {
		if reps[a].Checkpoint != reps[b].Checkpoint {
			return reps[a].Checkpoint < reps[b].Checkpoint
		}
		return lo[a] < lo[b]
	}
	for _, i := range s.order {
		if !inTask(i) {
			continue
		}
		res.Used++
		if room <= 0 || (len(worst) == room && !slower(i, worst[room-1])) {
			continue
		}
		p := len(worst)
		if p < room {
			worst = append(worst, i)
		} else {
			p = room - 1
		}
		for p > 0 && slower(i, worst[p-1]) {
			worst[p] = worst[p-1]
			p--
		}
		worst[p] = i
	}
	for _, i := range worst {
		res.Slowest = append(res.Slowest, slowRegion(&reps[i]))
	}
}

// lagging returns the ranges of the surviving reports with a checkpoint
// below before, clipped to the task ranges and merged.
func lagging(reps []Report, order []int32, survive []bool, task []keyspace.Range, before uint64) []keyspace.Range {
	var out []keyspace.Range
	for _, i := range order {
		if r := &reps[i]; survive[i] && r.Checkpoint < before {
			out = append(out, keyspace.Clip(keyspace.Range{Start: r.Start, End: r.End}, task)...)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return keyspace.Normalize(out)
}

// markCurrent sets survive[i] for the reports that overlap no report with a
// newer epoch version and returns how many it did not set.
func markCurrent(reps []Report, order, lo, hi []int32, k int, survive []bool) (stale int) {
	// Newest epoch version per interval (0: none; versions stored +1).
	maxVer := make([]uint64, k)
	{
		h := ixHeap{less: func(a, b int32) bool { return reps[a].EpochVersion > reps[b].EpochVersion }}
		next := 0
		for j := 0; j < k; j++ {
			for next < len(order) && lo[order[next]] <= int32(j) {
				h.push(order[next])
				next++
			}
			for h.len() > 0 && hi[h.top()] <= int32(j) {
				h.pop()
			}
			if h.len() > 0 {
				maxVer[j] = reps[h.top()].EpochVersion + 1
			}
		}
	}

	// A report survives when no interval it spans has a newer version.
	var tree *maxTree
	for _, i := range order {
		v := reps[i].EpochVersion + 1
		var m uint64
		if hi[i]-lo[i] <= 16 {
			for j := lo[i]; j < hi[i]; j++ {
				m = max(m, maxVer[j])
			}
		} else {
			if tree == nil {
				tree = newMaxTree(maxVer)
			}
			m = tree.query(int(lo[i]), int(hi[i]))
		}
		if m == v {
			survive[i] = true
		} else {
			stale++
		}
	}
	return stale
}

// slowRegion explains why one region's checkpoint is low.
func slowRegion(r *Report) Slow {
	s := Slow{
		Range:    keyspace.Range{Start: r.Start, End: r.End},
		RegionID: r.RegionID, StoreID: r.StoreID, EpochVersion: r.EpochVersion,
		Checkpoint: r.Checkpoint,
	}
	if p := r.OldestPendingStartTS; p != 0 && p <= r.Checkpoint+1 {
		s.Cause, s.StartTS = CauseLongTxn, p
		s.Reason = fmt.Sprintf("long transaction: a prewrite with start_ts %d is still pending", p)
	} else {
		s.Cause = CauseLagging
		s.Reason = fmt.Sprintf("store %d has not flushed this region further", r.StoreID)
	}
	if r.Reason != "" {
		s.Reason += " (agent: " + r.Reason + ")"
	}
	return s
}

// startIx is a start key and the report it belongs to.
type startIx struct {
	key []byte
	i   int32
}

// keyIx is a boundary key and the report it belongs to.
type keyIx struct {
	p keyspace.Point
	i int32
}

// ixHeap is a binary heap of report indices.
type ixHeap struct {
	a    []int32
	less func(a, b int32) bool
}

func (h *ixHeap) len() int     { return len(h.a) }
func (h *ixHeap) top() int32   { return h.a[0] }
func (h *ixHeap) push(x int32) { h.a = append(h.a, x); h.up(len(h.a) - 1) }

func (h *ixHeap) pop() {
	n := len(h.a) - 1
	h.a[0] = h.a[n]
	h.a = h.a[:n]
	if n > 0 {
		h.down(0)
	}
}

func (h *ixHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(h.a[i], h.a[p]) {
			return
		}
		h.a[i], h.a[p] = h.a[p], h.a[i]
		i = p
	}
}

func (h *ixHeap) down(i int) {
	n := len(h.a)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(h.a[r], h.a[l]) {
			m = r
		}
		if !h.less(h.a[m], h.a[i]) {
			return
		}
		h.a[i], h.a[m] = h.a[m], h.a[i]
		i = m
	}
}

// maxTree answers range-maximum queries over a fixed array.
type maxTree struct {
	n int
	t []uint64
}

func newMaxTree(v []uint64) *maxTree {
	n := len(v)
	t := make([]uint64, 2*n)
	copy(t[n:], v)
	for i := n - 1; i > 0; i-- {
		t[i] = max(t[2*i], t[2*i+1])
	}
	return &maxTree{n: n, t: t}
}

// query returns the maximum over [l, r).
func (m *maxTree) query(l, r int) uint64 {
	var out uint64
	for l, r = l+m.n, r+m.n; l < r; l, r = l/2, r/2 {
		if l&1 == 1 {
			out = max(out, m.t[l])
			l++
		}
		if r&1 == 1 {
			r--
			out = max(out, m.t[r])
		}
	}
	return out
}
