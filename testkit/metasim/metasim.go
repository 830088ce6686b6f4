// Package metasim writes the metas of a simulated task the way agents
// write them, without a cluster: stores flushing on a clock, regions that
// all advance every flush (an idle cluster, the case where the region list
// dominates), a leader move a minute and a split an hour. Tests and the
// bench use it to measure what a day of metas costs to store and to plan.
package metasim

import (
	"context"
	"fmt"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// Options shape the simulation.
type Options struct {
	Task    string
	Regions int
	Stores  int
	// Flushes per store, Interval apart (default 5 s: the agent's).
	Flushes  int
	Interval time.Duration
	// KeyframeEvery as flush.Settings (default 720).
	KeyframeEvery int
	// FullLists writes every meta as a full list of its store's regions,
	// as metas were before format 3.
	FullLists bool
}

// Result is what was written.
type Result struct {
	Metas     int
	MetaBytes int64
	// FullBytes is about what the full lists of every flush take (sized
	// once every KeyframeEvery flushes).
	FullBytes         int64
	Start, Checkpoint uint64
}

type region struct {
	id, ver, store uint64
	start, end     []byte
	from           uint64
	cov            *pitrpb.RegionCoverage // reused: a Chain keeps none
}

// Write writes pitr.lock, task.pb, the metas and checkpoint/global of a
// task that starts empty at 2026-12-01T00:00Z into st.
func Write(ctx context.Context, st storage.Storage, o Options) (*Result, error) {
	if o.Task == "" {
		o.Task = "sim"
	}
	if o.Stores <= 0 {
		o.Stores = 3
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if o.KeyframeEvery <= 0 {
		o.KeyframeEvery = 720
	}
	start := keyspace.Compose(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), 0)
	res := &Result{Start: start}
	put := func(key string, b []byte, err error) error {
		if err != nil {
			return err
		}
		return st.Put(ctx, key, b)
	}
	lock, err := logfile.EncodeLock(&pitrpb.Lock{Task: o.Task})
	if err := put(logfile.LockPath, lock, err); err != nil {
		return nil, err
	}
	task, err := logfile.EncodeTaskInfo(&pitrpb.TaskInfo{Name: o.Task, StartTs: start, StartedEmpty: true})
	if err := put(logfile.TaskPath, task, err); err != nil {
		return nil, err
	}
	key := func(i int) []byte { return []byte(fmt.Sprintf("t_%08d", i*1000)) }
	var rs []*region
	for i := 0; i < o.Regions; i++ {
		r := &region{id: uint64(i + 1), ver: 1, store: uint64(1 + i%o.Stores), from: start, cov: &pitrpb.RegionCoverage{}}
		if i > 0 {
			r.start = key(i)
		}
		if i < o.Regions-1 {
			r.end = key(i + 1)
		}
		rs = append(rs, r)
	}
	nextID := uint64(o.Regions + 1)
	rng := rand.New(rand.NewSource(1))
	chains := make([]logfile.Chain, o.Stores+1)
	step := uint64(o.Interval.Milliseconds()) << keyspace.LogicalBits
	perMinute, perHour := max(1, int(time.Minute/o.Interval)), max(1, int(time.Hour/o.Interval))
	covs := make([][]*pitrpb.RegionCoverage, o.Stores+1)
	var ts uint64
	for f := 1; f <= o.Flushes; f++ {
		ts = start + uint64(f)*step
		if f%perMinute == 0 && len(rs) > 0 && o.Stores > 1 { // a leader moves
			r := rs[rng.Intn(len(rs))]
			r.store = uint64(1 + (int(r.store)-1+1+rng.Intn(o.Stores-1))%o.Stores)
		}
		if f%perHour == perHour/2 && len(rs) > 0 { // a region splits
			i := rng.Intn(len(rs))
			r := rs[i]
			mid := append(append([]byte(nil), r.start...), 'x')
			right := &region{id: nextID, ver: r.ver + 1, store: r.store, start: mid, end: r.end, from: r.from, cov: &pitrpb.RegionCoverage{}}
			nextID++
			r.ver++
			r.end = mid
			rs = append(rs[:i+1], append([]*region{right}, rs[i+1:]...)...)
		}
		for s := range covs {
			covs[s] = covs[s][:0]
		}
		for _, r := range rs {
			*r.cov = pitrpb.RegionCoverage{RegionId: r.id, EpochVersion: r.ver, EpochConfVer: 1,
				StartKey: r.start, EndKey: r.end, FromTs: r.from, ToTs: ts - 1}
			covs[r.store] = append(covs[r.store], r.cov)
		}
		for store := 1; store <= o.Stores; store++ {
			m := &pitrpb.Meta{StoreId: uint64(store), FlushTs: ts, Task: o.Task}
			path := logfile.MetaPath(ts, uint64(store))
			var next *logfile.ChainStep
			if o.FullLists {
				m.Regions = covs[store]
			} else {
				next = chains[store].Next(m, path, covs[store], o.KeyframeEvery)
			}
			raw, err := logfile.EncodeMeta(m)
			if err := put(path, raw, err); err != nil {
				return nil, err
			}
			if next != nil {
				chains[store].Commit(path, next)
			}
			res.Metas++
			res.MetaBytes += int64(len(raw))
			if f%o.KeyframeEvery == 1 || o.KeyframeEvery == 1 {
				full, err := logfile.EncodeMeta(&pitrpb.Meta{StoreId: uint64(store), FlushTs: ts, Task: o.Task, Regions: covs[store]})
				if err != nil {
					return nil, err
				}
				res.FullBytes += int64(o.KeyframeEvery) * int64(len(full))
			}
		}
		for _, r := range rs {
			r.from = r.cov.ToTs
		}
	}
	res.Checkpoint = ts - 1
	cp, err := logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: o.Task, Ts: res.Checkpoint})
	if err := put(logfile.CheckpointPath, cp, err); err != nil {
		return nil, err
	}
	return res, nil
}

// PeakHeap runs f and returns the most heap in use while it ran, sampled
// every few milliseconds, and the heap in use before it (after a GC).
func PeakHeap(f func()) (peak, before uint64) {
	runtime.GC()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var top atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > top.Load() {
				top.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	f()
	close(done)
	wg.Wait()
	return top.Load(), ms0.HeapInuse
}
