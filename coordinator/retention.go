package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// retention is the maintenance pass of one term over each running or
// paused task's root, every RetentionInterval: it compacts the chains of
// metas sealed since the last pass (restore.Compact; unless NoCompaction),
// and with a retention policy
// (Config.Keep, Config.KeepSnapshots) it truncates the root
// (restore.Truncate) to now − Keep, but never past the KeepSnapshots-th
// newest finished snapshot, so at least that many snapshots and the log
// after the oldest of them stay; then it measures the restorable range's
// start and the storage the root uses, which the task's Status shows. In
// the background, at most one at a time per task, cancelled when the term
// ends; a truncate the term did not finish is finished by the next one
// (Truncate is idempotent).
type retention struct {
	t   *term
	log hclog.Logger
	ctx context.Context

	mu      sync.Mutex
	running map[string]bool
	next    map[string]time.Time
	found   map[string]usage // the last pass's findings per task
}

// usage is what a maintenance pass found of a task's root.
type usage struct {
	restorableFrom uint64
	storage        task.StorageUsage
}

// status fills st with the last findings for its task.
func (r *retention) status(st *task.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u, ok := r.found[st.Task]; ok {
		su := u.storage
		st.RestorableFrom, st.Storage = u.restorableFrom, &su
	}
}

func newRetention(t *term, ctx context.Context) *retention {
	return &retention{t: t, log: t.log.Named("retention"), ctx: ctx, running: map[string]bool{}, next: map[string]time.Time{}, found: map[string]usage{}}
}

// maybe starts the pass over a running or paused task when it is due.
func (r *retention) maybe(rec *pitrpb.TaskRecord, now time.Time) {
	cfg := r.t.c.cfg
	switch rec.GetState() {
	case pitrpb.TaskState_TASK_STATE_RUNNING, pitrpb.TaskState_TASK_STATE_PAUSED:
	default:
		return
	}
	name := rec.GetInfo().GetName()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[name] || now.Before(r.next[name]) {
		return
	}
	r.running[name] = true
	r.t.wg.Add(1)
	go func() {
		defer r.t.wg.Done()
		res, u, err := r.pass(rec, now)
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.running, name)
		result := "ok"
		switch {
		case err != nil && r.ctx.Err() != nil:
			result = "cancelled"
		case err != nil:
			result = "error"
			r.log.Warn("maintenance pass failed", "task", name, "error", err)
		case res == nil:
			result = "nothing"
		}
		if err == nil {
			r.found[name] = u
			if u.restorableFrom != 0 {
				r.t.c.met.restorableFrom.WithLabelValues(name).Set(float64(keyspace.Time(u.restorableFrom).Unix()))
			}
			r.t.c.met.storageBytes.WithLabelValues(name).Set(float64(u.storage.Bytes))
		}
		if cfg.Keep > 0 {
			r.t.c.met.truncations.WithLabelValues(result).Inc()
		}
		wait := cfg.RetentionInterval
		if err != nil {
			wait = min(max(wait/10, 10*time.Second), wait)
		}
		r.next[name] = time.Now().Add(wait)
	}()
}

// pass truncates one task's root (when there is a policy) and measures
// it.
func (r *retention) pass(rec *pitrpb.TaskRecord, now time.Time) (*restore.TruncateResult, usage, error) {
	st, err := storage.OpenStack(r.ctx, rec.GetStorageUrl(), storage.StackOptions{Logger: r.log, Metrics: r.t.c.storMet})
	if err != nil {
		return nil, usage{}, err
	}
	defer st.Close()
	var res *restore.TruncateResult
	if r.t.c.cfg.Keep > 0 {
		if res, err = r.truncate(rec, st, now); err != nil {
			return nil, usage{}, err
		}
	}
	if !r.t.c.cfg.NoCompaction {
		if err := r.compact(rec); err != nil {
			return res, usage{}, err
		}
	}
	var u usage
	if u.restorableFrom, err = restore.RestorableFrom(r.ctx, st); err != nil {
		return res, usage{}, err
	}
	err = st.List(r.ctx, "", func(oi storage.ObjectInfo) error {
		u.storage.Bytes += oi.Size
		u.storage.Objects++
		return nil
	})
	if err != nil {
		return res, usage{}, err
	}
	u.storage.MeasuredUnixMs = time.Now().UnixMilli()
	return res, u, nil
}

// compact runs one compaction of the task's root (restore.Compact, with
// CompactFileTarget and CompactGrace) through a storage stack limited to
// CompactRateLimit; another process compacting
// it (pitr compact) is not an error.
func (r *retention) compact(rec *pitrpb.TaskRecord) error {
	cfg := r.t.c.cfg
	st, err := storage.OpenStack(r.ctx, rec.GetStorageUrl(), storage.StackOptions{Logger: r.log, Metrics: r.t.c.storMet, RateLimit: cfg.CompactRateLimit})
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := restore.Compact(r.ctx, st, restore.CompactOptions{Concurrency: cfg.CompactConcurrency,
		FileTarget: cfg.CompactFileTarget, Grace: cfg.CompactGrace, SealIdle: cfg.CompactSealIdle, Logger: r.log})
	switch {
	case errors.Is(err, snapshot.ErrConflict):
		r.log.Info("compaction skipped: another process is compacting", "task", rec.GetInfo().GetName(), "reason", err)
		r.t.c.met.compactions.WithLabelValues("busy").Inc()
		return nil
	case err != nil:
		r.t.c.met.compactions.WithLabelValues("error").Inc()
		return fmt.Errorf("compact: %w", err)
	}
	result := "nothing"
	if res.Compacted != "" || res.RemovedMetas+res.RemovedOrphans > 0 {
		result = "ok"
		r.log.Info(res.Summary(), "task", rec.GetInfo().GetName())
	}
	r.t.c.met.compactions.WithLabelValues(result).Inc()
	r.t.c.met.compactedBytes.Add(float64(res.InputBytes))
	return nil
}

// truncate applies the policy to one task's root; nil, nil when it keeps
// everything.
func (r *retention) truncate(rec *pitrpb.TaskRecord, st storage.Storage, now time.Time) (*restore.TruncateResult, error) {
	cfg := r.t.c.cfg
	name := rec.GetInfo().GetName()
	until := keyspace.Compose(now.Add(-cfg.Keep).UnixMilli(), 0)
	if cfg.KeepSnapshots > 0 {
		infos, err := snapshot.List(r.ctx, st)
		if err != nil {
			return nil, err
		}
		var done []uint64
		for _, in := range infos {
			if in.Finished() {
				done = append(done, in.BackupTS)
			}
		}
		if len(done) < cfg.KeepSnapshots {
			return nil, nil
		}
		slices.Sort(done)
		until = min(until, done[len(done)-cfg.KeepSnapshots])
	}
	res, err := restore.Truncate(r.ctx, st, until, restore.TruncateOptions{CreatedBy: "coordinator " + r.t.c.cfg.ID})
	switch {
	case errors.Is(err, restore.ErrNoBase), errors.Is(err, restore.ErrOutOfRange):
		// No snapshot that old yet, or the checkpoint is behind: nothing
		// may go.
		r.log.Debug("retention: nothing to truncate", "task", name, "until", keyspace.Format(until), "reason", err)
		return nil, nil
	case err != nil:
		return nil, err
	}
	if res.Metas+res.Files+len(res.Snapshots) > 0 {
		r.log.Info("retention: truncated", "task", name, "restorable_from", keyspace.Format(res.UntilTS),
			"metas", res.Metas, "files", res.Files, "bytes", res.Bytes, "snapshots", len(res.Snapshots))
	}
	return res, nil
}
