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
	task := keyspace.Normalize(in.Ranges)
	res := Result{Checkpoint: in.Previous}
	reps := in.Reports

	// Valid reports, sorted by start key (ties in any order). The keys are
	// copied beside the indices so the sort reads contiguous memory.
	starts := make([]startIx, 0, len(reps))
	for i := range reps {
		r := &reps[i]
		if (keyspace.Range{Start: r.Start, End: r.End}).Empty() {
			res.Invalid++
			continue
		}
		starts = append(starts, startIx{key: r.Start, i: int32(i)})
	}
	byStart := func(a, b startIx) int { return bytes.Compare(a.key, b.key) }
	if !slices.IsSortedFunc(starts, byStart) {
		slices.SortFunc(starts, byStart)
	}
	order := make([]int32, len(starts))
	ends := make([]keyIx, len(starts))
	for j, s := range starts {
		order[j] = s.i
		ends[j] = keyIx{p: keyspace.EndPoint(reps[s.i].End), i: s.i}
	}
	// Regions tile the key space, so in start order the ends are usually
	// sorted too; sort them only when they are not.
	byEnd := func(a, b keyIx) int { return keyspace.ComparePoints(a.p, b.p) }
	if !slices.IsSortedFunc(ends, byEnd) {
		slices.SortFunc(ends, byEnd)
	}

	// Merge the three sorted streams of boundaries (report starts, report
	// ends, task range bounds) into the unique boundary list, recording the
	// index of each report's and each task range's bounds.
	lo := make([]int32, len(reps))
	hi := make([]int32, len(reps))
	tlo := make([]int32, len(task))
	thi := make([]int32, len(task))
	bnd := make([]keyspace.Point, 0, 2*len(order)+2*len(task))
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
		idx := int32(len(bnd))
		bnd = append(bnd, p)
		for si < len(starts) && keyspace.ComparePoints(keyspace.StartPoint(starts[si].key), p) == 0 {
			lo[starts[si].i] = idx
			si++
		}
		for ei < len(ends) && keyspace.ComparePoints(ends[ei].p, p) == 0 {
			hi[ends[ei].i] = idx
			ei++
		}
		for ti < 2*len(task) && keyspace.ComparePoints(taskPoint(ti), p) == 0 {
			if ti%2 == 0 {
				tlo[ti/2] = idx
			} else {
				thi[ti/2] = idx
			}
			ti++
		}
	}
	k := len(bnd) - 1 // elementary intervals [bnd[j], bnd[j+1])
	if k < 1 {
		k = 0
	}

	// inTask[j]: interval j lies inside a task range; taskPrefix counts them.
	inTask := make([]bool, k)
	for t := range task {
		for j := tlo[t]; j < thi[t]; j++ {
			inTask[j] = true
		}
	}

	// Reports that do not overlap (the usual case) are all current.
	disjoint := true
	for j := 1; j < len(order) && disjoint; j++ {
		disjoint = lo[order[j]] >= hi[order[j-1]]
	}
	survive := make([]bool, len(reps))
	if disjoint {
		for _, i := range order {
			survive[i] = true
		}
	} else {
		res.Stale = markCurrent(reps, order, lo, hi, k, survive)
	}

	// Sweep the survivors: the lowest checkpoint over each interval, holes
	// where none covers a task interval.
	covered := true
	var candidate uint64
	first := true
	var holes []keyspace.Range
	taskPrefix := make([]int32, k+1)
	for j := 0; j < k; j++ {
		taskPrefix[j+1] = taskPrefix[j]
		if inTask[j] {
			taskPrefix[j+1]++
		}
	}
	// best[j]: the surviving report with the lowest checkpoint over
	// interval j (-1: none). Disjoint reports fill their own intervals;
	// overlapping ones need a heap sweep.
	best := make([]int32, k)
	for j := range best {
		best[j] = -1
	}
	if disjoint {
		for _, i := range order {
			for j := lo[i]; j < hi[i]; j++ {
				best[j] = i
			}
		}
	} else {
		h := ixHeap{less: func(a, b int32) bool { return reps[a].Checkpoint < reps[b].Checkpoint }}
		next := 0
		for j := 0; j < k; j++ {
			for next < len(order) && lo[order[next]] <= int32(j) {
				if i := order[next]; survive[i] {
					h.push(i)
				}
				next++
			}
			for h.len() > 0 && hi[h.top()] <= int32(j) {
				h.pop()
			}
			if h.len() > 0 {
				best[j] = h.top()
			}
		}
	}
	for j := 0; j < k; j++ {
		if !inTask[j] {
			continue
		}
		if best[j] < 0 {
			covered = false
			hole := keyspace.Range{Start: bnd[j].Key, End: bnd[j+1].Key}
			if n := len(holes); n > 0 && bytes.Equal(holes[n-1].End, hole.Start) && len(hole.Start) > 0 {
				holes[n-1].End = hole.End
			} else {
				holes = append(holes, hole)
			}
			continue
		}
		if cp := reps[best[j]].Checkpoint; first || cp < candidate {
			candidate, first = cp, false
		}
	}
	res.Uncovered = holes
	res.Covered = covered
	if covered {
		res.Candidate = candidate
		res.Checkpoint = max(in.Previous, candidate)
	}

	// The slowest: holes first, then the in-task survivors with the lowest
	// checkpoints (a bounded insertion sort: O(n·maxSlow)).
	if maxSlow > 0 {
		for _, h := range holes {
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
		for _, i := range order {
			if !survive[i] || taskPrefix[hi[i]]-taskPrefix[lo[i]] == 0 {
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
	} else {
		for _, i := range order {
			if survive[i] && taskPrefix[hi[i]]-taskPrefix[lo[i]] > 0 {
				res.Used++
			}
		}
	}
	if in.LagBefore > 0 {
		res.Lagging = lagging(reps, order, survive, task, in.LagBefore)
	}
	return res
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
