package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// flushLoop cuts a flush every FlushInterval, when the buffer reaches
// FileTarget, and on FlushNow. A failed flush hands its rows back to the
// flusher, so the next one retries them, except when a spill run is corrupt:
// then every later flush would fail the same way, so the loop ends the
// capture (a fatalError) and the runner starts a fresh one with a fresh
// flusher, whose regions subscribe again from their flushed checkpoints.
func (c *capture) flushLoop(ctx context.Context) error {
	t := time.NewTicker(c.cfg.FlushInterval)
	defer t.Stop()
	for {
		var reply chan flushResult
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.full:
		case reply = <-c.flushReq:
		}
		meta, err := c.cut(ctx, reply != nil)
		if reply != nil {
			reply <- flushResult{meta, err}
		}
		if err == nil || ctx.Err() != nil {
			continue
		}
		var fatal *fatalError
		if errors.As(err, &fatal) {
			c.log.Error("flush failed for good; capturing again from the flushed checkpoints", "error", err)
			return err
		}
		c.log.Warn("flush failed; its rows go out with the next one", "error", err)
	}
}

// flushNow asks the flush loop for a cut now and waits for it.
func (c *capture) flushNow(ctx context.Context) (*pitrpb.Meta, error) {
	reply := make(chan flushResult, 1)
	select {
	case c.flushReq <- reply:
	case <-c.stopped:
		return nil, fmt.Errorf("%w: capture stopped", errNotReady)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-reply:
		return res.meta, res.err
	case <-c.stopped:
		return nil, fmt.Errorf("%w: capture stopped", errNotReady)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// cut is one flush (DESIGN §3 "Flush cut"): it freezes every initialized
// region's resolved ts, stores everything received so far and a meta with
// each region's coverage (from, resolved], and only then advances the
// regions' checkpoints to the frozen ts.
//
// The freeze happens under c.mu, which the stream reader also holds while it
// applies a ResolvedTs; a ResolvedTs is applied only after every row read
// before it was added to the flusher, and Flush takes every row added before
// the call. So the flush holds every change with commit_ts ≤ the frozen ts
// of each region (TiKV sends none at or below a resolved ts afterwards,
// TIKV-PROTOCOLS §1.7). Rows added between the freeze and Flush are newer;
// they go out early, which is harmless.
//
// Regions not initialized are not reported: their range stays at its last
// checkpoint, which pins the global checkpoint, as it must.
func (c *capture) cut(ctx context.Context, force bool) (*pitrpb.Meta, error) {
	type frozen struct {
		r   *region
		cov *pitrpb.RegionCoverage
	}
	var covs []*pitrpb.RegionCoverage
	var fr []frozen
	c.mu.Lock()
	for _, r := range c.regions {
		if r.state != stateNormal || r.m.resolvedTS <= r.from {
			continue
		}
		cov := &pitrpb.RegionCoverage{
			RegionId: r.id, EpochVersion: r.epoch.Version, EpochConfVer: r.epoch.ConfVer,
			StartKey: r.start, EndKey: r.end, FromTs: r.from, ToTs: r.m.resolvedTS,
		}
		covs = append(covs, cov)
		fr = append(fr, frozen{r, cov})
	}
	c.mu.Unlock()
	if !force && len(covs) == 0 && c.fl.Buffered() == 0 {
		return nil, nil
	}
	// The flush ts comes after the freeze, so it is above every to_ts.
	ts, err := c.tso(ctx)
	if err != nil {
		c.health.setPDErr(fmt.Errorf("pd: %w", err))
		return nil, err
	}
	start := time.Now()
	meta, err := c.fl.Flush(ctx, ts, covs)
	c.met.flushDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		c.met.flushes.WithLabelValues("error").Inc()
		c.mu.Lock()
		c.flushErr = err.Error()
		c.mu.Unlock()
		err = fmt.Errorf("flush at %d: %w", ts, err)
		if errors.Is(err, flush.ErrSpillCorrupt) {
			// flush/spill.go: every later Flush of this Flusher fails the
			// same way; only a fresh one (and a fresh capture) recovers.
			return nil, &fatalError{err}
		}
		return nil, err
	}
	c.met.flushes.WithLabelValues("ok").Inc()

	spans := make([]span, len(covs))
	for i, cov := range covs {
		spans[i] = span{start: cov.StartKey, end: cov.EndKey, ts: cov.ToTs}
	}
	c.task.recordFlushed(spans)
	now := time.Now()
	c.mu.Lock()
	for _, f := range fr {
		// A region subscribed again meanwhile keeps its identity only if
		// PD still shows the same epoch and range; then what is stored
		// covers it up to to_ts.
		if c.regions[f.r.id] == f.r && f.r.epoch.Version == f.cov.EpochVersion && f.r.epoch.ConfVer == f.cov.EpochConfVer {
			f.r.from = max(f.r.from, f.cov.ToTs)
		}
	}
	c.flushErr = ""
	c.lastFlush = now
	c.observeLagLocked(now)
	c.mu.Unlock()
	return meta, nil
}

// observeLagLocked updates the lag metrics: per region, now minus the
// physical time of its checkpoint.
func (c *capture) observeLagLocked(now time.Time) {
	var worst float64
	for _, r := range c.regions {
		if r.from == 0 {
			continue
		}
		lag := now.Sub(keyspace.Time(r.from)).Seconds()
		if lag < 0 {
			lag = 0
		}
		c.met.regionLag.Observe(lag)
		worst = max(worst, lag)
	}
	c.task.setMaxLag(worst)
}

// progress reports every region this capture knows, by start key.
func (c *capture) progress() []*pitrpb.RegionProgress {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*pitrpb.RegionProgress
	for _, r := range c.sortedRegionsLocked() {
		if r.from == 0 {
			continue // never subscribed: nothing to claim
		}
		p := &pitrpb.RegionProgress{
			RegionId: r.id, EpochVersion: r.epoch.Version, EpochConfVer: r.epoch.ConfVer,
			StartKey: r.start, EndKey: r.end, Checkpoint: r.from,
		}
		if r.m != nil {
			p.OldestPendingStartTs = r.m.oldestPending()
		}
		p.Reason = c.reasonLocked(r, p.OldestPendingStartTs, now)
		out = append(out, p)
	}
	return out
}

func (c *capture) reasonLocked(r *region, oldest uint64, now time.Time) string {
	if r.m != nil && r.m.exempt {
		return fmt.Sprintf("pending prewrites of %s kept over the prewrite budget of %s (open transactions larger than the budget)",
			mib(r.m.bytes), mib(c.cfg.PrewriteBudget))
	}
	switch r.state {
	case stateIdle:
		if c.feed == nil && c.feedErr != "" {
			return "change stream down: " + c.feedErr
		}
		return r.reason
	case statePending:
		return fmt.Sprintf("not initialized (incremental scan running for %s)", now.Sub(r.since).Round(time.Millisecond))
	case stateStopping:
		return "deregistering: " + r.reason
	}
	if c.flushErr != "" {
		return "flush failing: " + c.flushErr
	}
	if oldest != 0 && now.Sub(keyspace.Time(oldest)) > 2*c.cfg.FlushInterval {
		return fmt.Sprintf("long transaction start_ts=%d", oldest)
	}
	return ""
}

// stats reports counts for Status and metrics.
func (c *capture) counts() (subscribed, initialized int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.regions {
		switch r.state {
		case statePending, stateStopping:
			subscribed++
		case stateNormal:
			subscribed++
			initialized++
		}
	}
	return subscribed, initialized
}

// streamOK reports whether the change stream is up ("" when it is).
func (c *capture) streamErr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.feed == nil {
		if c.feedErr == "" {
			return "change stream connecting"
		}
		return "change stream down: " + c.feedErr
	}
	return ""
}
