package flush

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

func regions(ts uint64) []*pitrpb.RegionCoverage {
	return []*pitrpb.RegionCoverage{
		{RegionId: 1, EpochVersion: 2, EpochConfVer: 3, StartKey: nil, EndKey: []byte("m"), FromTs: ts / 2, ToTs: ts},
		{RegionId: 4, EpochVersion: 5, EpochConfVer: 6, StartKey: []byte("m"), EndKey: nil, FromTs: ts / 2, ToTs: ts},
	}
}

func TestFlush(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name      string
		cfg       Config
		rows      []logfile.Row
		twice     bool // add every row twice (duplicates across memory and spill)
		wantSpill bool
	}{
		{name: "empty"},
		{name: "memory only", rows: genRows(rng, 2000, 500, 100)},
		{name: "spilled", cfg: Config{Settings: Settings{MemoryBudget: 64 << 10}}, rows: genRows(rng, 3000, 1000, 100), wantSpill: true},
		{name: "duplicates across memory and spill", cfg: Config{Settings: Settings{MemoryBudget: 64 << 10}}, rows: genRows(rng, 1000, 300, 50), twice: true, wantSpill: true},
		{name: "duplicates in memory", rows: genRows(rng, 1000, 300, 50), twice: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := memStorage(t)
			rec := newRecorder(t, st)
			cfg := tc.cfg
			cfg.Storage = rec
			cfg.Dir = t.TempDir()
			f := newFlusher(t, cfg)

			added := addAll(t, f, clones(tc.rows), 37)
			if tc.twice {
				added = append(added, addAll(t, f, clones(tc.rows), 53)...)
			}
			require.Equal(t, tc.wantSpill, len(runFiles(t, cfg.Dir)) > 0, "spill runs on disk")

			ts := keyspace.Compose(400, 0)
			m, err := f.Flush(ctx, ts, regions(ts))
			require.NoError(t, err)
			require.Empty(t, runFiles(t, cfg.Dir), "spill runs are deleted after the flush")
			require.Zero(t, f.Stats().Spilled)
			require.Zero(t, f.Stats().Memory)
			require.Zero(t, f.Buffered())

			stored := metas(t, st)
			require.Len(t, stored, 1)
			require.True(t, proto.Equal(m, stored[0]), "returned meta equals the stored one")
			b, err := st.Get(ctx, logfile.MetaPath(ts, testStore))
			require.NoError(t, err)
			require.NotEmpty(t, b)
			require.EqualValues(t, testStore, m.StoreId)
			require.EqualValues(t, ts, m.FlushTs)
			require.Equal(t, "t1", m.Task)
			require.True(t, proto.Equal(&pitrpb.Meta{Regions: regions(ts)}, &pitrpb.Meta{Regions: m.Regions}))

			got := readMeta(t, st, m)
			exp := want(added)
			if len(exp) == 0 {
				require.Empty(t, got)
				require.Empty(t, m.Files)
			} else {
				require.Equal(t, exp, got, "files hold every row once, sorted")
			}
			require.Len(t, rec.dataKeys(), len(m.Files))
		})
	}
}

func TestFileCut(t *testing.T) {
	for _, rg := range []int64{0, 64 << 10} {
		t.Run(fmt.Sprintf("row group %d", rg), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			st := memStorage(t)
			const target = 1 << 20
			f := newFlusher(t, Config{Storage: st, Writer: logfile.WriterOptions{RowGroupBytes: rg}, Settings: Settings{FileTarget: target}})
			rows := genRows(rng, 5*1024, 1<<30, 1024) // ~5 MiB, incompressible
			added := addAll(t, f, rows, 100)
			m, err := f.Flush(context.Background(), keyspace.Compose(500, 0), nil)
			require.NoError(t, err)
			require.GreaterOrEqual(t, len(m.Files), 4)
			for i, df := range m.Files {
				if i < len(m.Files)-1 {
					require.GreaterOrEqual(t, df.Size, int64(target), "file %d of %d", i, len(m.Files))
					require.Less(t, df.Size, int64(target+target/2), "file %d of %d", i, len(m.Files))
				}
				if i > 0 {
					require.LessOrEqual(t, string(m.Files[i-1].MaxKey), string(df.MinKey), "files are in key order")
				}
			}
			require.Equal(t, want(added), readMeta(t, st, m))
		})
	}
}

// TestNoTailSliver: a flush whose data is a little over a whole number of
// files does not end with a sliver of a file; the tail joins the last one.
func TestNoTailSliver(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	st := memStorage(t)
	const target = 1 << 20
	f := newFlusher(t, Config{Storage: st, Writer: logfile.WriterOptions{RowGroupBytes: 32 << 10}, Settings: Settings{FileTarget: target}})
	rows := genRows(rng, 1024+200, 1<<30, 1024) // ~1.2 MiB, incompressible
	added := addAll(t, f, rows, 100)
	m, err := f.Flush(context.Background(), keyspace.Compose(500, 0), nil)
	require.NoError(t, err)
	require.Len(t, m.Files, 1, "one file, not one and a sliver")
	require.Greater(t, m.Files[0].Size, int64(target), "the tail joined the file")
	require.Equal(t, want(added), readMeta(t, st, m))

	// Over 1.5 files: the remainder is big enough for a file of its own.
	rows = genRows(rng, 1024+800, 1<<30, 1024)
	added = addAll(t, f, rows, 100)
	m, err = f.Flush(context.Background(), keyspace.Compose(501, 0), nil)
	require.NoError(t, err)
	require.Len(t, m.Files, 2)
	require.GreaterOrEqual(t, m.Files[0].Size, int64(target))
	require.GreaterOrEqual(t, m.Files[1].Size, int64(target/2))
	require.Equal(t, want(added), readMeta(t, st, m))
}

func TestSpillKeepsMemoryInBudget(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	st := memStorage(t)
	const budget = 256 << 10
	f := newFlusher(t, Config{Storage: st, Dir: dir, Registerer: reg, Settings: Settings{MemoryBudget: budget}})
	rows := genRows(rng, 20000, 5000, 100) // ~2.5 MiB
	kept := clones(rows)
	for i := 0; i < len(rows); i += 50 {
		require.NoError(t, f.Add(context.Background(), rows[i:i+50]))
		require.LessOrEqual(t, f.Stats().Memory, int64(budget/2))
	}
	s := f.Stats()
	require.Positive(t, s.Spilled)
	require.EqualValues(t, len(rows), s.BufferedRow)
	var logical int64
	for i := range kept {
		logical += kept[i].LogicalSize()
	}
	require.Equal(t, logical, f.Buffered(), "buffered counts memory and spilled rows")
	runs := runFiles(t, dir)
	require.Greater(t, len(runs), 5)
	require.EqualValues(t, len(runs), testutil.ToFloat64(f.m.spills))
	require.Equal(t, float64(s.Spilled), testutil.ToFloat64(f.m.spilled))

	m, err := f.Flush(context.Background(), keyspace.Compose(600, 0), nil)
	require.NoError(t, err)
	require.Equal(t, want(kept), readMeta(t, st, m))
	require.Empty(t, runFiles(t, dir))
	require.Zero(t, testutil.ToFloat64(f.m.spilled))
	require.Zero(t, testutil.ToFloat64(f.m.memory))
	require.EqualValues(t, len(want(kept)), testutil.ToFloat64(f.m.rows))
	require.EqualValues(t, len(m.Files), testutil.ToFloat64(f.m.files))
	require.EqualValues(t, 1, testutil.CollectAndCount(f.m.duration))
	var fileBytes int64
	for _, df := range m.Files {
		fileBytes += df.Size
	}
	require.InDelta(t, float64(fileBytes)/float64(logical), f.Stats().FileRatio, 1e-9)
}

// blockingAdder adds rows batch by batch in a goroutine and reports on
// blocked each time Add starts waiting.
type blockingAdder struct {
	blocked chan struct{}
	done    chan error
}

func startAdder(t *testing.T, f *Flusher, rows []logfile.Row, batch int) *blockingAdder {
	a := &blockingAdder{blocked: make(chan struct{}, 1), done: make(chan error, 1)}
	f.onBlock = func() {
		select {
		case a.blocked <- struct{}{}:
		default:
		}
	}
	go func() {
		for i := 0; i < len(rows); i += batch {
			if err := f.Add(context.Background(), rows[i:min(i+batch, len(rows))]); err != nil {
				a.done <- err
				return
			}
		}
		a.done <- nil
	}()
	return a
}

func TestBackpressure(t *testing.T) {
	tests := []struct {
		name        string
		spillBudget int64
		wantSpill   bool
	}{
		{name: "no spilling", spillBudget: -1},
		{name: "spill budget exhausted", spillBudget: 100 << 10, wantSpill: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(7, 8))
			st := memStorage(t)
			const budget = 64 << 10
			f := newFlusher(t, Config{Storage: st, Settings: Settings{MemoryBudget: budget, SpillBudget: tc.spillBudget}})
			rows := genRows(rng, 3000, 1<<30, 100)
			kept := clones(rows)
			a := startAdder(t, f, rows, 20)
			flushes, spilled := 0, false
			ts := keyspace.Compose(700, 0)
			for done := false; !done; {
				select {
				case err := <-a.done:
					require.NoError(t, err)
					done = true
				case <-a.blocked:
					// Add is blocked: nothing frees space but a flush.
					s := f.Stats()
					require.LessOrEqual(t, s.Memory, int64(budget))
					if tc.spillBudget > 0 {
						require.LessOrEqual(t, s.Spilled, tc.spillBudget)
					}
					spilled = spilled || s.Spilled > 0
					ts++
					_, err := f.Flush(ctx, ts, nil)
					require.NoError(t, err)
					flushes++
				}
			}
			ts++
			_, err := f.Flush(ctx, ts, nil)
			require.NoError(t, err)
			require.GreaterOrEqual(t, flushes, 2, "Add blocked and each flush released it")
			require.Equal(t, tc.wantSpill, spilled)
			total := 0
			for _, m := range metas(t, st) {
				for _, df := range m.Files {
					total += int(df.Rows)
				}
			}
			require.Equal(t, len(want(kept)), total, "every row in exactly one flush")
			require.Equal(t, want(kept), allStored(t, st))
		})
	}
}

func TestBlockedAddCancelled(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(9, 10))
	st := memStorage(t)
	f := newFlusher(t, Config{Storage: st, Settings: Settings{MemoryBudget: 64 << 10, SpillBudget: -1}})
	first := genRows(rng, 100, 1<<30, 100)
	kept := addAll(t, f, first, 100) // fills the memory side
	blocked := make(chan struct{}, 1)
	f.onBlock = func() { blocked <- struct{}{} }
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- f.Add(cctx, genRows(rng, 100, 1<<30, 100)) }()
	<-blocked
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	m, err := f.Flush(ctx, keyspace.Compose(800, 0), nil)
	require.NoError(t, err)
	require.Equal(t, want(kept), readMeta(t, st, m), "the cancelled batch was not taken")
}

// gate is an Uploader whose first data file upload waits until released.
type gate struct {
	Uploader
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (g *gate) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, logfile.LogPrefix) {
		g.once.Do(func() {
			close(g.entered)
			<-g.release
		})
	}
	return g.Uploader.PutReader(ctx, key, r, size)
}

func TestAddDuringFlushGoesToNextFlush(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(11, 12))
	st := memStorage(t)
	g := &gate{Uploader: st, entered: make(chan struct{}), release: make(chan struct{})}
	f := newFlusher(t, Config{Storage: g})
	a := addAll(t, f, genRows(rng, 500, 1<<30, 100), 50)

	type result struct {
		m   *pitrpb.Meta
		err error
	}
	res := make(chan result, 1)
	go func() {
		m, err := f.Flush(ctx, keyspace.Compose(900, 0), nil)
		res <- result{m, err}
	}()
	<-g.entered // the first flush has cut and is uploading
	b := addAll(t, f, genRows(rng, 300, 1<<30, 100), 30)
	var logical int64
	for i := range b {
		logical += b[i].LogicalSize()
	}
	require.Equal(t, logical, f.Buffered())
	close(g.release)
	r := <-res
	require.NoError(t, r.err)
	require.Equal(t, want(a), readMeta(t, st, r.m))

	m2, err := f.Flush(ctx, keyspace.Compose(901, 0), nil)
	require.NoError(t, err)
	require.Equal(t, want(b), readMeta(t, st, m2))
}

func TestConcurrentAddsAndFlushes(t *testing.T) {
	ctx := context.Background()
	st := memStorage(t)
	f := newFlusher(t, Config{Storage: st, Settings: Settings{MemoryBudget: 128 << 10, SpillBudget: 1 << 20, FileTarget: 64 << 10, UploadConcurrency: 3}})
	const adders, batches, batch = 4, 40, 25
	var mu sync.Mutex
	var all []logfile.Row
	var wg sync.WaitGroup
	for a := range adders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(a), 13))
			for i := range batches {
				rows := make([]logfile.Row, batch)
				for j := range rows {
					n := i*batch + j
					rows[j] = logfile.Row{
						Key:      []byte(fmt.Sprintf("a%d-%06d", a, rng.IntN(1000))),
						CommitTS: uint64(1000 + n*adders + a),
						StartTS:  uint64(n),
						Op:       logfile.OpPut,
						Value:    make([]byte, 200),
					}
				}
				kept := clones(rows)
				if err := f.Add(ctx, rows); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, kept...)
				mu.Unlock()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	ts := keyspace.Compose(1000, 0)
	for stop := false; !stop; {
		select {
		case <-done:
			stop = true
		default:
		}
		ts++
		_, err := f.Flush(ctx, ts, regions(ts))
		require.NoError(t, err)
	}
	total := 0
	ms := metas(t, st)
	for _, m := range ms {
		for _, df := range m.Files {
			total += int(df.Rows)
		}
	}
	require.Equal(t, adders*batches*batch, total, "every row in exactly one flush")
	require.Equal(t, want(all), allStored(t, st))
	require.Empty(t, runFiles(t, f.cfg.Dir))
}

func TestNewRemovesLeftoverRuns(t *testing.T) {
	dir := t.TempDir()
	old := runPath(dir, 3)
	require.NoError(t, os.WriteFile(old, []byte("PITRRUN1 torn"), 0o600))
	other := filepath.Join(dir, "keep.txt")
	require.NoError(t, os.WriteFile(other, nil, 0o600))
	newFlusher(t, Config{Storage: memStorage(t), Dir: dir})
	require.NoFileExists(t, old)
	require.FileExists(t, other)
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(14, 15))
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	f, err := New(Config{StoreID: 1, Task: "t", Dir: dir, Storage: memStorage(t), Registerer: reg, Settings: Settings{MemoryBudget: 32 << 10, SpillBudget: 64 << 10}})
	require.NoError(t, err)
	_, err = New(Config{StoreID: 1, Task: "t", Dir: t.TempDir(), Storage: memStorage(t), Registerer: reg})
	require.Error(t, err, "metrics are registered once per registerer")

	rows := genRows(rng, 2000, 1<<30, 100)
	a := startAdder(t, f, rows, 20)
	<-a.blocked
	require.NotEmpty(t, runFiles(t, dir))
	require.NoError(t, f.Close())
	require.ErrorIs(t, <-a.done, ErrClosed)
	require.Empty(t, runFiles(t, dir))
	require.ErrorIs(t, f.Add(ctx, genRows(rng, 1, 1, 1)), ErrClosed)
	_, err = f.Flush(ctx, 1, nil)
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, f.Close(), "Close is idempotent")

	f2, err := New(Config{StoreID: 1, Task: "t", Dir: t.TempDir(), Storage: memStorage(t), Registerer: reg})
	require.NoError(t, err, "Close unregistered the metrics")
	require.NoError(t, f2.Close())
}

func TestAddRejectsInvalidRows(t *testing.T) {
	f := newFlusher(t, Config{Storage: memStorage(t)})
	err := f.Add(context.Background(), []logfile.Row{
		{Key: []byte("a"), CommitTS: 2, Op: logfile.OpPut, Value: []byte("v")},
		{Key: []byte("b"), CommitTS: 2, Op: logfile.OpDelete, Value: []byte("v")},
	})
	require.Error(t, err)
	require.Zero(t, f.Buffered(), "a rejected batch is not taken")
}

func TestConfigValidate(t *testing.T) {
	st := memStorage(t)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no store", Config{Task: "t", Dir: "d", Storage: st}},
		{"no task", Config{StoreID: 1, Dir: "d", Storage: st}},
		{"no dir", Config{StoreID: 1, Task: "t", Storage: st}},
		{"no storage", Config{StoreID: 1, Task: "t", Dir: "d"}},
		{"negative memory", Config{StoreID: 1, Task: "t", Dir: "d", Storage: st, Settings: Settings{MemoryBudget: -1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			require.Error(t, err)
		})
	}
}
