package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

// term is one election term of one coordinator. A fresh term is made for
// every election won; everything it writes to etcd is fenced by its
// election key's create revision (I6), and it stops for good when stop is
// closed.
type term struct {
	c      *Coordinator
	log    hclog.Logger
	key    string // the election key of this term
	rev    int64  // its create revision: the fence
	stop   chan struct{}
	halt   func()          // closes stop (once)
	parent <-chan struct{} // the session's end: halts the term

	pool     *agentPool
	writers  map[string]*cpWriter // checkpoint/global writer per task
	wg       sync.WaitGroup       // the writers' goroutines
	released map[string]bool      // stopped tasks whose safepoint this term removed
	locks    *lockKeeper          // lock resolutions (see locks.go)

	// GC calls are rate-limited (real-TiKV audit R9, TIKV-PROTOCOLS §8.6):
	// each legacy call is an etcd write or a deprecation WARN on PD.
	holds map[string]heldSafePoint // the service safepoint this term last set, per task
	gcSP  uint64                   // PD's GC safepoint as last read
	gcAt  time.Time                // when; zero: never

	// Rescan hints: a task whose last computation found ranges no agent
	// covers asks its agents to re-read regions from PD (see rescanDue).
	holes    map[string]bool
	rescanAt map[string]time.Time

	snaps *snapshots // scheduled snapshot backups (snapshots.go)
	keep  *retention // the retention policy (retention.go)
}

// heldSafePoint is one UpdateServiceGCSafePoint this term made.
type heldSafePoint struct {
	cp   uint64    // the safepoint asked for
	rev  int64     // the task record's revision then
	at   time.Time // when
	held bool      // PD stored it (its minimum was at or below cp)
}

// newTerm makes the term of an election won; parent is closed when the
// session behind it ends.
func newTerm(c *Coordinator, key string, rev int64, parent <-chan struct{}) *term {
	c.lastTick.Store(c.now().UnixMilli())
	stop := make(chan struct{})
	var once sync.Once
	return &term{
		c: c, log: c.log.With("term", rev), key: key, rev: rev,
		stop: stop, halt: func() { once.Do(func() { close(stop) }) }, parent: parent,
		pool: newAgentPool(c.cfg.TLS), writers: map[string]*cpWriter{}, released: map[string]bool{},
		holds: map[string]heldSafePoint{}, holes: map[string]bool{}, rescanAt: map[string]time.Time{},
	}
}

// rescanDue reports whether this tick's poll of a task asks the agents to
// re-read its regions from PD: when the last computation found holes, at
// most every 2 s (and 2 ticks). TiKV tells only the store that loses a
// leader (NotLeader); the agent of the store that gains it would otherwise
// find it at its next periodic scan (RegionInterval, 10 s by default), and
// the checkpoint would wait that long.
func (t *term) rescanDue(name string, now time.Time) bool {
	if !t.holes[name] || now.Sub(t.rescanAt[name]) < max(2*t.c.cfg.TickInterval, 2*time.Second) {
		return false
	}
	t.rescanAt[name] = now
	return true
}

// errTermOver: the term's stop channel is closed; it writes nothing more.
var errTermOver = fmt.Errorf("term over: %w", ErrNotLeader)

// errChanged: a fenced write found the task or its checkpoint changed
// since the tick read them (the tick retries on the next round).
var errChanged = errors.New("task changed during the tick")

// tickTimeout bounds one tick.
func (t *term) tickTimeout() time.Duration {
	return max(10*t.c.cfg.TickInterval, t.c.cfg.PollTimeout+10*time.Second)
}

// run ticks until the parent session ends, ctx ends or the term is deposed;
// then it halts the term and waits for its goroutines.
func (t *term) run(ctx context.Context) error {
	sctx, scancel := context.WithCancel(context.Background())
	t.snaps = newSnapshots(t, sctx)
	t.keep = newRetention(t, sctx)
	defer t.close()
	go func() {
		select {
		case <-t.parent:
		case <-ctx.Done():
		case <-t.stop:
		}
		t.halt()
		scancel() // a deposed term takes no more backups
	}()
	tk := time.NewTicker(t.c.cfg.TickInterval)
	defer tk.Stop()
	for {
		tctx, cancel := context.WithTimeout(ctx, t.tickTimeout())
		err := t.tick(tctx)
		cancel()
		switch {
		case errors.Is(err, errTermOver) || (err != nil && ctx.Err() != nil):
			return nil
		case errors.Is(err, ErrNotLeader):
			t.log.Warn("deposed", "error", err)
			return err
		case err != nil && ctx.Err() == nil:
			t.c.met.tickErrors.Inc()
			t.c.setErr(err)
			t.log.Warn("tick failed", "error", err)
		case err == nil:
			t.c.setErr(nil)
			t.c.lastTick.Store(t.c.now().UnixMilli())
		}
		select {
		case <-t.stop:
			return nil
		case <-tk.C:
		}
	}
}

func (t *term) close() {
	t.halt()
	t.wg.Wait()
	t.pool.close()
}

// stopped reports whether the term has ended.
func (t *term) stopped() bool {
	select {
	case <-t.stop:
		return true
	default:
		return false
	}
}

// fenced commits ops if this term still holds its election key and cmps
// hold. It returns ErrNotLeader when the key is gone or re-created and
// errChanged when another compare failed.
func (t *term) fenced(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) error {
	if t.stopped() {
		return errTermOver
	}
	all := append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.rev)}, cmps...)
	resp, err := t.c.etcd.Txn(ctx).If(all...).Then(ops...).Else(clientv3.OpGet(t.key)).Commit()
	if err != nil {
		return fmt.Errorf("etcd txn: %w", err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 || kvs[0].CreateRevision != t.rev {
		return fmt.Errorf("term %d: %w", t.rev, ErrNotLeader)
	}
	return errChanged
}

// putCheckpoint raises a task's etcd checkpoint from prev to cp. It never
// lowers it: the write only happens if the stored value is still prev
// (absent when !existed), and cp must be above prev.
func (t *term) putCheckpoint(ctx context.Context, name string, taskRev int64, prev uint64, existed bool, cp uint64) error {
	if cp <= prev {
		return fmt.Errorf("checkpoint of %s: refusing to write %d over %d (I2)", name, cp, prev)
	}
	key := task.CheckpointKey(name)
	cmpCP := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	if existed {
		cmpCP = clientv3.Compare(clientv3.Value(key), "=", string(task.EncodeTS(prev)))
	}
	return t.fenced(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(task.Key(name)), "=", taskRev), cmpCP},
		clientv3.OpPut(key, string(task.EncodeTS(cp))))
}

// taskInfo is one task as a tick read it.
type taskInfo struct {
	rec       *pitrpb.TaskRecord
	rev       int64 // mod revision of the record
	cp        uint64
	cpExisted bool
}

func (ti *taskInfo) name() string { return ti.rec.GetInfo().GetName() }

// tick runs one round over every task.
func (t *term) tick(ctx context.Context) error {
	start := time.Now()
	defer func() { t.c.met.tickDuration.Observe(time.Since(start).Seconds()) }()
	now := t.c.now()

	// One consistent read of tasks, checkpoints and agents.
	resp, err := t.c.etcd.Txn(ctx).Then(
		clientv3.OpGet(task.TaskPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(task.CheckpointPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(task.AgentPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return fmt.Errorf("read tasks: %w", err)
	}
	cps := map[string][]byte{}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		cps[strings.TrimPrefix(string(kv.Key), task.CheckpointPrefix)] = kv.Value
	}
	var tasks []*taskInfo
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		rec, err := task.DecodeRecord(kv.Value)
		if err != nil {
			t.log.Error("unreadable task record", "key", string(kv.Key), "error", err)
			continue
		}
		ti := &taskInfo{rec: rec, rev: kv.ModRevision, cp: rec.GetInfo().GetStartTs()}
		if v, ok := cps[ti.name()]; ok {
			cp, err := task.DecodeTS(v)
			if err != nil {
				t.log.Error("unreadable checkpoint", "task", ti.name(), "error", err)
				continue
			}
			ti.cp, ti.cpExisted = cp, true
		}
		tasks = append(tasks, ti)
	}
	var agents []*pitrpb.AgentRecord
	for _, kv := range resp.Responses[2].GetResponseRange().GetKvs() {
		a := &pitrpb.AgentRecord{}
		if err := unmarshalAgent(kv.Value, a); err != nil {
			t.log.Warn("unreadable agent record", "key", string(kv.Key), "error", err)
			continue
		}
		agents = append(agents, a)
	}
	t.pool.keep(agents)
	t.c.met.agentsReg.Set(float64(len(agents)))

	gcSP, gcErr := t.gcSafePoint(ctx, tasks, now)
	var errs []error
	up := map[uint64]bool{}
	for _, ti := range tasks {
		err := t.tickTask(ctx, ti, agents, gcSP, gcErr, now, up)
		if errors.Is(err, ErrNotLeader) {
			return err
		}
		if t.snaps != nil {
			t.snaps.maybe(ti.rec, now)
		}
		if t.keep != nil {
			t.keep.maybe(ti.rec, now)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("task %s: %w", ti.name(), err))
		}
	}
	if anyRunning(tasks) {
		t.c.met.agentsUp.Set(float64(len(up)))
	} else { // nobody was polled
		t.c.met.agentsUp.Set(float64(len(agents)))
	}
	if gcErr != nil {
		errs = append(errs, gcErr)
	}
	return errors.Join(errs...)
}

func anyRunning(tasks []*taskInfo) bool {
	for _, ti := range tasks {
		if ti.rec.GetState() == pitrpb.TaskState_TASK_STATE_RUNNING {
			return true
		}
	}
	return false
}

// tickTask does one task's part of a tick (see decide).
func (t *term) tickTask(ctx context.Context, ti *taskInfo, agents []*pitrpb.AgentRecord, gcSP uint64, gcErr error, now time.Time, up map[uint64]bool) error {
	name := ti.name()
	rec := ti.rec
	ttl := t.c.cfg.SafePointTTL
	v := decide(rec.GetState(), ti.cp, gcSP, gcErr == nil, time.UnixMilli(rec.GetUpdatedUnixMs()), now, ttl)
	if v.release {
		t.c.met.forget(name)
		if t.released[name] {
			return nil
		}
		if err := t.release(ctx, name); err != nil {
			return err
		}
		t.released[name] = true
		return nil
	}
	delete(t.released, name)
	if v.fail != "" {
		return t.failTask(ctx, ti, v.fail, now)
	}

	st := &task.Status{
		Task: name, State: task.StateName(rec.GetState()), Checkpoint: ti.cp,
		SafePointTTLSeconds: int64(ttl / time.Second), GCSafePoint: gcSP,
		Leader: t.c.cfg.ID, Term: t.rev, UpdatedUnixMs: now.UnixMilli(),
	}
	if t.keep != nil {
		t.keep.status(st)
	}
	var problems []string
	if gcErr != nil {
		problems = append(problems, gcErr.Error())
	}
	cp := ti.cp
	if v.advance {
		reports, agentSts := t.pool.poll(ctx, agents, name, t.c.cfg.PollTimeout, t.rescanDue(name, now))
		for _, a := range agentSts {
			if a.State == task.AgentUp || a.State == task.AgentNoTask {
				up[a.StoreID] = true
			}
			if a.State == task.AgentDown {
				problems = append(problems, fmt.Sprintf("agent of store %d at %s: %s", a.StoreID, a.Addr, a.Error))
			}
		}
		lagBefore := t.lagBefore(now)
		res := Compute(Input{Ranges: taskRanges(rec), Previous: ti.cp, Reports: reports, MaxSlow: t.c.cfg.MaxSlow, LagBefore: lagBefore})
		st.Agents, st.Covered, st.UncoveredRanges = agentSts, res.Covered, len(res.Uncovered)
		t.holes[name] = len(res.Uncovered) > 0
		st.Regions, st.StaleReports, st.Slowest = res.Used, res.Stale, slowStatuses(res.Slowest)
		st.Locks = t.resolveLocks(name, res.Lagging, lagBefore, now)
		if res.Checkpoint > ti.cp {
			err := t.putCheckpoint(ctx, name, ti.rev, ti.cp, ti.cpExisted, res.Checkpoint)
			if errors.Is(err, errChanged) {
				return nil // stopped, paused or otherwise changed: next tick
			}
			if err != nil {
				return err
			}
			cp = res.Checkpoint
		}
		t.c.met.uncovered.WithLabelValues(name).Set(float64(len(res.Uncovered)))
		t.c.met.staleReports.WithLabelValues(name).Set(float64(res.Stale))
		t.c.met.lag.WithLabelValues(name).Set(max(0, now.Sub(keyspace.Time(cp)).Seconds()))
	} else {
		st.Agents = registeredStatuses(agents)
		t.c.met.lag.DeleteLabelValues(name)
		t.c.met.uncovered.DeleteLabelValues(name)
		t.c.met.staleReports.DeleteLabelValues(name)
	}
	st.Checkpoint = cp
	t.c.met.checkpoint.WithLabelValues(name).Set(float64(cp))
	failed := rec.GetState() == pitrpb.TaskState_TASK_STATE_FAILED
	t.c.met.setTaskState(name, rec.GetState(), rec.GetUpdatedUnixMs(), now)

	// The checkpoint in storage follows the one in etcd (in the
	// background: a slow storage does not hold the tick).
	w := t.writer(name, rec.GetStorageUrl())
	w.set(cp)
	if e := w.err(); e != "" {
		problems = append(problems, e)
	}

	// Hold GC at the checkpoint (I3), or at an earlier checkpoint of this
	// term: any value at or below the checkpoint keeps I3, so the call is
	// made only when it is due (see holdDue).
	if h, ok := t.holds[name]; v.hold && ok && !t.holdDue(h, ti.rev, cp, now) {
		if h.held {
			st.SafePoint = h.cp
		}
	} else if v.hold {
		min, err := t.c.pd.UpdateServiceGCSafePoint(ctx, task.SafePointID(name), int64(ttl/time.Second), cp)
		switch {
		case err != nil:
			// The last hold stays valid until its TTL; due again next tick.
			problems = append(problems, fmt.Sprintf("hold GC safepoint: %v", err))
			if ok && h.held {
				st.SafePoint = h.cp
			}
		case min > cp && !failed:
			delete(t.holds, name)
			return t.failTask(ctx, ti, fmt.Sprintf("PD cannot hold GC at the checkpoint %s: its minimum service safepoint is %d; GC may have removed versions the backup needs; stop this task and start a new one",
				keyspace.Format(cp), min), now)
		default:
			t.holds[name] = heldSafePoint{cp: cp, rev: ti.rev, at: now, held: min <= cp}
			if min <= cp {
				st.SafePoint = cp
			}
		}
	}

	t.c.met.setSafePoint(name, st.SafePoint)
	st.LastError = strings.Join(problems, "; ")
	b, err := marshalStatus(st)
	if err != nil {
		return err
	}
	err = t.fenced(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(task.Key(name)), "=", ti.rev)},
		clientv3.OpPut(task.StatusKey(name), string(b)))
	if errors.Is(err, errChanged) {
		// The task changed while we held GC for it: if it was stopped or
		// deleted meanwhile, make sure the safepoint we may just have
		// refreshed does not outlive it.
		return t.recheck(ctx, name)
	}
	return err
}

// gcInterval is how often a term reads PD's GC safepoint and, while the
// checkpoint moves, moves the service safepoint: every 10 ticks (10 s at
// the default tick; BR's advancer refreshes every 12 s).
func (t *term) gcInterval() time.Duration { return 10 * t.c.cfg.TickInterval }

// holdDue reports whether a task's service safepoint must be set again:
// the task record changed (paused, resumed, failed: someone else may have
// set it), the checkpoint moved and gcInterval has passed, or TTL/3 has
// passed (the refresh that keeps it from expiring).
func (t *term) holdDue(h heldSafePoint, rev int64, cp uint64, now time.Time) bool {
	ttl := t.c.cfg.SafePointTTL
	age := now.Sub(h.at)
	return h.rev != rev || age >= ttl/3 || (h.cp != cp && age >= min(t.gcInterval(), ttl/3))
}

// gcSafePoint returns PD's GC safepoint, read with UpdateGCSafePoint(0) at
// most every gcInterval, and at once when a task needs a decision this term
// has no hold for (its first tick, a state change). Between reads the
// cached value is safe: the GC safepoint only moves forward, and once this
// term holds a task's service safepoint at or below its checkpoint, GC
// cannot pass that checkpoint before the hold's TTL, which holdDue
// refreshes at TTL/3.
func (t *term) gcSafePoint(ctx context.Context, tasks []*taskInfo, now time.Time) (uint64, error) {
	fresh := !t.gcAt.IsZero() && now.Sub(t.gcAt) < t.gcInterval()
	live := 0
	for _, ti := range tasks {
		if ti.rec.GetState() == pitrpb.TaskState_TASK_STATE_STOPPED {
			continue
		}
		live++
		if h, ok := t.holds[ti.name()]; !ok || h.rev != ti.rev {
			fresh = false
		}
	}
	if fresh || live == 0 { // stopped tasks only need their release
		return t.gcSP, nil
	}
	sp, err := t.c.pd.UpdateGCSafePoint(ctx, 0)
	if err != nil {
		return 0, fmt.Errorf("read GC safepoint: %w", err)
	}
	t.gcSP, t.gcAt = max(t.gcSP, sp), now
	return t.gcSP, nil
}

// recheck releases the safepoint of a task that is stopped or gone.
func (t *term) recheck(ctx context.Context, name string) error {
	rec, _, err := task.Get(ctx, t.c.etcd, name)
	if errors.Is(err, task.ErrNotFound) || (err == nil && rec.GetState() == pitrpb.TaskState_TASK_STATE_STOPPED) {
		return t.release(ctx, name)
	}
	return err
}

// release removes a task's PD service safepoint.
func (t *term) release(ctx context.Context, name string) error {
	delete(t.holds, name)
	if _, err := t.c.pd.UpdateServiceGCSafePoint(ctx, task.SafePointID(name), 0, 0); err != nil {
		return fmt.Errorf("remove GC safepoint %s: %w", task.SafePointID(name), err)
	}
	t.log.Info("released GC safepoint", "task", name)
	return nil
}

// failTask moves a task to failed (fenced, and only if it did not change
// since the tick read it).
func (t *term) failTask(ctx context.Context, ti *taskInfo, msg string, now time.Time) error {
	rec := task.CloneRecord(ti.rec)
	rec.State, rec.Error, rec.UpdatedUnixMs = pitrpb.TaskState_TASK_STATE_FAILED, msg, now.UnixMilli()
	b, err := encodeCopy(rec)
	if err != nil {
		return err
	}
	err = t.fenced(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(task.Key(ti.name())), "=", ti.rev)},
		clientv3.OpPut(task.Key(ti.name()), string(b)))
	if errors.Is(err, errChanged) {
		return nil
	}
	if err != nil {
		return err
	}
	t.c.met.setTaskState(ti.name(), pitrpb.TaskState_TASK_STATE_FAILED, 0, now)
	t.log.Error("task failed", "task", ti.name(), "error", msg)
	return nil
}

// writer returns the task's checkpoint/global writer, starting it.
func (t *term) writer(name, url string) *cpWriter {
	if w, ok := t.writers[name]; ok {
		return w
	}
	w := newCPWriter(name, url, t.rev, t.log, t.stop, t.c.now, t.c.storMet)
	t.writers[name] = w
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		w.run()
	}()
	return w
}

// taskRanges returns a task's key ranges.
func taskRanges(rec *pitrpb.TaskRecord) []keyspace.Range {
	var out []keyspace.Range
	for _, r := range rec.GetInfo().GetRanges() {
		out = append(out, keyspace.Range{Start: r.GetStartKey(), End: r.GetEndKey()})
	}
	return out
}
