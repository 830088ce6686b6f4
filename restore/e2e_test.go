package restore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pclog "github.com/pingcap/log"
	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

func TestMain(m *testing.M) {
	if lg, props, err := pclog.InitLogger(&pclog.Config{Level: "fatal"}); err == nil {
		pclog.ReplaceGlobals(lg, props)
	}
	os.Exit(m.Run())
}

func newTxnClient(t *testing.T, pdAddr string) *txnkv.Client {
	t.Helper()
	cli, err := workload.Connect(context.Background(), []string{pdAddr})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := cli.CurrentTimestamp("global"); err == nil {
			return cli
		}
		require.True(t, time.Now().Before(deadline), "get ts: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
}

// scanAt reads every key visible at ts through client-go.
func scanAt(t *testing.T, cli *txnkv.Client, ts uint64) map[string]string {
	t.Helper()
	out := map[string]string{}
	it, err := cli.GetSnapshot(ts).Iter([]byte{}, nil)
	require.NoError(t, err)
	defer it.Close()
	for it.Valid() {
		out[string(it.Key())] = string(it.Value())
		require.NoError(t, it.Next())
	}
	return out
}

// history is every committed version of the source, newest first per key.
type history []logfile.Row

func (h history) at(ts uint64) map[string]string {
	out := map[string]string{}
	seen := map[string]bool{}
	for _, r := range h { // key ASC, commit_ts DESC
		k := string(r.Key)
		if seen[k] || r.CommitTS > ts {
			continue
		}
		seen[k] = true
		if r.Op == logfile.OpPut {
			out[k] = string(r.Value)
		}
	}
	return out
}

type sourceFixture struct {
	b         *testBackup
	hist      history
	start, cp uint64
	src       *playground.Playground
	srcCli    *txnkv.Client
}

// newSource runs a workload on a 3-store playground (bank transfers plus
// puts and deletes of small and large values, while regions split and
// leaders move), then writes its MVCC history as a log backup: per window
// of time and per region a flush by some store, with the region's
// coverage; coarser regions early (as before splits); some rows captured
// twice.
func newSource(t *testing.T, ctx context.Context) *sourceFixture {
	t.Helper()
	src, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	cli := newTxnClient(t, src.PDAddr())
	start, err := src.PD.TS(ctx)
	require.NoError(t, err)

	bank := &workload.Bank{Client: cli, Prefix: "bank/", Accounts: 200, Initial: 100}
	require.NoError(t, bank.Init(ctx))
	wctx, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var bankErr error
	wg.Add(4)
	go func() { defer wg.Done(); bankErr = bank.Run(wctx, 3, &workload.Stats{}) }()
	kvWriter := func(seed int64) { // puts and deletes, values up to 600 bytes (short and long)
		defer wg.Done()
		rng := rand.New(rand.NewSource(seed))
		for wctx.Err() == nil {
			txn, err := cli.Begin()
			if err != nil {
				continue
			}
			for n := 1 + rng.Intn(8); n > 0; n-- {
				k := []byte(fmt.Sprintf("kv/%04d", rng.Intn(400)))
				if rng.Intn(4) == 0 {
					_ = txn.Delete(k)
				} else {
					_ = txn.Set(k, bytes.Repeat([]byte{byte('a' + rng.Intn(26))}, 1+rng.Intn(600)))
				}
			}
			_ = txn.Commit(wctx)
		}
	}
	go kvWriter(3)
	go kvWriter(7)
	go func() { // topology changes
		defer wg.Done()
		rng := rand.New(rand.NewSource(4))
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			if rng.Intn(2) == 0 {
				_, _ = src.Cluster.Split([]byte(fmt.Sprintf("kv/%04d", rng.Intn(400))))
				_, _ = src.Cluster.Split(bank.Key(rng.Intn(200)))
			} else {
				rs := src.Cluster.Regions()
				r := rs[rng.Intn(len(rs))]
				_ = src.Cluster.TransferLeader(r.ID, uint64(1+rng.Intn(3)))
			}
		}
	}()
	wg.Wait()
	require.NoError(t, bankErr)
	// Cancelled commits leave locks behind: read until every one has expired
	// and was resolved, so the history is final.
	for deadline := time.Now().Add(20 * time.Second); ; {
		now, err := cli.CurrentTimestamp("global")
		require.NoError(t, err)
		scanAt(t, cli, now)
		locks := 0
		snap := src.Engine.Snapshot()
		require.NoError(t, snap.Locks(nil, nil, func(*mvcc.Lock) error { locks++; return nil }))
		snap.Release()
		if locks == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "%d locks left", locks)
		time.Sleep(300 * time.Millisecond)
	}
	cp, err := src.PD.TS(ctx)
	require.NoError(t, err)

	var hist history
	snap := src.Engine.Snapshot()
	err = snap.DeltaScan(nil, nil, start, func(e mvcc.DeltaEntry) error {
		if e.Lock != nil && e.Lock.StartTS < cp {
			return fmt.Errorf("lock left at %q", e.Key)
		}
		for _, w := range e.Writes {
			r := logfile.Row{Key: append([]byte(nil), e.Key...), CommitTS: w.CommitTS, StartTS: w.Write.StartTS, Op: logfile.OpPut, Value: append([]byte{}, w.Value...)}
			if w.Write.Type == mvcc.WriteDelete {
				r.Op, r.Value = logfile.OpDelete, nil
			}
			if r.CommitTS <= cp {
				hist = append(hist, r)
			}
		}
		return nil
	})
	snap.Release()
	require.NoError(t, err)
	require.NotEmpty(t, hist)

	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "e2e", StartTs: start, StartedEmpty: true, ClusterId: src.Cluster.ID()})
	b.keyframeEvery = 3 // chains of 3 flushes: the first two of each store are sealed, so pitr compact has work
	regions := src.Cluster.Regions()
	const windows = 8
	cuts := make([]uint64, windows+1)
	for i := range cuts {
		cuts[i] = start + (cp-start)*uint64(i)/windows
	}
	rng := rand.New(rand.NewSource(5))
	var prev map[uint64][]logfile.Row
	for w := 1; w <= windows; w++ {
		type piece struct {
			start, end []byte
		}
		var pieces []piece
		for i := 0; i < len(regions); i++ {
			s, e := regions[i].RawRange()
			if w <= windows/2 && i+1 < len(regions) { // before the splits: two regions as one
				_, e = regions[i+1].RawRange()
				i++
			}
			pieces = append(pieces, piece{s, e})
		}
		byStore := map[uint64][]logfile.Row{}
		covByStore := map[uint64][]*pitrpb.RegionCoverage{}
		for i, pc := range pieces {
			store := uint64(1 + (i+w)%3)
			kr := keyspace.Range{Start: pc.start, End: pc.end}
			for _, r := range hist {
				if kr.Contains(r.Key) && r.CommitTS > cuts[w-1] && r.CommitTS <= cuts[w] {
					byStore[store] = append(byStore[store], r)
				}
			}
			covByStore[store] = append(covByStore[store], &pitrpb.RegionCoverage{RegionId: uint64(i + 1), StartKey: pc.start, EndKey: pc.end, FromTs: cuts[w-1], ToTs: cuts[w]})
		}
		for store := uint64(1); store <= 3; store++ {
			rows := byStore[store]
			for _, r := range prev[store] { // captured again after a leader change
				if rng.Intn(10) == 0 {
					rows = append(rows, r)
				}
			}
			b.flush(store, cuts[w], rows, covByStore[store]...)
		}
		prev = byStore
	}
	b.checkpoint(cp)
	return &sourceFixture{b: b, hist: hist, start: start, cp: cp, src: src, srcCli: cli}
}

// startTarget starts a target with its GC loop on, as a real cluster has
// (its 10 min GC life time keeps the safepoint below T here; gc_test.go
// drives GC past T).
func startTarget(t *testing.T, ctx context.Context, splits ...string) (*playground.Playground, *txnkv.Client) {
	t.Helper()
	p, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	for _, k := range splits {
		_, err := p.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	return p, newTxnClient(t, p.PDAddr())
}

func requireSame(t *testing.T, want, got map[string]string, what string) {
	t.Helper()
	if len(want) == len(got) {
		same := true
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	var diff []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			diff = append(diff, fmt.Sprintf("missing %q", k))
		} else if g != v {
			diff = append(diff, fmt.Sprintf("%q: got %d bytes, want %d", k, len(g), len(v)))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diff = append(diff, fmt.Sprintf("extra %q", k))
		}
	}
	sort.Strings(diff)
	t.Fatalf("%s: %d differences, first: %v", what, len(diff), diff[:min(len(diff), 10)])
}

func TestRestoreEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts playgrounds")
	}
	ctx := context.Background()
	s := newSource(t, ctx)
	res, err := Verify(ctx, s.b.st, VerifyOptions{})
	require.NoError(t, err)
	t.Logf("backup: %d versions, %d metas, %d files, %s", len(s.hist), res.Metas, res.Files, storage.FormatBytes(res.Bytes))
	opts := func(ts uint64, pd string) Options {
		return Options{Source: s.b.st, PDAddrs: []string{pd}, RestoreTS: ts, Concurrency: 3, ChunkBytes: 16 << 10,
			ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	}

	t.Run("exact", func(t *testing.T) {
		n := 5
		if os.Getenv("PITR_LONG") != "" {
			n = 20
		}
		rng := rand.New(rand.NewSource(time.Now().UnixNano()))
		ts := []uint64{s.start, s.cp}
		for len(ts) < n {
			ts = append(ts, s.start+1+uint64(rng.Int63n(int64(s.cp-s.start))))
		}
		for i, T := range ts {
			want := s.hist.at(T)
			requireSame(t, want, scanAt(t, s.srcCli, T), fmt.Sprintf("oracle at %d", T))
			tgt, cli := startTarget(t, ctx, "bank/account/00000100", "kv/0200")
			o := opts(T, tgt.PDAddr())
			var chaos sync.WaitGroup
			cctx, stopChaos := context.WithCancel(ctx)
			if i == 2 { // regions split and leaders move under the restore
				o.MaxAttempts = 100
				chaos.Add(1)
				go func() {
					defer chaos.Done()
					rng := rand.New(rand.NewSource(6))
					for cctx.Err() == nil {
						if rng.Intn(2) == 0 {
							_, _ = tgt.Cluster.Split([]byte(fmt.Sprintf("kv/%04d", rng.Intn(400))))
						} else {
							rs := tgt.Cluster.Regions()
							_ = tgt.Cluster.TransferLeader(rs[rng.Intn(len(rs))].ID, uint64(1+rng.Intn(3)))
						}
						time.Sleep(5 * time.Millisecond)
					}
				}()
			}
			res, err := Run(ctx, o)
			stopChaos()
			chaos.Wait()
			require.NoError(t, err, "restore to %d", T)
			t.Logf("T=%d: %s", T, res.Summary())
			requireSame(t, want, scanAt(t, cli, T), fmt.Sprintf("restored at %d", T))
			require.NoError(t, tgt.Close())
		}
	})

	t.Run("after compact", func(t *testing.T) {
		_, st := s.b.copyTo(t)
		res, err := Compact(ctx, st, CompactOptions{FileTarget: 64 << 10})
		require.NoError(t, err)
		require.Equal(t, 6, res.Chains, "two sealed chains a store")
		t.Log(res.Summary())
		rng := rand.New(rand.NewSource(time.Now().UnixNano()))
		points := []uint64{s.cp}
		for len(points) < 10 {
			points = append(points, s.start+1+uint64(rng.Int63n(int64(s.cp-s.start))))
		}
		for _, T := range points {
			tgt, cli := startTarget(t, ctx, "bank/account/00000100", "kv/0200")
			o := opts(T, tgt.PDAddr())
			o.Source = st
			_, err := Run(ctx, o)
			require.NoError(t, err, "restore to %d after compact", T)
			requireSame(t, s.hist.at(T), scanAt(t, cli, T), fmt.Sprintf("restored at %d after compact", T))
			require.NoError(t, tgt.Close())
		}
	})

	t.Run("refusals leave the target empty", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		mid := (s.start + s.cp) / 2
		dataFile := func(dir string) string {
			var f string
			_ = filepath.Walk(filepath.Join(dir, "log"), func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() && f == "" {
					f = p
				}
				return nil
			})
			require.NotEmpty(t, f)
			return f
		}
		for _, tc := range []struct {
			name  string
			setup func(o *Options)
			want  error
			text  string
		}{
			{name: "past checkpoint", setup: func(o *Options) { o.RestoreTS = s.cp + 1 }, want: ErrOutOfRange, text: "restorable range is ["},
			{name: "one byte flipped", setup: func(o *Options) {
				dir, st := s.b.copyTo(t)
				flipByte(t, dataFile(dir))
				o.Source = st
			}, want: ErrCorrupt, text: "has sha256"},
			{name: "missing file", setup: func(o *Options) {
				dir, st := s.b.copyTo(t)
				require.NoError(t, os.Remove(dataFile(dir)))
				o.Source = st
			}, want: ErrMissing, text: "is missing (referenced by meta/"},
			{name: "wrong storage", setup: func(o *Options) {
				_, st := (&testBackup{dir: t.TempDir()}).copyTo(t)
				o.Source = st
			}, want: ErrNotBackup, text: "has no pitr.lock"},
			{name: "snapshot root without a snapshot", setup: func(o *Options) {
				_, st := (&testBackup{dir: t.TempDir()}).copyTo(t)
				o.Snapshot = st
			}, want: ErrNotBackup, text: "holds no snapshot backup"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				o := opts(mid, tgt.PDAddr())
				tc.setup(&o)
				_, err := Run(ctx, o)
				require.ErrorIs(t, err, tc.want)
				require.Contains(t, err.Error(), tc.text)
				require.NotContains(t, err.Error(), "\n")
				now, err := cli.CurrentTimestamp("global")
				require.NoError(t, err)
				require.Empty(t, scanAt(t, cli, now), "the target stays empty")
			})
		}
	})

	t.Run("resume", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx, "kv/0100")
		T := s.start + (s.cp-s.start)*3/4
		o := opts(T, tgt.PDAddr())
		o.Concurrency, o.ChunkBytes = 2, 512
		rctx, cancel := context.WithCancel(ctx)
		var units, ingests atomic.Int64
		o.hooks = &hooks{
			ingested: func(*chunk, []kv) { ingests.Add(1) },
			unitsDone: func(us []keyspace.Range) {
				if units.Add(int64(len(us))) >= 3 {
					cancel()
				}
			},
		}
		_, err := Run(rctx, o)
		require.ErrorIs(t, err, context.Canceled)
		t.Logf("interrupted after %d chunks, %d units", ingests.Load(), units.Load())

		p, err := openProgress(o.ProgressFile, progressState{Storage: s.b.st.URL(), RestoreTS: T, ClusterID: tgt.Cluster.ID()})
		require.NoError(t, err)
		require.True(t, p.started())
		require.False(t, p.finished())
		done := p.done
		require.NotEmpty(t, done, "some ranges finished before the interruption")

		var rewritten, written atomic.Int64
		o.hooks = &hooks{ingested: func(c *chunk, rows []kv) {
			for i := range rows {
				written.Add(1)
				k := c.key(&rows[i])
				for _, d := range done {
					if d.Contains(k) {
						rewritten.Add(1)
					}
				}
			}
		}}
		res, err := Run(ctx, o)
		require.NoError(t, err)
		t.Logf("resumed: %s", res.Summary())
		require.Positive(t, res.UnitsSkipped)
		require.Zero(t, rewritten.Load(), "finished ranges are not written again")
		require.Positive(t, written.Load())
		requireSame(t, s.hist.at(T), scanAt(t, cli, T), "resumed restore")

		res, err = Run(ctx, o)
		require.NoError(t, err)
		require.True(t, res.AlreadyDone)

		o.ProgressFile = filepath.Join(t.TempDir(), "other.json")
		_, err = Run(ctx, o)
		require.ErrorIs(t, err, ErrTargetNotEmpty)
		require.True(t, strings.Contains(err.Error(), "holds key"), err.Error())
	})

	t.Run("bounded memory, many passes", func(t *testing.T) {
		tgt, cli := startTarget(t, ctx)
		o := opts(s.cp, tgt.PDAddr())
		o.Concurrency, o.MemoryBudget = 1, 2*o.ChunkBytes*3+1 // room for one file per pass
		res, err := Run(ctx, o)
		require.NoError(t, err)
		t.Logf("one file per pass: %s", res.Summary())
		requireSame(t, s.hist.at(s.cp), scanAt(t, cli, s.cp), "multi-pass restore")
	})
}
