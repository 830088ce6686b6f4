package coordinator

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// retention applies the retention policy of one term (Config.Keep,
// Config.KeepSnapshots): every RetentionInterval it truncates each task's
// root (restore.Truncate) to now − Keep, but never past the KeepSnapshots-th
// newest finished snapshot, so at least that many snapshots and the log
// after the oldest of them stay. In the background, at most one at a time
// per task, cancelled when the term ends; a truncate the term did not
// finish is finished by the next one (Truncate is idempotent).
type retention struct {
	t   *term
	log hclog.Logger
	ctx context.Context

	mu      sync.Mutex
	running map[string]bool
	next    map[string]time.Time
}

func newRetention(t *term, ctx context.Context) *retention {
	return &retention{t: t, log: t.log.Named("retention"), ctx: ctx, running: map[string]bool{}, next: map[string]time.Time{}}
}

// maybe starts a truncate of a running or paused task when it is due.
func (r *retention) maybe(rec *pitrpb.TaskRecord, now time.Time) {
	cfg := r.t.c.cfg
	if cfg.Keep <= 0 {
		return
	}
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
		res, err := r.run(rec, now)
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.running, name)
		result := "ok"
		switch {
		case err != nil && r.ctx.Err() != nil:
			result = "cancelled"
		case err != nil:
			result = "error"
			r.log.Warn("retention: truncate failed", "task", name, "error", err)
		case res == nil:
			result = "nothing"
		default:
			r.t.c.met.restorableFrom.WithLabelValues(name).Set(float64(keyspace.Time(res.UntilTS).Unix()))
		}
		r.t.c.met.truncations.WithLabelValues(result).Inc()
		wait := cfg.RetentionInterval
		if err != nil {
			wait = min(max(wait/10, 10*time.Second), wait)
		}
		r.next[name] = time.Now().Add(wait)
	}()
}

// run truncates one task's root; nil, nil when the policy keeps everything.
func (r *retention) run(rec *pitrpb.TaskRecord, now time.Time) (*restore.TruncateResult, error) {
	cfg := r.t.c.cfg
	name := rec.GetInfo().GetName()
	st, err := storage.OpenStack(r.ctx, rec.GetStorageUrl(), storage.StackOptions{Logger: r.log, Metrics: r.t.c.storMet})
	if err != nil {
		return nil, err
	}
	defer st.Close()
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
