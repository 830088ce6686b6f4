package restore

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tikv/pd/client/opt"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// gcTarget is a target playground whose GC the test drives: its GC life
// time is 1 ms, so every restored version is below its safepoint, as on a
// live cluster whose safepoint has passed T.
func gcTarget(t *testing.T, ctx context.Context) *playground.Playground {
	t.Helper()
	p, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1, GCLifeTime: time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	newTxnClient(t, p.PDAddr()) // wait until PD serves
	return p
}

// advanceGC moves the target's GC safepoint past ts (PD's part of a GC
// round, which no TiKV setting stops) and returns it. It fails the test
// without stopping the goroutine (hooks run on the restore's writers).
func advanceGC(t *testing.T, ctx context.Context, p *playground.Playground, ts uint64) uint64 {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		now, err := p.PD.TS(ctx)
		if !assert.NoError(t, err) {
			return 0
		}
		sp, err := p.PD.AdvanceGC(ctx, now)
		if !assert.NoError(t, err) {
			return 0
		}
		if sp > ts {
			return sp
		}
		if !assert.True(t, time.Now().Before(deadline), "GC safepoint %d never passed %d", sp, ts) {
			return 0
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRestoreUnderTargetGC (audit F1, R4): a key put at t1 and deleted at
// t2 ≤ T must stay deleted however the target's GC interleaves with the
// ingests. The target runs a GC round after every ingest, at a safepoint
// past T:
//   - "knob": the GC of a TiKV (RunGC), which gc.ratio-threshold = -1 on
//     every store stops;
//   - "forced": a GC the knob does not stop (the engine's GC directly, as
//     a store restarted mid-restore would run before pitr re-applies the
//     knob), which only a safe write order survives.
//
// The versions reach the target in separate ingests in two ways: a chunk
// cut between them (ChunkBytes 1), or a multi-pass sweep (one file per
// pass) whose first pass holds the Delete: store 1's file sorts before
// store 2's by path.
func TestRestoreUnderTargetGC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts playgrounds")
	}
	ctx := context.Background()
	for _, layout := range []string{"chunk cut", "multi-pass"} {
		for _, gc := range []string{"knob", "forced"} {
			t.Run(layout+"/"+gc, func(t *testing.T) {
				tgt := gcTarget(t, ctx)
				ts := func() uint64 {
					v, err := tgt.PD.TS(ctx)
					require.NoError(t, err)
					return v
				}
				start := ts()
				t1, t2, cp := ts(), ts(), ts()
				b := newTestBackup(t, &pitrpb.TaskInfo{Name: "gc", StartTs: start, StartedEmpty: true, ClusterId: 99})
				put := logfile.Row{Key: []byte("k"), CommitTS: t1, StartTS: t1 - 1, Op: logfile.OpPut, Value: []byte("v1")}
				del := logfile.Row{Key: []byte("k"), CommitTS: t2, StartTS: t2 - 1, Op: logfile.OpDelete}
				live := logfile.Row{Key: []byte("live"), CommitTS: t1, StartTS: t1 - 1, Op: logfile.OpPut, Value: []byte("stays")}
				cov := &pitrpb.RegionCoverage{RegionId: 1, FromTs: start, ToTs: cp}
				if layout == "chunk cut" {
					b.flush(1, cp, []logfile.Row{put, del, live}, cov)
				} else {
					b.flush(1, cp, []logfile.Row{del}, cov)
					b.flush(2, cp, []logfile.Row{put, live}, cov)
				}
				b.checkpoint(cp)

				o := Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, Concurrency: 1,
					ProgressFile: filepath.Join(t.TempDir(), "progress.json"), ChunkBytes: 1 << 20}
				if layout == "chunk cut" {
					o.ChunkBytes = 1
				} else {
					o.MemoryBudget = 2*o.ChunkBytes*3 + 1 // one file per pass
				}
				advanceGC(t, ctx, tgt, cp)
				var mu sync.Mutex
				var ingests, rounds int
				o.hooks = &hooks{ingested: func(c *chunk, rows []kv) {
					mu.Lock()
					defer mu.Unlock()
					ingests++
					switch gc {
					case "knob":
						sp, err := tgt.RunGC(ctx)
						assert.NoError(t, err)
						assert.Greater(t, sp, cp)
						if tgt.GCEnabled() {
							rounds++
						}
					case "forced":
						_, err := tgt.Engine.GC(advanceGC(t, ctx, tgt, cp))
						assert.NoError(t, err)
						rounds++
					}
				}}
				_, err := Run(ctx, o)
				require.NoError(t, err)
				t.Logf("%d ingests, %d GC rounds collected between them", ingests, rounds)

				snap := tgt.Engine.Snapshot()
				defer snap.Release()
				v, ok, err := snap.Get([]byte("k"), cp)
				require.NoError(t, err)
				require.False(t, ok, "k was deleted at t2 ≤ T, but the restored target reads %q", v)
				v, ok, err = snap.Get([]byte("live"), cp)
				require.NoError(t, err)
				require.True(t, ok)
				require.Equal(t, "stays", string(v))
			})
		}
	}
}

// gcRatios reads every running store's gc.ratio-threshold; a store that
// does not answer is left out (and fails the test, without stopping the
// goroutine: hooks run on the restore's writers).
func gcRatios(t *testing.T, p *playground.Playground) map[uint64]float64 {
	t.Helper()
	out := map[uint64]float64{}
	for id, addr := range p.StatusAddrs() {
		v, err := (&gcHold{http: http.DefaultClient}).get(context.Background(), addr)
		if !assert.NoError(t, err) {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if assert.NoError(t, err) {
			out[id] = f
		}
	}
	return out
}

func setRatio(t *testing.T, p *playground.Playground, id uint64, v string) {
	t.Helper()
	require.NoError(t, (&gcHold{http: http.DefaultClient}).set(context.Background(), p.StatusAddrs()[id], v))
}

// gcBackup is a backup of a few keys, each version its own chunk with
// ChunkBytes 1.
func gcBackup(t *testing.T, ctx context.Context, tgt *playground.Playground) (*testBackup, uint64) {
	t.Helper()
	ts := func() uint64 {
		v, err := tgt.PD.TS(ctx)
		require.NoError(t, err)
		return v
	}
	start := ts()
	var rows []logfile.Row
	for i := 0; i < 6; i++ {
		c := ts()
		rows = append(rows, logfile.Row{Key: []byte{'a' + byte(i)}, CommitTS: c, StartTS: c - 1, Op: logfile.OpPut, Value: []byte("v")})
	}
	cp := ts()
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "gc", StartTs: start, StartedEmpty: true, ClusterId: 99})
	b.flush(1, cp, rows, &pitrpb.RegionCoverage{RegionId: 1, FromTs: start, ToTs: cp})
	b.checkpoint(cp)
	return b, cp
}

// TestRestoreHoldsTargetGC (R4): while the restore writes, every store of
// the target has gc.ratio-threshold -1, also a store that restarts (its
// value reset) once the hold is re-applied; at the end every store has its
// old value back and the progress file records none.
func TestRestoreHoldsTargetGC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts playgrounds")
	}
	ctx := context.Background()
	tgt := gcTarget(t, ctx)
	setRatio(t, tgt, 2, "2.5")
	b, cp := gcBackup(t, ctx, tgt)
	o := Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, Concurrency: 1, ChunkBytes: 1,
		GCHoldInterval: 20 * time.Millisecond, ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	var ingests int
	o.hooks = &hooks{ingested: func(*chunk, []kv) { // on a writer: assert, not require
		ingests++
		assert.Equal(t, map[uint64]float64{1: -1, 2: -1, 3: -1}, gcRatios(t, tgt), "GC is off on every store while the restore writes")
		assert.False(t, tgt.GCEnabled())
		if ingests != 2 {
			return
		}
		assert.NoError(t, tgt.StopStore(3))
		assert.NoError(t, tgt.StartStore(3))
		for deadline := time.Now().Add(20 * time.Second); gcRatios(t, tgt)[3] != -1; {
			if !assert.True(t, time.Now().Before(deadline), "the hold is never re-applied to the restarted store") {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}}
	_, err := Run(ctx, o)
	require.NoError(t, err)
	require.Greater(t, ingests, 2)
	require.Equal(t, map[uint64]float64{1: 1.1, 2: 2.5, 3: 1.1}, gcRatios(t, tgt), "old values set back")
	p, err := openProgress(o.ProgressFile, progressState{Storage: b.st.URL(), RestoreTS: cp, ClusterID: tgt.Cluster.ID()})
	require.NoError(t, err)
	require.Empty(t, p.gcRatios())
}

// TestRestoreSetsGCBack: a restore that fails after writing sets GC back
// and says how far it got; a rerun after a kill (the old values only in
// the progress file, the stores still at -1) sets them back too; a store
// that cannot be reached is a refusal before anything is written.
func TestRestoreSetsGCBack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts playgrounds")
	}
	ctx := context.Background()
	tgt := gcTarget(t, ctx)
	b, cp := gcBackup(t, ctx, tgt)
	opts := func() Options {
		return Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, Concurrency: 1, ChunkBytes: 1,
			ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	}
	key := progressState{Storage: b.st.URL(), RestoreTS: cp, ClusterID: tgt.Cluster.ID()}

	t.Run("unreachable store", func(t *testing.T) {
		o := opts()
		require.NoError(t, tgt.StopStore(3))
		_, err := Run(ctx, o)
		require.NoError(t, tgt.StartStore(3))
		require.ErrorIs(t, err, ErrUnavailable)
		require.Contains(t, err.Error(), "turn GC off on store 3 before writing")
		var we *WrittenError
		require.False(t, errors.As(err, &we), "a refusal, nothing written")
		require.Equal(t, map[uint64]float64{1: 1.1, 2: 1.1, 3: 1.1}, gcRatios(t, tgt), "stores 1 and 2 set back")
		snap := tgt.Engine.Snapshot()
		defer snap.Release()
		_, ok, err := snap.Get([]byte("a"), cp)
		require.NoError(t, err)
		require.False(t, ok, "nothing written")
	})

	t.Run("failure after writing", func(t *testing.T) {
		o := opts()
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		o.hooks = &hooks{ingested: func(*chunk, []kv) { cancel() }}
		_, err := Run(rctx, o)
		require.ErrorIs(t, err, context.Canceled)
		var we *WrittenError
		require.ErrorAs(t, err, &we)
		require.False(t, we.Finished)
		require.Equal(t, o.ProgressFile, we.ProgressFile)
		require.Equal(t, map[uint64]float64{1: 1.1, 2: 1.1, 3: 1.1}, gcRatios(t, tgt), "GC set back after the failure")

		// Killed: the stores at -1, the old values only in the file.
		p, err := openProgress(o.ProgressFile, key)
		require.NoError(t, err)
		for id, v := range map[uint64]string{1: "3", 2: "4", 3: "5"} {
			require.NoError(t, p.recordGCRatio(id, v))
			setRatio(t, tgt, id, "-1")
		}
		o.hooks = &hooks{ingested: func(*chunk, []kv) {
			assert.Equal(t, map[uint64]float64{1: -1, 2: -1, 3: -1}, gcRatios(t, tgt))
		}}
		_, err = Run(ctx, o)
		require.NoError(t, err)
		require.Equal(t, map[uint64]float64{1: 3, 2: 4, 3: 5}, gcRatios(t, tgt), "the values recorded before the kill")
		for id := uint64(1); id <= 3; id++ {
			setRatio(t, tgt, id, "1.1")
		}
	})
}

// TestRestoreOrderUnderForcedGC: random histories (puts and deletes of 30
// keys) spread over files of three stores whose commit ranges overlap (and
// some versions captured again, late, by another store), restored one file
// per pass with tiny chunks while a GC the knob cannot stop runs after
// every ingest: the target still reads exactly the source's state at T.
func TestRestoreOrderUnderForcedGC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground")
	}
	ctx := context.Background()
	tgt := gcTarget(t, ctx)
	base, err := tgt.PD.TS(ctx)
	require.NoError(t, err)
	const span = 3000
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	seed := rng.Int63()
	rng = rand.New(rand.NewSource(seed))
	t.Logf("seed %d", seed)

	type version struct {
		ts  uint64
		del bool
	}
	hist := map[string][]version{}
	var all []logfile.Row
	used := map[uint64]bool{}
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("k%02d", rng.Intn(30))
		ts := base + 1 + uint64(rng.Intn(span))
		if used[ts] {
			continue
		}
		used[ts] = true
		r := logfile.Row{Key: []byte(k), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut, Value: []byte(fmt.Sprintf("%s@%d", k, ts))}
		if rng.Intn(3) == 0 {
			r.Op, r.Value = logfile.OpDelete, nil
		}
		hist[k] = append(hist[k], version{ts: ts, del: r.Op == logfile.OpDelete})
		all = append(all, r)
	}
	var cp uint64
	for cp <= base+span {
		cp, err = tgt.PD.TS(ctx)
		require.NoError(t, err)
	}
	T := base + span*3/4
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "gc", StartTs: base, StartedEmpty: true, ClusterId: 99})
	cov := &pitrpb.RegionCoverage{RegionId: 1, FromTs: base, ToTs: cp}
	// Each store flushes 4 times; a flush holds the rows of a window that
	// overlaps its neighbours, plus a few old rows captured again.
	for f := 0; f < 4; f++ {
		for store := uint64(1); store <= 3; store++ {
			lo := base + uint64(f)*span/4 - span/8
			hi := base + uint64(f+1)*span/4 + span/8
			var rows []logfile.Row
			for _, r := range all {
				if r.CommitTS > lo && r.CommitTS <= hi && rng.Intn(3) == 0 {
					rows = append(rows, r)
				}
				if r.CommitTS <= lo && rng.Intn(40) == 0 {
					rows = append(rows, r)
				}
			}
			b.flush(store, base+uint64(f+1)*span/4+store, rows, cov)
		}
	}
	// Every row at least once: the last flush of store 1 takes the rest.
	b.flush(1, cp, all, cov)
	b.checkpoint(cp)

	o := Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: T, Concurrency: 2, ChunkBytes: 40,
		ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	o.MemoryBudget = ReadBudget(2, 0, 40)*-1 + 1 // one file per pass
	require.Equal(t, int64(1), ReadBudget(o.Concurrency, o.MemoryBudget, o.ChunkBytes))
	advanceGC(t, ctx, tgt, cp)
	var mu sync.Mutex
	ingests := 0
	o.hooks = &hooks{ingested: func(*chunk, []kv) {
		mu.Lock()
		defer mu.Unlock()
		ingests++
		_, err := tgt.Engine.GC(advanceGC(t, ctx, tgt, cp))
		assert.NoError(t, err)
	}}
	_, err = Run(ctx, o)
	require.NoError(t, err)
	t.Logf("%d ingests, each followed by a GC past T", ingests)

	snap := tgt.Engine.Snapshot()
	defer snap.Release()
	for k, vs := range hist {
		var newest *version
		for i := range vs {
			if vs[i].ts <= T && (newest == nil || vs[i].ts > newest.ts) {
				newest = &vs[i]
			}
		}
		v, ok, err := snap.Get([]byte(k), T)
		require.NoError(t, err)
		switch {
		case newest == nil || newest.del:
			require.False(t, ok, "%s: absent at T, restored %q", k, v)
		default:
			require.True(t, ok, "%s: want %s@%d", k, k, newest.ts)
			require.Equal(t, fmt.Sprintf("%s@%d", k, newest.ts), string(v))
		}
	}
}

type fakeStores []*metapb.Store

func (f fakeStores) GetAllStores(context.Context, ...opt.GetStoreOption) ([]*metapb.Store, error) {
	return f, nil
}

// TestGCHoldStores: the hold takes every TiKV store PD lists, skips
// TiFlash and tombstones, and refuses before any change when a TiKV store
// has no status address.
func TestGCHoldStores(t *testing.T) {
	ctx := context.Background()
	prog, err := openProgress(filepath.Join(t.TempDir(), "p.json"), progressState{Storage: "s", RestoreTS: 1, ClusterID: 1})
	require.NoError(t, err)
	tiflash := &metapb.Store{Id: 9, Address: "f:1", Labels: []*metapb.StoreLabel{{Key: "engine", Value: "tiflash"}}}
	tomb := &metapb.Store{Id: 8, Address: "t:1", State: metapb.StoreState_Tombstone}
	h := newGCHold(fakeStores{{Id: 2, Address: "b:1", StatusAddress: "b:2"}, tiflash, tomb, {Id: 1, Address: "a:1", StatusAddress: "a:2"}}, prog, hclog.NewNullLogger(), connector.TLS{}, http.DefaultClient)
	stores, err := h.tikvStores(ctx)
	require.NoError(t, err)
	require.Len(t, stores, 2)
	require.Equal(t, []uint64{1, 2}, []uint64{stores[0].GetId(), stores[1].GetId()})

	h = newGCHold(fakeStores{{Id: 1, Address: "a:1", StatusAddress: "a:2"}, {Id: 2, Address: "b:1"}}, prog, hclog.NewNullLogger(), connector.TLS{}, http.DefaultClient)
	err = h.start(ctx, time.Hour)
	require.ErrorIs(t, err, ErrUnavailable)
	require.Contains(t, err.Error(), "store 2 (b:1) has no status address in PD")
	require.Empty(t, prog.gcRatios(), "nothing changed")

	require.Equal(t, "http://a:2/config", statusURL(connector.TLS{}, "a:2"))
	require.Equal(t, "https://a:2/config", statusURL(connector.TLS{}, "https://a:2/"))
}
