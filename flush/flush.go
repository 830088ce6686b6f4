package flush

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// Uploader is the one storage method flush needs; storage.Storage has it.
// PutReader must be atomic: when it fails, nothing is visible under key.
type Uploader interface {
	PutReader(ctx context.Context, key string, r io.Reader, size int64) error
}

// Defaults for the zero fields of Config.
const (
	DefaultMemoryBudget      = 256 << 20
	DefaultSpillBudget       = 8 << 30
	DefaultFileTarget        = 128 << 20
	DefaultUploadConcurrency = 4
	// DefaultKeyframeEvery: a keyframe an hour at the agent's 5 s flushes.
	DefaultKeyframeEvery = 720
)

// ErrClosed: the Flusher was closed.
var ErrClosed = errors.New("flush: closed")

// Settings are the knobs of a Flusher its owner exposes to users: the
// agent's config embeds them rather than declaring its own. Zero fields
// take the defaults above.
type Settings struct {
	// MemoryBudget bounds the accounted size of rows held in memory (see
	// the package doc). Half of it is the spill threshold.
	MemoryBudget int64
	// SpillBudget bounds the bytes of spill runs on disk; when the next run
	// would not fit, Add blocks until a Flush frees space. Negative: never
	// spill (Add blocks at the memory budget).
	SpillBudget int64
	// FileTarget: a data file is closed once the bytes written reach this
	// size, so files are at least this big except the last of a flush, and
	// overshoot by at most about one row group.
	FileTarget int64
	// UploadConcurrency bounds the data files being uploaded at once.
	UploadConcurrency int
	// KeyframeEvery: every this many metas, a meta lists every region it
	// covers (a keyframe) instead of what changed since the one before
	// (logfile.Chain), so a chain stays short for readers and for
	// retention, which keeps a chain from its keyframe on.
	KeyframeEvery int
}

// SetDefaults fills the zero fields with the defaults.
func (s *Settings) SetDefaults() {
	if s.MemoryBudget == 0 {
		s.MemoryBudget = DefaultMemoryBudget
	}
	if s.SpillBudget == 0 {
		s.SpillBudget = DefaultSpillBudget
	}
	if s.FileTarget == 0 {
		s.FileTarget = DefaultFileTarget
	}
	if s.UploadConcurrency == 0 {
		s.UploadConcurrency = DefaultUploadConcurrency
	}
	if s.KeyframeEvery == 0 {
		s.KeyframeEvery = DefaultKeyframeEvery
	}
}

// Config configures a Flusher. Zero numeric fields take the defaults above.
type Config struct {
	StoreID uint64
	Task    string
	// Dir is the local spill directory, used by this Flusher only. New
	// creates it and deletes spill runs left in it by an earlier process.
	Dir string
	Settings
	// Writer is passed to logfile.NewWriter for every data file, with
	// RowGroupBytes capped at FileTarget/8.
	Writer logfile.WriterOptions

	Storage    Uploader
	Logger     hclog.Logger          // nil: no logging
	Registerer prometheus.Registerer // nil: metrics are not registered
}

func (c *Config) setDefaults() {
	c.Settings.SetDefaults()
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// Validate reports the first invalid field (after defaults are applied).
func (c *Config) Validate() error {
	switch {
	case c.StoreID == 0:
		return errors.New("flush: store id is required")
	case c.Task == "":
		return errors.New("flush: task is required")
	case c.Dir == "":
		return errors.New("flush: spill dir is required")
	case c.Storage == nil:
		return errors.New("flush: storage is required")
	case c.MemoryBudget < 0:
		return errors.New("flush: memory budget must be positive")
	case c.FileTarget < 0:
		return errors.New("flush: file target must be positive")
	case c.UploadConcurrency < 0:
		return errors.New("flush: upload concurrency must be positive")
	}
	return nil
}

// Flusher buffers rows and flushes them to storage. See the package doc.
type Flusher struct {
	cfg  Config
	log  hclog.Logger
	m    *metrics
	half int64 // spill threshold of the current generation: MemoryBudget/2

	flushSem chan struct{} // held by the running Flush (and by Close)
	chain    logfile.Chain // the coverage of the last stored meta; flushSem guards it

	mu          sync.Mutex
	cur         *gen          // rows added since the last cut
	inflight    *gen          // taken by the running Flush, nil otherwise
	spillingMem int64         // accounted memory of the rows being spilled
	spillUsed   int64         // bytes of spill runs on disk or reserved by the running spill
	spilling    bool          // one spill at a time
	changed     chan struct{} // closed and replaced when memory or spill space is freed or a spill ends
	closed      bool
	runSeq      uint64
	storedBytes int64 // file bytes of the stored flushes
	storedLog   int64 // their logical bytes

	// onBlock, when set (tests), is called each time Add starts waiting.
	onBlock func()
}

// gen is one generation: the rows one Flush takes.
type gen struct {
	chunks   [][]logfile.Row // in memory, as added
	memBytes int64           // accounted size of chunks
	memRun   int64           // record bytes chunks would take in a spill run
	runs     []*run          // spilled
	spilling int             // spills of this generation being written
	rows     int64           // all rows: memory, spilled, being spilled
	logical  int64           // their logical size
}

// rowOverhead is the accounted memory of a row beyond its byte slices: the
// Row itself and the pointer the sort uses.
const rowOverhead = int64(unsafe.Sizeof(logfile.Row{})) + 8

func memSize(r *logfile.Row) int64 {
	return int64(len(r.Key)+len(r.Value)+len(r.OldValue)) + rowOverhead
}

// New returns a Flusher. It creates cfg.Dir and deletes the spill runs an
// earlier process left there.
func New(cfg Config) (*Flusher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create spill dir: %w", err)
	}
	if err := removeRuns(cfg.Dir); err != nil {
		return nil, fmt.Errorf("remove old spill runs: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Flusher{
		cfg:      cfg,
		log:      cfg.Logger.Named("flush"),
		m:        m,
		half:     max(cfg.MemoryBudget/2, 1),
		flushSem: make(chan struct{}, 1),
		cur:      &gen{},
		changed:  make(chan struct{}),
	}, nil
}

// notifyLocked wakes every waiter. f.mu is held.
func (f *Flusher) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *Flusher) gaugesLocked() {
	mem := f.cur.memBytes + f.spillingMem
	if f.inflight != nil {
		mem += f.inflight.memBytes
	}
	f.m.memory.Set(float64(mem))
	f.m.spilled.Set(float64(f.spillUsed))
	f.m.buffered.Set(float64(f.cur.logical))
}

// Add buffers rows for the next Flush and takes ownership of them (and of
// their byte slices). It blocks while the memory and spill budgets are
// exhausted, until a Flush frees space, ctx ends or the Flusher is closed.
// It never drops rows: on a nil error all rows were taken; on an error none
// was (invalid row, failed spill, ctx, ErrClosed).
func (f *Flusher) Add(ctx context.Context, rows []logfile.Row) error {
	if len(rows) == 0 {
		return nil
	}
	var mem, recs, logical int64
	for i := range rows {
		r := &rows[i]
		if err := r.Validate(); err != nil {
			return fmt.Errorf("add row %d: %w", i, err)
		}
		if len(r.Key)+len(r.Value)+len(r.OldValue) > maxRecord {
			return fmt.Errorf("add row %d: %d bytes is too big", i, len(r.Key)+len(r.Value)+len(r.OldValue))
		}
		mem += memSize(r)
		recs += recordSize(r)
		logical += r.LogicalSize()
	}
	f.mu.Lock()
	for {
		if f.closed {
			f.mu.Unlock()
			return ErrClosed
		}
		g := f.cur
		side := g.memBytes + f.spillingMem
		if side == 0 || side+mem <= f.half {
			g.chunks = append(g.chunks, rows)
			g.memBytes += mem
			g.memRun += recs
			g.rows += int64(len(rows))
			g.logical += logical
			f.gaugesLocked()
			f.mu.Unlock()
			return nil
		}
		if !f.spilling && g.memBytes > 0 && f.cfg.SpillBudget >= 0 && f.spillUsed+runSize(g.memRun) <= f.cfg.SpillBudget {
			if err := f.spillLocked(); err != nil {
				f.mu.Unlock()
				return err
			}
			continue
		}
		ch := f.changed
		f.mu.Unlock()
		if f.onBlock != nil {
			f.onBlock()
		}
		start := time.Now()
		select {
		case <-ch:
		case <-ctx.Done():
			f.m.blocked.Add(time.Since(start).Seconds())
			return ctx.Err()
		}
		f.m.blocked.Add(time.Since(start).Seconds())
		f.mu.Lock()
	}
}

// spillLocked writes the in-memory rows of the current generation to a new
// spill run. f.mu is held on entry and on return, and released while the
// run is written, so other Adds (into a fresh, empty memory side) and a
// Flush cut can proceed; the cut waits for the spill before reading.
func (f *Flusher) spillLocked() error {
	g := f.cur
	chunks, mem, recs := g.chunks, g.memBytes, g.memRun
	size := runSize(recs)
	g.chunks, g.memBytes, g.memRun = nil, 0, 0
	g.spilling++
	f.spilling = true
	f.spillingMem += mem
	f.spillUsed += size
	f.runSeq++
	path := runPath(f.cfg.Dir, f.runSeq)
	f.gaugesLocked()
	f.mu.Unlock()

	start := time.Now()
	rows := sortChunks(chunks)
	err := writeRun(path, rows)
	var logical int64
	for _, r := range rows {
		logical += r.LogicalSize()
	}

	f.mu.Lock()
	g.spilling--
	f.spilling = false
	f.spillingMem -= mem
	if err != nil {
		f.spillUsed -= size
		g.chunks = append(g.chunks, chunks...)
		g.memBytes += mem
		g.memRun += recs
	} else {
		g.runs = append(g.runs, &run{path: path, size: size, rows: int64(len(rows)), logical: logical})
		f.m.spills.Inc()
		f.m.spillBytes.Add(float64(size))
	}
	f.gaugesLocked()
	f.notifyLocked()
	if err != nil {
		f.log.Error("spill failed", "path", path, "error", err)
		return fmt.Errorf("spill: %w", err)
	}
	f.log.Debug("spilled", "path", path, "rows", len(rows), "bytes", size, "duration", time.Since(start))
	return nil
}

// sortChunks returns pointers to every row, sorted by logfile.Compare.
func sortChunks(chunks [][]logfile.Row) []*logfile.Row {
	n := 0
	for _, c := range chunks {
		n += len(c)
	}
	rows := make([]*logfile.Row, 0, n)
	for _, c := range chunks {
		for i := range c {
			rows = append(rows, &c[i])
		}
	}
	slices.SortFunc(rows, logfile.Compare)
	return rows
}

// Buffered returns the logical bytes (key+value) added and not yet taken by
// a Flush, in memory and spilled (CutDue says when that makes a file).
func (f *Flusher) Buffered() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur.logical
}

// CutDue reports whether the buffer holds enough for a flush to make files
// of about FileTarget: the flush's size policy (the agent adds its time
// policy, FlushInterval, on top).
func (f *Flusher) CutDue() bool {
	st := f.Stats()
	return st.Buffered >= cutAt(f.cfg.FileTarget, st.FileRatio)
}

// cutAt is the buffered logical size at which a flush makes files of about
// the target size: the buffer is counted in key+value bytes, files in stored
// (compressed) bytes, so the cut waits for target/ratio logical bytes, with
// the ratio measured by the flushes so far (before any, the cut is at the
// target itself, making the first file smaller).
func cutAt(target int64, ratio float64) int64 {
	if ratio <= 0 || ratio > 1 {
		return target
	}
	return int64(float64(target) / max(ratio, 0.05))
}

// Stats is a snapshot of the Flusher's buffers.
type Stats struct {
	Buffered    int64 // as Buffered
	BufferedRow int64 // rows added and not yet taken by a Flush
	Memory      int64 // accounted bytes in memory, a running Flush included
	Spilled     int64 // bytes of spill runs on disk, a running Flush's included
	// FileRatio is stored file bytes per logical byte over the flushes so
	// far (0 before the first with rows). Buffered is logical: a flush cut
	// at Buffered >= FileTarget/FileRatio yields files of about FileTarget.
	FileRatio float64
}

// Stats returns a snapshot of the buffers (for the agent's Status RPC).
func (f *Flusher) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	mem := f.cur.memBytes + f.spillingMem
	if f.inflight != nil {
		mem += f.inflight.memBytes
	}
	s := Stats{Buffered: f.cur.logical, BufferedRow: f.cur.rows, Memory: mem, Spilled: f.spillUsed}
	if f.storedLog > 0 {
		s.FileRatio = float64(f.storedBytes) / float64(f.storedLog)
	}
	return s
}

// Flush cuts: it takes every row added before the call (rows added during
// the call go to the next Flush), writes them as sorted data files of about
// FileTarget bytes, uploads them, and then stores the meta at
// logfile.MetaPath(flushTS, StoreID) listing the files and regions. It
// returns that meta once it is stored. A flush without rows still stores a
// meta: its region coverage is checkpoint progress.
//
// On error no row is lost: the taken rows go back to the buffer and out
// with the next Flush; data files already stored are unreferenced orphans
// (I5). The regions passed to a failed Flush are not retried: the caller
// passes coverage again (from its last stored checkpoint) next time.
//
// The meta says only what changed since the Flusher's previous one
// (logfile.Chain; a keyframe every KeyframeEvery metas and after a failed
// Flush): Flush may lower a region's ToTs to what the meta claims for it,
// and the caller advances its regions from the ToTs it finds afterwards.
// Flushes run one at a time.
func (f *Flusher) Flush(ctx context.Context, flushTS uint64, regions []*pitrpb.RegionCoverage) (*pitrpb.Meta, error) {
	select {
	case f.flushSem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-f.flushSem }()

	start := time.Now()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, ErrClosed
	}
	g := f.cur
	f.cur = &gen{}
	f.inflight = g
	f.gaugesLocked()
	// A spill of g may still be running; it is local I/O of bounded size,
	// so wait without ctx (g must not go back while a spill writes to it).
	for g.spilling > 0 {
		ch := f.changed
		f.mu.Unlock()
		<-ch
		f.mu.Lock()
	}
	f.mu.Unlock()

	meta, err := f.flushGen(ctx, g, flushTS, regions)

	f.mu.Lock()
	f.inflight = nil
	if err != nil {
		// Give the rows back: they join the current generation.
		c := f.cur
		c.chunks = append(g.chunks, c.chunks...)
		c.memBytes += g.memBytes
		c.memRun += g.memRun
		c.runs = append(g.runs, c.runs...)
		c.rows += g.rows
		c.logical += g.logical
	}
	f.gaugesLocked()
	f.notifyLocked()
	f.mu.Unlock()

	if err != nil {
		f.m.duration.WithLabelValues("error").Observe(time.Since(start).Seconds())
		f.log.Warn("flush failed; its rows go out with the next flush", "flush_ts", flushTS, "rows", g.rows, "error", err)
		return nil, err
	}
	// The meta is stored: the spill runs are no longer needed.
	var freed int64
	for _, r := range g.runs {
		if rerr := os.Remove(r.path); rerr != nil {
			f.log.Warn("remove spill run", "path", r.path, "error", rerr)
		}
		freed += r.size
	}
	var fileBytes, rows, logical int64
	for _, df := range meta.Files {
		fileBytes += df.Size
		rows += df.Rows
		logical += df.LogicalBytes
	}
	f.mu.Lock()
	f.spillUsed -= freed
	f.storedBytes += fileBytes
	f.storedLog += logical
	f.gaugesLocked()
	f.notifyLocked()
	f.mu.Unlock()

	f.m.duration.WithLabelValues("ok").Observe(time.Since(start).Seconds())
	f.m.files.Add(float64(len(meta.Files)))
	f.m.fileBytes.Add(float64(fileBytes))
	f.m.rows.Add(float64(rows))
	f.m.logicalBytes.Add(float64(logical))
	f.log.Info("flushed", "flush_ts", flushTS, "files", len(meta.Files), "rows", rows,
		"logical_bytes", logical, "file_bytes", fileBytes, "spill_runs", len(g.runs),
		"regions", len(regions), "duration", time.Since(start))
	return meta, nil
}

// Close waits for a running Flush, then releases the Flusher: blocked and
// later Adds and Flushes fail with ErrClosed, and the spill runs are
// deleted (their rows were never covered by a meta, so the agent captures
// them again). Cancel a running Flush's context to make Close quick.
func (f *Flusher) Close() error {
	f.flushSem <- struct{}{}
	defer func() { <-f.flushSem }()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.notifyLocked()
	for f.spilling {
		ch := f.changed
		f.mu.Unlock()
		<-ch
		f.mu.Lock()
	}
	f.cur = &gen{}
	f.spillUsed = 0
	f.gaugesLocked()
	f.mu.Unlock()
	f.m.unregister()
	if err := removeRuns(f.cfg.Dir); err != nil {
		return fmt.Errorf("remove spill runs: %w", err)
	}
	return nil
}
