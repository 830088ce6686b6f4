// Package merge k-way merges sorted runs of log rows (logfile.Compare order).
// Flush merges its in-memory buffer with spilled runs, compaction merges
// many small files into restore-ready ones, restore merges the files of a
// range. Rows equal on (key, commit_ts) are duplicates (DESIGN I5: the same
// change can be captured twice, e.g. after a leader change) and come out once.
package merge

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"slices"

	"github.com/pitr-io/pitr/logfile"
)

// Merge returns the rows of its, which must each be in logfile.Compare order,
// as one iterator in that order with duplicates (equal key and commit_ts,
// within or across inputs) removed: of equal rows, the one from the earliest
// input is kept. The returned Row is valid until the next Next. Close closes
// every input and returns the first error.
func Merge(its ...logfile.Iterator) logfile.Iterator {
	return &merger{inputs: its}
}

type source struct {
	it  logfile.Iterator
	idx int
}

type merger struct {
	inputs  []logfile.Iterator
	h       srcHeap
	started bool
	advance bool // the top source's row was returned; move it on first
	lastKey []byte
	lastTS  uint64
	emitted bool
	err     error
	done    bool
	closed  bool
}

type srcHeap []source

func (h srcHeap) Len() int { return len(h) }
func (h srcHeap) Less(i, j int) bool {
	if c := logfile.Compare(h[i].it.Row(), h[j].it.Row()); c != 0 {
		return c < 0
	}
	return h[i].idx < h[j].idx
}
func (h srcHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *srcHeap) Push(x any)   { *h = append(*h, x.(source)) }
func (h *srcHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (m *merger) fail(err error) bool {
	m.err = err
	m.done = true
	return false
}

// step moves the top source to its next row and restores the heap.
func (m *merger) step() error {
	top := m.h[0]
	if top.it.Next() {
		heap.Fix(&m.h, 0)
		return nil
	}
	if err := top.it.Err(); err != nil {
		return fmt.Errorf("merge input %d: %w", top.idx, err)
	}
	heap.Pop(&m.h)
	return nil
}

func (m *merger) Next() bool {
	if m.done {
		return false
	}
	if !m.started {
		m.started = true
		for i, it := range m.inputs {
			if it.Next() {
				m.h = append(m.h, source{it: it, idx: i})
			} else if err := it.Err(); err != nil {
				return m.fail(fmt.Errorf("merge input %d: %w", i, err))
			}
		}
		heap.Init(&m.h)
	}
	if m.advance {
		m.advance = false
		if err := m.step(); err != nil {
			return m.fail(err)
		}
	}
	for len(m.h) > 0 {
		r := m.h[0].it.Row()
		if m.emitted && r.CommitTS == m.lastTS && bytes.Equal(r.Key, m.lastKey) {
			if err := m.step(); err != nil {
				return m.fail(err)
			}
			continue
		}
		m.emitted = true
		m.lastKey = append(m.lastKey[:0], r.Key...)
		m.lastTS = r.CommitTS
		m.advance = true
		return true
	}
	m.done = true
	return false
}

func (m *merger) Row() *logfile.Row {
	if m.done || len(m.h) == 0 {
		return nil
	}
	return m.h[0].it.Row()
}

func (m *merger) Err() error { return m.err }

func (m *merger) Close() error {
	if m.closed {
		return nil
	}
	m.closed, m.done = true, true
	var errs []error
	for i, it := range m.inputs {
		if err := it.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close merge input %d: %w", i, err))
		}
	}
	m.h = nil
	return errors.Join(errs...)
}

// Sort sorts rows in logfile.Compare order (stable: of duplicates, the
// earlier stays first).
func Sort(rows []*logfile.Row) {
	slices.SortStableFunc(rows, logfile.Compare)
}

// Slice iterates over rows, which must be in logfile.Compare order (see
// Sort). It does not copy them.
func Slice(rows []*logfile.Row) logfile.Iterator { return &sliceIter{rows: rows, i: -1} }

type sliceIter struct {
	rows []*logfile.Row
	i    int
}

func (s *sliceIter) Next() bool {
	if s.i < len(s.rows) {
		s.i++
	}
	return s.i < len(s.rows)
}

func (s *sliceIter) Row() *logfile.Row {
	if s.i < 0 || s.i >= len(s.rows) {
		return nil
	}
	return s.rows[s.i]
}
func (s *sliceIter) Err() error   { return nil }
func (s *sliceIter) Close() error { s.i = len(s.rows); return nil }

// Copy writes every row of it to w and closes it. It returns the number of
// rows written.
func Copy(w *logfile.Writer, it logfile.Iterator) (n int64, err error) {
	defer func() {
		if cerr := it.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	for it.Next() {
		if err := w.Write(it.Row()); err != nil {
			return n, err
		}
		n++
	}
	return n, it.Err()
}

var (
	_ logfile.Iterator = (*merger)(nil)
	_ logfile.Iterator = (*sliceIter)(nil)
)
