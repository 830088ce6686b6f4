package coordinator

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// snapshots takes the scheduled snapshot backups of one term
// (Config.SnapshotInterval): at most one at a time per task, in the
// background, cancelled when the term ends. A backup the term did not
// finish is resumed by the next one (snapshot.Run resumes the newest
// unfinished backup of the same ranges).
type snapshots struct {
	t   *term
	log hclog.Logger
	ctx context.Context // ends with the term

	mu      sync.Mutex
	running map[string]bool
	last    map[string]uint64    // newest finished backup ts per task (0: unknown yet)
	retryAt map[string]time.Time // after a failure, no new try before this
}

func newSnapshots(t *term, ctx context.Context) *snapshots {
	return &snapshots{t: t, log: t.log.Named("snapshot"), ctx: ctx, running: map[string]bool{}, last: map[string]uint64{}, retryAt: map[string]time.Time{}}
}

// maybe starts a backup of a running task whose newest snapshot is older
// than the interval (or that has none).
func (s *snapshots) maybe(rec *pitrpb.TaskRecord, now time.Time) {
	interval := s.t.c.cfg.SnapshotInterval
	if interval <= 0 || s.t.c.cfg.KV == nil || rec.GetState() != pitrpb.TaskState_TASK_STATE_RUNNING {
		return
	}
	name := rec.GetInfo().GetName()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running[name] || now.Before(s.retryAt[name]) {
		return
	}
	if last := s.last[name]; last != 0 && now.Sub(keyspace.Time(last)) < interval {
		return
	}
	s.running[name] = true
	s.t.wg.Add(1)
	go func() {
		defer s.t.wg.Done()
		b, err := s.run(rec, now, interval)
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.running, name)
		if b > s.last[name] {
			s.last[name] = b
		}
		result := "ok"
		switch {
		case err != nil && s.ctx.Err() != nil:
			result = "cancelled"
		case err != nil:
			result = "error"
			wait := min(max(interval/10, 10*time.Second), interval)
			s.retryAt[name] = time.Now().Add(wait)
			s.log.Warn("scheduled snapshot failed", "task", name, "retry_in", wait, "error", err)
		}
		if b != 0 || err != nil {
			s.t.c.met.snapshots.WithLabelValues(result).Inc()
		}
		if b != 0 {
			s.t.c.met.snapshotTS.WithLabelValues(name).Set(float64(keyspace.Time(b).Unix()))
		}
	}()
}

// run takes one task's backup if its newest finished one (in storage) is
// older than interval; it returns that newest backup ts.
func (s *snapshots) run(rec *pitrpb.TaskRecord, now time.Time, interval time.Duration) (uint64, error) {
	name := rec.GetInfo().GetName()
	st, err := storage.OpenStack(s.ctx, rec.GetStorageUrl(), storage.StackOptions{Logger: s.log, Metrics: s.t.c.storMet})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	infos, err := snapshot.List(s.ctx, st)
	if err != nil {
		return 0, err
	}
	var newest uint64
	for _, in := range infos {
		if in.Finished() && in.BackupTS > newest {
			newest = in.BackupTS
		}
	}
	if newest != 0 && now.Sub(keyspace.Time(newest)) < interval {
		return newest, nil
	}
	agents, err := snapshot.NewEtcdAgents(s.ctx, s.t.c.etcd, s.t.c.cfg.TLS)
	if err != nil {
		return newest, err
	}
	defer agents.Close()
	s.log.Info("taking a scheduled snapshot", "task", name, "newest", newest, "interval", interval)
	res, err := snapshot.Run(s.ctx, snapshot.Options{Storage: st, StorageURL: rec.GetStorageUrl(), PD: s.t.c.pd,
		KV: s.t.c.cfg.KV, Agents: agents, Logger: s.log})
	if err != nil {
		return newest, err
	}
	s.log.Info("scheduled snapshot taken", "task", name, "backup_ts", res.BackupTS, "files", res.Files, "bytes", res.Bytes, "duration", res.Duration)
	return res.BackupTS, nil
}
