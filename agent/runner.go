package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// runner supervises the capture of one task: it opens the task's storage,
// runs a capture, and starts a fresh one (new stream, new flusher) after a
// failure. What this agent has flushed survives the restarts (flushed), so
// regions resume from their own flushed progress.
type runner struct {
	a      *Agent
	name   string
	rec    *pitrpb.TaskRecord
	ranges []keyspace.Range // raw, as the task names them
	log    hclog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	cur     *capture
	flushed spanMap // raw ranges → highest ts this agent flushed for them
	lastErr string
	maxLag  float64 // seconds, at the last flush
}

func newRunner(parent context.Context, a *Agent, rec *pitrpb.TaskRecord) *runner {
	ctx, cancel := context.WithCancel(parent)
	r := &runner{
		a: a, name: rec.GetInfo().GetName(), rec: rec,
		log: a.log.With("task", rec.GetInfo().GetName()), ctx: ctx, cancel: cancel, done: make(chan struct{}),
	}
	for _, kr := range rec.GetInfo().GetRanges() {
		r.ranges = append(r.ranges, keyspace.Range{Start: kr.GetStartKey(), End: kr.GetEndKey()})
	}
	if len(r.ranges) == 0 { // no ranges: the whole key space
		r.ranges = []keyspace.Range{{}}
	}
	return r
}

// sameTask reports whether rec describes the task this runner captures.
func (r *runner) sameTask(rec *pitrpb.TaskRecord) bool {
	return rec.GetStorageUrl() == r.rec.GetStorageUrl() && protobuf.Equal(rec.GetInfo(), r.rec.GetInfo())
}

// stop ends the capture (dropping its buffer) and waits for it.
func (r *runner) stop() {
	r.cancel()
	<-r.done
}

func (r *runner) run() {
	defer close(r.done)
	bo := newBackoff(time.Second, 30*time.Second)
	for r.ctx.Err() == nil {
		began := time.Now()
		err := r.runOnce()
		if r.ctx.Err() != nil {
			return
		}
		if time.Since(began) > time.Minute {
			bo.reset() // after a long run, restart after the shortest delay
		}
		if err == nil {
			err = errors.New("capture ended")
		}
		r.log.Error("capture failed; starting again", "error", err)
		r.mu.Lock()
		r.lastErr = err.Error()
		r.mu.Unlock()
		r.a.setLastErr(fmt.Errorf("task %s: %w", r.name, err))
		r.a.met.captureRestarts.Inc()
		bo.wait(r.ctx)
	}
}

func (r *runner) runOnce() error {
	st, err := storage.OpenStack(r.ctx, r.rec.GetStorageUrl(), storage.StackOptions{
		Logger: r.log, Metrics: r.a.storMet, SharedLimit: r.a.upLimit,
	})
	if err != nil {
		return fmt.Errorf("open storage: %w", err)
	}
	defer st.Close()
	reg := &trackingRegisterer{Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"task": r.name}, r.a.reg)}
	defer reg.unregisterAll()
	fl, err := flush.New(flush.Config{
		StoreID:    r.a.storeID,
		Task:       r.name,
		Dir:        filepath.Join(r.a.cfg.DataDir, r.name, "spill"),
		Settings:   r.a.cfg.Settings,
		Storage:    st,
		Logger:     r.log,
		Registerer: reg,
	})
	if err != nil {
		return fmt.Errorf("create flusher: %w", err)
	}
	c := newCapture(r, fl)
	r.mu.Lock()
	r.cur = c
	r.mu.Unlock()
	err = c.run(r.ctx)
	c.releaseAll()
	r.mu.Lock()
	r.cur = nil
	r.mu.Unlock()
	if cerr := fl.Close(); cerr != nil {
		r.log.Warn("close flusher", "error", cerr)
	}
	return err
}

func (r *runner) current() (*capture, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		if r.lastErr != "" {
			return nil, fmt.Errorf("%w: capture of task %s is restarting after: %s", errNotReady, r.name, r.lastErr)
		}
		return nil, fmt.Errorf("%w: capture of task %s is starting", errNotReady, r.name)
	}
	return r.cur, nil
}

var errNotReady = errors.New("not ready")

func (r *runner) flushNow(ctx context.Context) (*pitrpb.Meta, error) {
	c, err := r.current()
	if err != nil {
		return nil, err
	}
	return c.flushNow(ctx)
}

// flushedMin is the lowest ts this agent flushed over [start, end), 0 when
// part of it was never flushed here.
func (r *runner) flushedMin(start, end []byte) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flushed.min(start, end)
}

func (r *runner) recordFlushed(spans []span) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushed.apply(spans)
}

// trackingRegisterer remembers what was registered through it, so a
// capture's flusher leaves nothing behind when it is replaced.
type trackingRegisterer struct {
	prometheus.Registerer
	mu sync.Mutex
	cs []prometheus.Collector
}

func (t *trackingRegisterer) Register(c prometheus.Collector) error {
	if err := t.Registerer.Register(c); err != nil {
		return err
	}
	t.mu.Lock()
	t.cs = append(t.cs, c)
	t.mu.Unlock()
	return nil
}

func (t *trackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t *trackingRegisterer) Unregister(c prometheus.Collector) bool {
	t.mu.Lock()
	for i, x := range t.cs {
		if x == c {
			t.cs = append(t.cs[:i], t.cs[i+1:]...)
			break
		}
	}
	t.mu.Unlock()
	return t.Registerer.Unregister(c)
}

func (t *trackingRegisterer) unregisterAll() {
	t.mu.Lock()
	cs := t.cs
	t.cs = nil
	t.mu.Unlock()
	for _, c := range cs {
		t.Registerer.Unregister(c)
	}
}

func (r *runner) setMaxLag(v float64) {
	r.mu.Lock()
	r.maxLag = v
	r.mu.Unlock()
}

func (r *runner) lag() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxLag
}

// taskName, startTS and taskRanges make a runner the taskView of its
// captures.
func (r *runner) taskName() string             { return r.name }
func (r *runner) startTS() uint64              { return r.rec.GetInfo().GetStartTs() }
func (r *runner) taskRanges() []keyspace.Range { return r.ranges }
