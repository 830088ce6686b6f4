package restore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// The faulty target: an in-memory cluster behind writeTarget, so the write
// pipeline (runner, tracker, progress, and the real retry policy of
// writeRegion over regionOps) is tested without a playground, under faults
// a playground cannot produce on demand.
//
// fakeCluster is the truth: its regions and the versions ingested into it.
// A test's runs share one (a rerun writes into what the first run left).
// faultyTarget is one run's client of it: a region cache that can go
// stale, SSTs written and not yet ingested, and the faults it injects.

// fakeClusterID is the target cluster id in the progress file.
const fakeClusterID = 4242

type fakeVersion struct {
	key string
	ts  uint64
}

type fakeValue struct {
	del   bool
	value string
}

type fakeCluster struct {
	mu       sync.Mutex
	regions  []*region // sorted by start, disjoint, covering every key
	nextID   uint64
	versions map[fakeVersion]fakeValue
	applied  map[fakeVersion]int       // how many times each version was ingested
	want     map[fakeVersion]fakeValue // the plan, checked whenever units are recorded done
	newest   map[string]uint64         // per key, the newest commit_ts ingested
	// violations are what a real TiKV would have refused or corrupted:
	// rows out of (key ASC, commit_ts DESC) order in one SST, rows outside
	// the SST's region, two values for one version.
	violations []string
}

// newFakeCluster starts with one region per split key interval; want is
// what the restore must ingest.
func newFakeCluster(want map[fakeVersion]fakeValue, splits ...string) *fakeCluster {
	cl := &fakeCluster{versions: map[fakeVersion]fakeValue{}, applied: map[fakeVersion]int{}, want: want, newest: map[string]uint64{}}
	var start []byte
	for _, s := range append(splits, "") {
		cl.nextID++
		cl.regions = append(cl.regions, &region{id: cl.nextID, epoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
			start: start, end: []byte(s)})
		start = []byte(s)
	}
	for _, r := range cl.regions {
		r.peers = []*metapb.Peer{{Id: r.id*10 + 1, StoreId: 1}}
		r.leader = r.peers[0]
	}
	return cl
}

// regionLocked returns the current region holding key.
func (cl *fakeCluster) regionLocked(key []byte) *region {
	for _, r := range cl.regions {
		if r.contains(key) {
			return r
		}
	}
	panic("the fake's regions do not cover " + keyspace.FormatKey(key))
}

// splitLocked splits the region with id at key (strictly inside it): both
// halves get a newer epoch version, so SSTs built for the old one fail
// their ingest with EpochNotMatch, as on TiKV.
func (cl *fakeCluster) splitLocked(id uint64, key []byte) bool {
	i := slices.IndexFunc(cl.regions, func(r *region) bool { return r.id == id })
	if i < 0 {
		return false
	}
	old := cl.regions[i]
	if bytes.Compare(key, old.start) <= 0 || !keyspace.BeforeEnd(key, old.end) {
		return false
	}
	v := old.epoch.GetVersion() + 1
	cl.nextID++
	left := &region{id: cl.nextID, epoch: &metapb.RegionEpoch{ConfVer: 1, Version: v}, start: old.start, end: slices.Clone(key)}
	right := &region{id: old.id, epoch: &metapb.RegionEpoch{ConfVer: 1, Version: v}, start: slices.Clone(key), end: old.end}
	for _, r := range []*region{left, right} {
		r.peers = []*metapb.Peer{{Id: r.id*10 + 1, StoreId: 1}}
		r.leader = r.peers[0]
	}
	cl.regions = slices.Replace(cl.regions, i, i+1, left, right)
	return true
}

// applyLocked ingests rows. A version new to the target must be newer
// than every version of its key already there (audit F1: an older Put
// arriving after a Delete that a GC could have collected brings the key
// back); versions already there may come again (I5).
func (cl *fakeCluster) applyLocked(rows []fakeRow, seen map[string]int) {
	before := map[string]uint64{} // newest version of each key before this SST
	for _, r := range rows {
		if _, ok := before[r.key]; !ok {
			before[r.key] = cl.newest[r.key]
		}
	}
	for _, r := range rows {
		if _, ok := cl.versions[fakeVersion{key: r.key, ts: r.ts}]; !ok && r.ts < before[r.key] {
			cl.violations = append(cl.violations, fmt.Sprintf("version %s@%d ingested after the newer %s@%d", r.key, r.ts, r.key, before[r.key]))
		}
		cl.newest[r.key] = max(cl.newest[r.key], r.ts)
	}
	for _, r := range rows {
		v := fakeVersion{key: r.key, ts: r.ts}
		val := fakeValue{del: r.del, value: r.value}
		if old, ok := cl.versions[v]; ok && old != val {
			cl.violations = append(cl.violations, fmt.Sprintf("version %q@%d written with two values", r.key, r.ts))
		}
		cl.versions[v] = val
		cl.applied[v]++
		seen[r.key]++
	}
}

type fakeRow struct {
	key   string
	ts    uint64
	del   bool
	value string
}

// fault is one injected failure of a region write or ingest.
type fault int

const (
	faultNone fault = iota
	// faultBusy: ServerIsBusy at the ingest; the SSTs stay valid and the
	// writer retries the ingest alone.
	faultBusy
	// faultNotLeader: NotLeader at the ingest; the writer refreshes the
	// region and writes again.
	faultNotLeader
	// faultSplit: the region splits between the write and the ingest, so
	// the ingest fails with EpochNotMatch and the writer routes the rows
	// again, now to two regions.
	faultSplit
	// faultMissingFile: the store lost the SST ("file does not exist");
	// the writer writes again.
	faultMissingFile
	// faultLostReply: the ingest succeeds but its answer is lost (an
	// error comes back), so the writer writes and ingests the same rows
	// again: duplicate delivery (I5).
	faultLostReply
	// faultWrite: the Write stream to a store fails (unreachable); an
	// attempt, retried.
	faultWrite
	// faultPermanent: DiskFull at the ingest, which no retry fixes.
	faultPermanent
	faultCount
)

var faultNames = [...]string{"none", "busy", "not leader", "split", "missing file", "lost reply", "write", "permanent"}

func (f fault) String() string { return faultNames[f] }

// faultPlan says what a faultyTarget injects. Rates are per call, drawn
// from the seeded generator; script forces a fault at the n-th ingest
// (1-based), whatever the rates.
type faultPlan struct {
	rates      [faultCount]float64
	script     map[int]fault
	crashAfter int // cancel the run once this many chunks are written (0: never)
	// crashGate, when set, holds the crash back until it says so: with
	// several writers a unit is recorded done only once every earlier
	// chunk is ingested, so a test that needs units done before the crash
	// waits for them here.
	crashGate func() bool
	maxDelay  time.Duration // each chunk write first waits a random time up to this
	dupChunks float64       // rate of chunks delivered twice, whole
}

type faultyTarget struct {
	cl     *fakeCluster
	plan   faultPlan
	policy retryPolicy
	log    hclog.Logger
	cancel context.CancelFunc // the run's: a crash

	mu       sync.Mutex
	rng      *rand.Rand
	cache    []*region // the client's view: stale after a split
	pending  map[uuid.UUID][]fakeRow
	ingests  int // ingest calls
	chunks   int // chunks fully written
	crashed  bool
	injected map[fault]int  // faults injected, by kind
	seen     map[string]int // keys ingested by this run, with counts
}

var (
	_ writeTarget = (*faultyTarget)(nil)
	_ regionOps   = (*faultyTarget)(nil)
)

func newFaultyTarget(cl *fakeCluster, plan faultPlan, seed int64, cancel context.CancelFunc) *faultyTarget {
	return &faultyTarget{cl: cl, plan: plan, log: hclog.NewNullLogger(), cancel: cancel,
		// The real policy's shape, with short waits: a test sees thousands
		// of retries.
		policy: retryPolicy{maxAttempts: 30, minBackoff: time.Millisecond, maxBackoff: 4 * time.Millisecond,
			busyTimeout: 5 * time.Second, busyMinBackoff: time.Millisecond, busyMaxBackoff: 4 * time.Millisecond},
		rng: rand.New(rand.NewSource(seed)), pending: map[uuid.UUID][]fakeRow{},
		injected: map[fault]int{}, seen: map[string]int{}}
}

func (f *faultyTarget) locateRetry(ctx context.Context, key []byte) (*region, error) {
	return locateRetry(ctx, f, &f.policy, key)
}

// writeChunk runs the real writeChunk over the fake's regionOps, after an
// optional delay, and may deliver the chunk a second time or crash after it.
func (f *faultyTarget) writeChunk(ctx context.Context, c *chunk, onIngest func(regionID uint64, rows []kv)) error {
	f.mu.Lock()
	var delay time.Duration
	if f.plan.maxDelay > 0 {
		delay = time.Duration(f.rng.Int63n(int64(f.plan.maxDelay)))
	}
	dup := f.rng.Float64() < f.plan.dupChunks
	f.mu.Unlock()
	if delay > 0 {
		if err := f.policy.sleep(ctx, delay); err != nil {
			return err
		}
	}
	if err := writeChunk(ctx, f, &f.policy, f.log, c, onIngest); err != nil {
		return err
	}
	if dup {
		if err := writeChunk(ctx, f, &f.policy, f.log, c, nil); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.chunks++
	crash := f.plan.crashAfter > 0 && f.chunks >= f.plan.crashAfter && !f.crashed &&
		(f.plan.crashGate == nil || f.plan.crashGate())
	f.crashed = f.crashed || crash
	f.mu.Unlock()
	if crash {
		f.cancel()
	}
	return nil
}

func (f *faultyTarget) locate(_ context.Context, key []byte) (*region, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.cache {
		if r.contains(key) {
			return r, nil
		}
	}
	f.cl.mu.Lock()
	cur := f.cl.regionLocked(key)
	r := &region{id: cur.id, epoch: &metapb.RegionEpoch{ConfVer: cur.epoch.GetConfVer(), Version: cur.epoch.GetVersion()},
		peers: cur.peers, leader: cur.leader, start: cur.start, end: cur.end}
	f.cl.mu.Unlock()
	f.cache = slices.DeleteFunc(f.cache, func(o *region) bool {
		return keyspace.BeforeEnd(o.start, r.end) && keyspace.BeforeEnd(r.start, o.end)
	})
	f.cache = append(f.cache, r)
	return r, nil
}

func (f *faultyTarget) invalidate(r *region) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cache = slices.DeleteFunc(f.cache, func(o *region) bool { return o == r || o.id == r.id })
}

// draw picks the fault of the n-th call among kinds (script first).
func (f *faultyTarget) drawLocked(n int, kinds ...fault) fault {
	if k, ok := f.plan.script[n]; ok {
		return k
	}
	for _, k := range kinds {
		if f.plan.rates[k] > 0 && f.rng.Float64() < f.plan.rates[k] {
			return k
		}
	}
	return faultNone
}

func (f *faultyTarget) writePeers(ctx context.Context, c *chunk, rows []kv) (*written, error) {
	if err := ctx.Err(); err != nil { // as a gRPC call on a dead context
		return nil, err
	}
	reg, err := f.locate(ctx, c.key(&rows[0]))
	if err != nil {
		return nil, err
	}
	n := 0
	for n < len(rows) && keyspace.BeforeEnd(c.key(&rows[n]), reg.end) {
		n++
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.drawLocked(-1, faultWrite) == faultWrite { // by rate only: the script numbers ingests
		f.injected[faultWrite]++
		return nil, fmt.Errorf("write to store 1: unavailable (injected)")
	}
	out := make([]fakeRow, n)
	for i := range rows[:n] {
		r := &rows[i]
		k := c.key(r)
		if !reg.contains(k) {
			f.violate("key %q outside region %d [%q, %q)", k, reg.id, reg.start, reg.end)
		}
		if i > 0 {
			pk, pts := c.key(&rows[i-1]), rows[i-1].ts
			if d := bytes.Compare(pk, k); d > 0 || (d == 0 && pts <= r.ts) {
				f.violate("SST rows out of order: %q@%d before %q@%d", pk, pts, k, r.ts)
			}
		}
		out[i] = fakeRow{key: string(k), ts: r.ts, del: r.del, value: string(c.value(r))}
	}
	id := uuid.New()
	f.pending[id] = out
	return &written{reg: reg, n: n,
		metas: []*import_sstpb.SSTMeta{sstMeta(id, reg, c.key(&rows[0]), c.key(&rows[n-1]))}}, nil
}

func (f *faultyTarget) violate(format string, args ...any) {
	f.cl.mu.Lock()
	f.cl.violations = append(f.cl.violations, fmt.Sprintf(format, args...))
	f.cl.mu.Unlock()
}

func (f *faultyTarget) ingest(ctx context.Context, w *written) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ingests++
	id := uuid.UUID(w.metas[0].GetUuid())
	rows, ok := f.pending[id]
	reg := w.reg
	regErr := func(e *errorpb.Error) error { return &regionError{region: reg.id, err: e} }
	if !ok {
		return regErr(&errorpb.Error{Message: fmt.Sprintf("file %s does not exist", id)})
	}
	k := f.drawLocked(f.ingests, faultBusy, faultNotLeader, faultSplit, faultMissingFile, faultLostReply, faultPermanent)
	f.injected[k]++
	f.cl.mu.Lock()
	defer f.cl.mu.Unlock()
	switch k {
	case faultBusy:
		return &busyError{regErr(&errorpb.Error{Message: "server is busy (injected)", ServerIsBusy: &errorpb.ServerIsBusy{}}).(*regionError)}
	case faultNotLeader:
		return regErr(&errorpb.Error{Message: "not leader (injected)", NotLeader: &errorpb.NotLeader{RegionId: reg.id}})
	case faultSplit:
		// Split inside the SST's rows when they hold two keys, else just
		// after its one key; a split key outside the region injects
		// nothing.
		at := []byte(rows[len(rows)/2].key)
		if at2 := []byte(rows[0].key); bytes.Equal(at, at2) {
			at = append(slices.Clone(at2), 0)
		}
		if !f.cl.splitLocked(reg.id, at) {
			f.injected[faultSplit]--
			f.injected[faultNone]++
			break
		}
		return regErr(&errorpb.Error{Message: "epoch not match (injected split)", EpochNotMatch: &errorpb.EpochNotMatch{}})
	case faultMissingFile:
		delete(f.pending, id)
		return regErr(&errorpb.Error{Message: fmt.Sprintf("file %s does not exist (injected)", id), StaleCommand: &errorpb.StaleCommand{}})
	case faultPermanent:
		return &permanentError{regErr(&errorpb.Error{Message: "disk full (injected)", DiskFull: &errorpb.DiskFull{}})}
	}
	cur := slices.IndexFunc(f.cl.regions, func(r *region) bool {
		return r.id == reg.id && r.epoch.GetVersion() == reg.epoch.GetVersion()
	})
	if cur < 0 {
		return regErr(&errorpb.Error{Message: "epoch not match", EpochNotMatch: &errorpb.EpochNotMatch{}})
	}
	delete(f.pending, id)
	f.cl.applyLocked(rows, f.seen)
	if k == faultLostReply {
		return regErr(&errorpb.Error{Message: "not leader (injected: the ingest's answer was lost)", NotLeader: &errorpb.NotLeader{RegionId: reg.id}})
	}
	return nil
}

// testSeed is the seed of a randomised test: fixed, logged, and
// overridden by PITR_SEED to replay a failure. With concurrent writers
// the faults land on other calls from run to run; the seed still fixes
// the backup and the fault rates' draws per call order.
func testSeed(t *testing.T, def int64) int64 {
	t.Helper()
	seed := def
	if s := os.Getenv("PITR_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		require.NoError(t, err, "PITR_SEED")
		seed = v
	}
	t.Logf("seed %d (PITR_SEED=%d replays it)", seed, seed)
	return seed
}

// faultBackup is a backup of keys f000..f399 from source regions cut
// every 50 keys (8 units), in three flushes by two stores; a fifth of the
// versions are deletes, some values are longer than TiKV's short values,
// and the rows of f150..f199 are captured by both stores in every window
// (duplicates, I5). It returns the backup, its history and its checkpoint.
func faultBackup(t *testing.T, seed int64) (*testBackup, history, uint64) {
	t.Helper()
	start := keyspace.Compose(1000, 0)
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "faulty", StartTs: start, StartedEmpty: true})
	rng := rand.New(rand.NewSource(seed))
	cuts := []uint64{start, start + 100, start + 200, start + 300}
	var hist history
	seen := map[string]bool{}
	bound := func(i int) string {
		if i == 0 || i == 8 {
			return ""
		}
		return fmt.Sprintf("f%03d", i*50)
	}
	for w := 1; w < len(cuts); w++ {
		var r1, r2 []logfile.Row
		for i := 0; i < 500; i++ {
			k := rng.Intn(400)
			ts := cuts[w-1] + 1 + uint64(rng.Intn(int(cuts[w]-cuts[w-1])))
			id := fmt.Sprintf("%d@%d", k, ts)
			if seen[id] {
				continue
			}
			seen[id] = true
			r := logfile.Row{Key: []byte(fmt.Sprintf("f%03d", k)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut,
				Value: []byte(strings.Repeat(string(rune('a'+rng.Intn(26))), 1+rng.Intn(300)))}
			if rng.Intn(5) == 0 {
				r.Op, r.Value = logfile.OpDelete, nil
			}
			switch {
			case k < 150:
				r1 = append(r1, r)
			case k < 200:
				r1, r2 = append(r1, r), append(r2, r)
			default:
				r2 = append(r2, r)
			}
			hist = append(hist, r)
		}
		var c1, c2 []*pitrpb.RegionCoverage
		for i := 0; i < 8; i++ {
			c := cov(bound(i), bound(i+1), cuts[w-1], cuts[w])
			if i <= 3 {
				c1 = append(c1, c)
			}
			if i >= 3 {
				c2 = append(c2, c)
			}
		}
		b.flush(1, cuts[w], r1, c1...)
		b.flush(2, cuts[w], r2, c2...)
	}
	b.checkpoint(cuts[3])
	return b, hist, cuts[3]
}

// planned is what a restore to T must ingest: every version ≤ T, with its
// value or its delete.
func (h history) planned(T uint64) map[fakeVersion]fakeValue {
	out := map[fakeVersion]fakeValue{}
	for _, r := range h {
		if r.CommitTS <= T {
			out[fakeVersion{key: string(r.Key), ts: r.CommitTS}] = fakeValue{del: r.Op == logfile.OpDelete, value: string(r.Value)}
		}
	}
	return out
}

// runFaulty is Run's write phase against a faultyTarget, with the same
// pieces in the same order: load and plan, open the progress file, the
// files left (filesLeft), record the start, the runner, the progress
// flush, and the error wrapped as Run wraps it (writtenError). What it
// leaves out talks to PD (the target checks, prepare, the GC hold, import
// mode) or was tested before (the file checks).
func runFaulty(ctx context.Context, t *testing.T, src Source, T uint64, path string, tgt *faultyTarget, o Options) (plan *Plan, err error) {
	t.Helper()
	o.Source, o.RestoreTS, o.ProgressFile = src, T, path
	o.setDefaults()
	b, err := Load(ctx, src)
	require.NoError(t, err)
	plan, err = NewPlan(PlanInput{Task: b.Task, Checkpoint: b.Checkpoint, Metas: b.Metas, Coverage: b.Coverage, RestoreTS: T})
	require.NoError(t, err)
	prog, err := openProgress(path, progressState{Storage: b.URL, Task: plan.Task, RestoreTS: plan.RestoreTS, ClusterID: fakeClusterID})
	require.NoError(t, err)
	defer func() { err = writtenError(err, path, plan, prog) }()
	if prog.finished() {
		return plan, nil
	}
	files, _ := filesLeft(plan, prog)
	if err := prog.markStarted(); err != nil {
		return plan, err
	}
	var logical int64
	for _, f := range files {
		logical += f.File.GetLogicalBytes()
	}
	m := newMeter()
	m.setPhase("restore", logical)
	// Progress never runs ahead of the target: when units are recorded
	// done, every planned version of them is already ingested.
	require.NotNil(t, tgt.cl.want, "the fake checks progress against the plan")
	inner := o.hooks
	o.hooks = &hooks{unitsDone: func(units []keyspace.Range) {
		tgt.cl.checkDone(units)
		if inner != nil && inner.unitsDone != nil {
			inner.unitsDone(units)
		}
	}}
	if inner != nil {
		o.hooks.ingested = inner.ingested
	}
	r := newRunner(o, o.Logger, plan, files, tgt, prog, m)
	err = r.run(ctx, logical)
	if err == nil {
		err = ctx.Err()
	}
	if perr := prog.flush(err == nil); perr != nil && err == nil {
		err = perr
	}
	return plan, err
}

// requireExact checks that the fake holds exactly the planned versions
// (each ingested at least once; more is duplicate delivery, allowed by
// I5), nothing else, and no violation.
func requireExact(t *testing.T, cl *fakeCluster, want map[fakeVersion]fakeValue) {
	t.Helper()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	require.Empty(t, cl.violations, "what a real TiKV would refuse")
	var missing, extra, wrong []string
	for v, val := range want {
		got, ok := cl.versions[v]
		switch {
		case !ok:
			missing = append(missing, fmt.Sprintf("%s@%d", v.key, v.ts))
		case got != val:
			wrong = append(wrong, fmt.Sprintf("%s@%d", v.key, v.ts))
		}
	}
	for v := range cl.versions {
		if _, ok := want[v]; !ok {
			extra = append(extra, fmt.Sprintf("%s@%d", v.key, v.ts))
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	slices.Sort(wrong)
	require.Empty(t, missing, "planned versions never ingested")
	require.Empty(t, extra, "versions ingested that the plan does not hold (after T?)")
	require.Empty(t, wrong, "versions ingested with another value")
}

// checkDone records a violation for each planned version of units not
// ingested yet.
func (cl *fakeCluster) checkDone(units []keyspace.Range) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, u := range units {
		n, example := 0, ""
		for v := range cl.want {
			if _, ok := cl.versions[v]; !ok && u.Contains([]byte(v.key)) {
				n++
				example = fmt.Sprintf("%s@%d", v.key, v.ts)
			}
		}
		if n > 0 {
			cl.violations = append(cl.violations, fmt.Sprintf("unit %s recorded done before %d of its versions were ingested (%s)", u, n, example))
		}
	}
}

// dupCount is how many ingests were duplicates.
func (cl *fakeCluster) dupCount() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	n := 0
	for _, c := range cl.applied {
		n += c - 1
	}
	return n
}

// doneUnits reads the progress file as a rerun would and returns the
// units it records done.
func doneUnits(t *testing.T, path string, src Source, plan *Plan) []keyspace.Range {
	t.Helper()
	prog, err := openProgress(path, progressState{Storage: src.URL(), Task: plan.Task, RestoreTS: plan.RestoreTS, ClusterID: fakeClusterID})
	require.NoError(t, err)
	var out []keyspace.Range
	for _, u := range plan.Units {
		if prog.isDone(u) {
			out = append(out, u)
		}
	}
	return out
}

// requireDoneIngested checks the progress file claims nothing the target
// lacks: every planned version of a unit recorded done was ingested.
func requireDoneIngested(t *testing.T, cl *fakeCluster, want map[fakeVersion]fakeValue, done []keyspace.Range) {
	t.Helper()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for v := range want {
		for _, u := range done {
			if u.Contains([]byte(v.key)) {
				_, ok := cl.versions[v]
				require.True(t, ok, "unit %s is recorded done but %s@%d was never ingested", u, v.key, v.ts)
			}
		}
	}
}

// TestFaultyTargetFaults restores under each fault alone, then all of them
// at once: every planned version reaches the target, nothing else does,
// and the retries never send a real TiKV what it refuses (rows out of
// order, rows outside the SST's region).
func TestFaultyTargetFaults(t *testing.T) {
	seed := testSeed(t, 1)
	b, hist, cp := faultBackup(t, seed)
	T := cp - 50
	want := hist.planned(T)
	rate := func(k fault, r float64) [faultCount]float64 {
		var rs [faultCount]float64
		rs[k] = r
		return rs
	}
	all := [faultCount]float64{faultBusy: 0.1, faultNotLeader: 0.05, faultSplit: 0.03, faultMissingFile: 0.05, faultLostReply: 0.05, faultWrite: 0.05}
	for _, tc := range []struct {
		name   string
		plan   faultPlan
		memory int64 // MemoryBudget; small forces a multi-pass sweep
		expect []fault
		dups   bool // duplicates must have been delivered
	}{
		{name: "no fault"},
		{name: "busy", plan: faultPlan{rates: rate(faultBusy, 0.4)}, expect: []fault{faultBusy}},
		{name: "not leader", plan: faultPlan{rates: rate(faultNotLeader, 0.3)}, expect: []fault{faultNotLeader}},
		{name: "split", plan: faultPlan{rates: rate(faultSplit, 0.2)}, expect: []fault{faultSplit}},
		{name: "missing file", plan: faultPlan{rates: rate(faultMissingFile, 0.3)}, expect: []fault{faultMissingFile}},
		{name: "lost reply", plan: faultPlan{rates: rate(faultLostReply, 0.3)}, expect: []fault{faultLostReply}, dups: true},
		{name: "write fails", plan: faultPlan{rates: rate(faultWrite, 0.3)}, expect: []fault{faultWrite}},
		{name: "duplicate chunks", plan: faultPlan{dupChunks: 0.5}, dups: true},
		{name: "slow", plan: faultPlan{maxDelay: 2 * time.Millisecond}},
		// The rates alone are drawn in the order the two writers reach the
		// target, so a split (the rarest) can miss a run: one is scripted.
		{name: "all", plan: faultPlan{rates: all, script: map[int]fault{2: faultSplit}, dupChunks: 0.1, maxDelay: time.Millisecond},
			expect: []fault{faultBusy, faultNotLeader, faultSplit, faultMissingFile, faultLostReply, faultWrite}, dups: true},
		{name: "all, multi-pass sweep", plan: faultPlan{rates: all, script: map[int]fault{2: faultSplit}, dupChunks: 0.1}, memory: 200 << 10,
			expect: []fault{faultBusy, faultNotLeader, faultSplit, faultMissingFile, faultLostReply, faultWrite}, dups: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cl := newFakeCluster(want, "f100", "f200", "f300")
			tgt := newFaultyTarget(cl, tc.plan, seed, cancel)
			path := filepath.Join(t.TempDir(), "progress.json")
			plan, err := runFaulty(ctx, t, b.st, T, path, tgt, Options{Concurrency: 2, ChunkBytes: 2 << 10, MemoryBudget: tc.memory})
			require.NoError(t, err)
			requireExact(t, cl, want)
			for _, k := range tc.expect {
				require.Positive(t, tgt.injected[k], "no %s fault was injected: the case tests nothing", k)
			}
			if tc.dups {
				require.Positive(t, cl.dupCount(), "no version was delivered twice")
			}
			require.Len(t, doneUnits(t, path, b.st, plan), len(plan.Units))
			t.Logf("ingests %d, chunks %d, injected %v, duplicates %d, regions %d", tgt.ingests, tgt.chunks, tgt.injected, cl.dupCount(), len(cl.regions))
		})
	}
}

// TestFaultyTargetPermanentError: an error no retry fixes, or retries
// running out, stops the restore with a *WrittenError that names the
// progress file and how many units are done (the CLI prints "rerun the
// same command to resume"); the units it records done are in the target.
// Before the first write, an error stays a plain refusal.
func TestFaultyTargetPermanentError(t *testing.T) {
	seed := testSeed(t, 1)
	b, hist, cp := faultBackup(t, seed)
	want := hist.planned(cp)
	for _, tc := range []struct {
		name   string
		plan   faultPlan
		policy func(p *retryPolicy)
		msg    string // the error's text, a regexp
	}{
		{name: "disk full", plan: faultPlan{script: map[int]fault{20: faultPermanent}},
			msg: `^region \d+: disk full \(injected\)$`},
		{name: "attempts run out", plan: faultPlan{script: map[int]fault{20: faultNotLeader, 21: faultNotLeader, 22: faultNotLeader}},
			policy: func(p *retryPolicy) { p.maxAttempts = 3 },
			msg:    `^write to the target: region \d+: not leader \(injected\) \(gave up after 3 attempts\)$`},
		{name: "busy too long", plan: faultPlan{rates: [faultCount]float64{faultBusy: 1}},
			policy: func(p *retryPolicy) { p.busyTimeout = 20 * time.Millisecond },
			msg:    `^write to the target: region \d+: server is busy \(injected\) \(busy for 0s\)$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cl := newFakeCluster(want, "f100", "f200", "f300")
			tgt := newFaultyTarget(cl, tc.plan, seed, cancel)
			if tc.policy != nil {
				tc.policy(&tgt.policy)
			}
			path := filepath.Join(t.TempDir(), "progress.json")
			plan, err := runFaulty(ctx, t, b.st, cp, path, tgt, Options{Concurrency: 1, ChunkBytes: 2 << 10})
			require.Error(t, err)
			var we *WrittenError
			require.ErrorAs(t, err, &we)
			require.Regexp(t, tc.msg, we.Error())
			require.Equal(t, path, we.ProgressFile)
			require.Equal(t, len(plan.Units), we.Units)
			require.False(t, we.Finished)
			done := doneUnits(t, path, b.st, plan)
			require.Equal(t, len(done), we.UnitsDone, "the error counts the units the progress file records")
			require.Less(t, we.UnitsDone, we.Units)
			requireDoneIngested(t, cl, want, done)
			cl.mu.Lock()
			require.Empty(t, cl.violations)
			for v := range cl.versions {
				_, ok := want[v]
				require.True(t, ok, "%s@%d is not planned", v.key, v.ts)
			}
			cl.mu.Unlock()
		})
	}
	t.Run("refusal before writing", func(t *testing.T) {
		plan := &Plan{Units: []keyspace.Range{{}}}
		prog, err := openProgress(filepath.Join(t.TempDir(), "progress.json"), progressState{})
		require.NoError(t, err)
		refusal := fmt.Errorf("x: %w", ErrCorrupt)
		got := writtenError(refusal, "p", plan, prog)
		require.Same(t, refusal, got, "not started: the error says nothing was written")
		var we *WrittenError
		require.False(t, errors.As(got, &we))
	})
}

// TestFaultyTargetCrashResume kills a restore after some chunks (its
// context is cancelled), then reruns it with the same progress file: the
// rerun writes no key of a unit the first run recorded done, and the two
// runs together ingest exactly the plan. A third run finds it finished.
func TestFaultyTargetCrashResume(t *testing.T) {
	seed := testSeed(t, 1)
	b, hist, cp := faultBackup(t, seed)
	T := cp - 30
	want := hist.planned(T)
	for _, conc := range []int{1, 4} {
		t.Run(fmt.Sprintf("concurrency %d", conc), func(t *testing.T) {
			cl := newFakeCluster(want, "f100", "f200", "f300")
			path := filepath.Join(t.TempDir(), "progress.json")
			o := Options{Concurrency: conc, ChunkBytes: 2 << 10}

			ctx1, cancel1 := context.WithCancel(context.Background())
			defer cancel1()
			// Every chunk takes a while, as on a cluster: a retry's backoff
			// then costs about one chunk, and the writers finish in about
			// their order (in the fake alone, a chunk waiting out a 1 ms
			// backoff is overtaken by all the others, and every unit is
			// recorded at once, at the end).
			faults := [faultCount]float64{faultBusy: 0.05, faultLostReply: 0.05}
			var unitsDone atomic.Int64
			o1 := o
			o1.hooks = &hooks{unitsDone: func(us []keyspace.Range) { unitsDone.Add(int64(len(us))) }}
			tgt1 := newFaultyTarget(cl, faultPlan{rates: faults, maxDelay: 3 * time.Millisecond, crashAfter: 30,
				crashGate: func() bool { return unitsDone.Load() >= 2 }}, seed, cancel1)
			plan, err := runFaulty(ctx1, t, b.st, T, path, tgt1, o1)
			var we *WrittenError
			require.ErrorAs(t, err, &we)
			require.ErrorIs(t, err, context.Canceled)
			done := doneUnits(t, path, b.st, plan)
			require.Equal(t, len(done), we.UnitsDone)
			require.GreaterOrEqual(t, we.UnitsDone, 2, "the crash came before the gate: the case tests nothing")
			require.Less(t, we.UnitsDone, we.Units, "the crash came after the end: the case tests nothing")
			requireDoneIngested(t, cl, want, done)

			ctx2, cancel2 := context.WithCancel(context.Background())
			defer cancel2()
			tgt2 := newFaultyTarget(cl, faultPlan{rates: faults}, seed+1, cancel2)
			_, err = runFaulty(ctx2, t, b.st, T, path, tgt2, o)
			require.NoError(t, err)
			require.NotEmpty(t, tgt2.seen)
			for k := range tgt2.seen {
				for _, u := range done {
					require.False(t, u.Contains([]byte(k)), "the rerun wrote %s of unit %s, done in the first run", k, u)
				}
			}
			requireExact(t, cl, want)
			t.Logf("first run: %d chunks, %d of %d units done; rerun: %d keys", tgt1.chunks, we.UnitsDone, we.Units, len(tgt2.seen))

			tgt3 := newFaultyTarget(cl, faultPlan{}, seed+2, cancel2)
			_, err = runFaulty(ctx2, t, b.st, T, path, tgt3, o)
			require.NoError(t, err)
			require.Empty(t, tgt3.seen, "a finished restore writes nothing")
		})
	}
}

// TestFaultyTargetConcurrent runs many writers with random delays and
// every retryable fault, at several seeds and chunk sizes: the result is
// still exact. Run it with -race.
func TestFaultyTargetConcurrent(t *testing.T) {
	seed := testSeed(t, 1)
	b, hist, cp := faultBackup(t, seed)
	all := [faultCount]float64{faultBusy: 0.1, faultNotLeader: 0.05, faultSplit: 0.05, faultMissingFile: 0.05, faultLostReply: 0.05, faultWrite: 0.05}
	for i, tc := range []struct {
		T          uint64
		chunkBytes int64
		conc       int
	}{{cp, 1 << 10, 8}, {cp - 70, 4 << 10, 8}, {cp - 150, 2 << 10, 16}, {cp, 512, 5}} {
		t.Run(fmt.Sprintf("T-%d chunk %d concurrency %d", cp-tc.T, tc.chunkBytes, tc.conc), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cl := newFakeCluster(hist.planned(tc.T), "f050", "f100", "f200", "f250", "f300")
			tgt := newFaultyTarget(cl, faultPlan{rates: all, dupChunks: 0.1, maxDelay: 3 * time.Millisecond}, seed+int64(i), cancel)
			_, err := runFaulty(ctx, t, b.st, tc.T, filepath.Join(t.TempDir(), "progress.json"), tgt,
				Options{Concurrency: tc.conc, ChunkBytes: tc.chunkBytes})
			require.NoError(t, err)
			requireExact(t, cl, hist.planned(tc.T))
		})
	}
}

// hotBackup is a backup of ten keys with about sixty versions each, in
// three flushes: one pass of a sweep over it is a few chunks, so with a
// small memory budget the passes follow each other closely.
func hotBackup(t *testing.T, seed int64) (*testBackup, history, uint64) {
	t.Helper()
	start := keyspace.Compose(1000, 0)
	b := newTestBackup(t, &pitrpb.TaskInfo{Name: "hot", StartTs: start, StartedEmpty: true})
	rng := rand.New(rand.NewSource(seed))
	cuts := []uint64{start, start + 1000, start + 2000, start + 3000}
	var hist history
	seen := map[string]bool{}
	for w := 1; w < len(cuts); w++ {
		var rows []logfile.Row
		for i := 0; i < 200; i++ {
			k := rng.Intn(10)
			ts := cuts[w-1] + 1 + uint64(rng.Intn(int(cuts[w]-cuts[w-1])))
			id := fmt.Sprintf("%d@%d", k, ts)
			if seen[id] {
				continue
			}
			seen[id] = true
			r := logfile.Row{Key: []byte(fmt.Sprintf("h%d", k)), CommitTS: ts, StartTS: ts - 1, Op: logfile.OpPut,
				Value: []byte(strings.Repeat("v", 1+rng.Intn(100)))}
			if rng.Intn(4) == 0 {
				r.Op, r.Value = logfile.OpDelete, nil
			}
			rows = append(rows, r)
			hist = append(hist, r)
		}
		b.flush(1, cuts[w], rows, cov("", "", cuts[w-1], cuts[w]))
	}
	b.checkpoint(cuts[3])
	return b, hist, cuts[3]
}

// TestFaultyTargetPassOrder: when the files do not fit the memory budget
// together, the sweep takes passes over ascending commit-time windows, and
// no version of a key may reach the target after a newer one (audit F1;
// the fake records any). Many writers, random delays and retries try to
// let a chunk of the next pass overtake one of the last.
func TestFaultyTargetPassOrder(t *testing.T) {
	seed := testSeed(t, 1)
	b, hist, cp := hotBackup(t, seed)
	faults := [faultCount]float64{faultBusy: 0.1, faultNotLeader: 0.05, faultLostReply: 0.05}
	for i := 0; i < 5; i++ {
		t.Run(fmt.Sprintf("seed+%d", i), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cl := newFakeCluster(hist.planned(cp), "h3", "h6")
			tgt := newFaultyTarget(cl, faultPlan{rates: faults, maxDelay: 3 * time.Millisecond}, seed+int64(i), cancel)
			_, err := runFaulty(ctx, t, b.st, cp, filepath.Join(t.TempDir(), "progress.json"), tgt,
				Options{Concurrency: 8, ChunkBytes: 256, MemoryBudget: 100 << 10})
			require.NoError(t, err)
			requireExact(t, cl, hist.planned(cp))
		})
	}
}

// TestSweepChecksums: the expected checksum a single-pass sweep records is
// that of what a read at T returns in its range (per key the newest
// version at or before T, counted only if a Put), over histories with
// deletes and many versions; a sweep that took several passes records
// none (Run counts it in ChecksumSkipped).
func TestSweepChecksums(t *testing.T) {
	seed := testSeed(t, 1)
	b, hist, cp := faultBackup(t, seed)
	sorted := slices.Clone(hist) // history.at wants key ASC, commit_ts DESC
	slices.SortStableFunc(sorted, func(a, b logfile.Row) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return cmp.Compare(b.CommitTS, a.CommitTS)
	})
	for _, tc := range []struct {
		name   string
		T      uint64
		memory int64
		multi  bool
	}{
		{name: "single pass, checkpoint", T: cp},
		{name: "single pass, mid", T: cp - 150},
		{name: "multi-pass", T: cp, memory: 200 << 10, multi: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cl := newFakeCluster(hist.planned(tc.T), "f100", "f200", "f300")
			tgt := newFaultyTarget(cl, faultPlan{}, seed, cancel)
			path := filepath.Join(t.TempDir(), "progress.json")
			plan, err := runFaulty(ctx, t, b.st, tc.T, path, tgt, Options{Concurrency: 2, ChunkBytes: 2 << 10, MemoryBudget: tc.memory})
			require.NoError(t, err)
			prog, err := openProgress(path, progressState{Storage: b.st.URL(), Task: plan.Task, RestoreTS: plan.RestoreTS, ClusterID: fakeClusterID})
			require.NoError(t, err)
			visible := sorted.at(tc.T)
			var covered []keyspace.Range
			for _, s := range prog.sums() {
				var want checksum.Sum
				for k, v := range visible {
					if k != "" && s.Range.Contains([]byte(k)) && checksum.InBounds(s.Range, []byte(k)) {
						want.Add([]byte(k), []byte(v))
					}
				}
				require.Equal(t, want, s.Sum, "range %s", s.Range)
				covered = append(covered, s.Range)
			}
			all := covers(covered, plan.Units)
			require.Equal(t, !tc.multi, all, "ranges with a recorded sum: %v", covered)
		})
	}
}
