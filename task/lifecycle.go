package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// Errors of the task operations, for callers that map them to exit
// statuses.
var (
	// ErrInvalidRequest: a bad argument (name, range, URL); nothing changed.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrTaskExists: a task of that name is already recorded.
	ErrTaskExists = errors.New("task already exists")
	// ErrStorageOwned: the storage root belongs to another task or cluster.
	ErrStorageOwned = errors.New("storage root owned by another task")
	// ErrStartTS: the start ts is in the future or GC may have passed it.
	ErrStartTS = errors.New("start ts not usable")
	// ErrTaskState: the task's state does not allow the operation.
	ErrTaskState = errors.New("task state does not allow this")
)

// StartOptions describe a new
type StartOptions struct {
	Name       string
	StorageURL string
	// StartTS is the first ts the backup covers (0: PD's current ts).
	StartTS uint64
	// Ranges are the raw key ranges to back up (none: every key).
	Ranges []keyspace.Range
	// SafePointTTL is the TTL of the GC safepoint set at StartTS (0:
	// DefaultSafePointTTL); the coordinator refreshes it.
	SafePointTTL time.Duration
	// Now is the wall clock (zero: time.Now()).
	Now time.Time
	// EmptyAt, when set, reports whether the ranges hold no data at ts (a
	// snapshot read). The answer is recorded as TaskInfo.started_empty: a
	// restore may then use the log alone as its base. Unset, the task is
	// recorded as not started empty and restores need a base snapshot.
	EmptyAt func(ctx context.Context, ranges []*pitrpb.KeyRange, ts uint64) (bool, error)
}

// StartTask starts a task: it checks the name is free and the start ts is
// above PD's GC safepoint, claims the storage root (pitr.lock; a root owned
// by another task or cluster is refused), writes pb and the initial
// checkpoint/global, holds the GC safepoint at the start ts, and records the
// task in etcd (create-only). A start that failed midway can be retried
// with the same arguments.
func StartTask(ctx context.Context, etcd *clientv3.Client, p PD, o StartOptions) (*pitrpb.TaskRecord, error) {
	if err := ValidateName(o.Name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
	}
	if o.StorageURL == "" {
		return nil, fmt.Errorf("%w: a storage URL is required (--storage)", ErrInvalidRequest)
	}
	if strings.Contains(storage.RedactURL(o.StorageURL), "REDACTED") {
		return nil, fmt.Errorf("%w: the storage URL %s carries credentials; give them to agents and coordinators through their environment instead",
			ErrInvalidRequest, storage.RedactURL(o.StorageURL))
	}
	var ranges []*pitrpb.KeyRange
	if len(o.Ranges) > 0 {
		for _, r := range o.Ranges {
			if len(r.End) > 0 && string(r.Start) >= string(r.End) {
				return nil, fmt.Errorf("%w: range [%q, %q) is empty", ErrInvalidRequest, r.Start, r.End)
			}
		}
		for _, r := range keyspace.Normalize(o.Ranges) {
			ranges = append(ranges, &pitrpb.KeyRange{StartKey: r.Start, EndKey: r.End})
		}
	}
	ttl := o.SafePointTTL
	if ttl == 0 {
		ttl = DefaultSafePointTTL
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("%w: GC safepoint TTL %s is below 1s", ErrInvalidRequest, ttl)
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}

	// The name must be free before anything else is touched.
	if _, _, err := Get(ctx, etcd, o.Name); err == nil {
		return nil, fmt.Errorf("%w: task %s (pick another name; `pitr task status %s` shows it)", ErrTaskExists, o.Name, o.Name)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", connector.ErrUnavailable, err)
	}

	// The start ts: at most now, above the GC safepoint.
	nowTS, err := connector.GetTS(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", connector.ErrUnavailable, err)
	}
	gcSP, err := p.UpdateGCSafePoint(ctx, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: read GC safepoint: %v", connector.ErrUnavailable, err)
	}
	startTS := o.StartTS
	if startTS == 0 {
		startTS = nowTS
	}
	if startTS > nowTS {
		return nil, fmt.Errorf("%w: start ts %s is in the future (PD's ts is %d)", ErrStartTS, keyspace.Format(startTS), nowTS)
	}
	if startTS <= gcSP {
		return nil, fmt.Errorf("%w: start ts %s is not above the GC safepoint %s: older versions may be gone; use a later --start-ts",
			ErrStartTS, keyspace.Format(startTS), keyspace.Format(gcSP))
	}
	clusterID := p.GetClusterID(ctx)

	// Claim the storage root.
	s, err := storage.OpenStack(ctx, o.StorageURL, storage.StackOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
	}
	defer s.Close()
	host, _ := os.Hostname()
	lock, err := logfile.EncodeLock(&pitrpb.Lock{Task: o.Name, ClusterId: clusterID, CreatedUnixMs: now.UnixMilli(),
		CreatedBy: fmt.Sprintf("%s/%d", host, os.Getpid())})
	if err != nil {
		return nil, err
	}
	if err := s.CreateIfAbsent(ctx, logfile.LockPath, lock); errors.Is(err, storage.ErrAlreadyExists) {
		b, err := s.Get(ctx, logfile.LockPath)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", logfile.LockPath, err)
		}
		l, err := logfile.DecodeLock(b)
		if err != nil {
			return nil, fmt.Errorf("%w: %s holds an unreadable %s (%v)", ErrStorageOwned, s.URL(), logfile.LockPath, err)
		}
		if l.GetTask() != o.Name || l.GetClusterId() != clusterID {
			return nil, fmt.Errorf("%w: %s belongs to task %q of cluster %d (since %s); use another storage root",
				ErrStorageOwned, s.URL(), l.GetTask(), l.GetClusterId(), time.UnixMilli(l.GetCreatedUnixMs()).UTC().Format(time.RFC3339))
		}
	} else if err != nil {
		return nil, fmt.Errorf("write %s: %w", logfile.LockPath, err)
	}
	info := &pitrpb.TaskInfo{Name: o.Name, StartTs: startTS, Ranges: ranges, Compression: pitrpb.Compression_COMPRESSION_ZSTD,
		ClusterId: clusterID, CreatedUnixMs: now.UnixMilli()}
	if o.EmptyAt != nil {
		empty, err := o.EmptyAt(ctx, ranges, startTS)
		if err != nil {
			return nil, fmt.Errorf("%w: check whether the ranges are empty at the start ts: %v", connector.ErrUnavailable, err)
		}
		info.StartedEmpty = empty
	}
	b, err := logfile.EncodeTaskInfo(info)
	if err != nil {
		return nil, err
	}
	if err := s.Put(ctx, logfile.TaskPath, b); err != nil {
		return nil, fmt.Errorf("write %s: %w", logfile.TaskPath, err)
	}
	if b, err = logfile.EncodeCheckpoint(&pitrpb.GlobalCheckpoint{Task: o.Name, Ts: startTS, WrittenUnixMs: now.UnixMilli()}); err != nil {
		return nil, err
	}
	if err := s.CreateIfAbsent(ctx, logfile.CheckpointPath, b); err != nil && !errors.Is(err, storage.ErrAlreadyExists) {
		return nil, fmt.Errorf("write %s: %w", logfile.CheckpointPath, err)
	}

	// Hold GC at the start ts before the task exists (I3).
	min, err := p.UpdateServiceGCSafePoint(ctx, SafePointID(o.Name), int64(ttl/time.Second), startTS)
	if err != nil {
		return nil, fmt.Errorf("%w: set GC safepoint %s: %v", connector.ErrUnavailable, SafePointID(o.Name), err)
	}
	if min > startTS {
		return nil, fmt.Errorf("%w: PD will not hold GC at start ts %d: its minimum service safepoint is already %d; use a later --start-ts",
			ErrStartTS, startTS, min)
	}

	rec := &pitrpb.TaskRecord{Info: info, StorageUrl: o.StorageURL, State: pitrpb.TaskState_TASK_STATE_RUNNING, UpdatedUnixMs: now.UnixMilli()}
	rb, err := encodeCopy(rec)
	if err != nil {
		return nil, err
	}
	resp, err := etcd.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(Key(o.Name)), "=", 0)).Then(
		clientv3.OpPut(Key(o.Name), string(rb)),
		clientv3.OpPut(CheckpointKey(o.Name), string(EncodeTS(startTS))),
		clientv3.OpDelete(StatusKey(o.Name)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("%w: record task: %v", connector.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("%w: task %s was created concurrently", ErrTaskExists, o.Name)
	}
	return rec, nil
}

// updateTask applies fn to a task record with compare-and-swap, retrying
// when the record changes underneath. fn returns false to leave the record
// as it is.
func updateTask(ctx context.Context, etcd *clientv3.Client, name string, fn func(rec *pitrpb.TaskRecord, cp uint64) (bool, error)) (*pitrpb.TaskRecord, bool, error) {
	for attempt := 0; ; attempt++ {
		rec, rev, err := Get(ctx, etcd, name)
		if err != nil {
			return nil, false, err
		}
		cp, err := Checkpoint(ctx, etcd, name)
		if err != nil {
			return nil, false, err
		}
		if cp == 0 {
			cp = rec.GetInfo().GetStartTs()
		}
		change, err := fn(rec, cp)
		if err != nil || !change {
			return rec, false, err
		}
		b, err := encodeCopy(rec)
		if err != nil {
			return nil, false, err
		}
		resp, err := etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(Key(name)), "=", rev)).
			Then(clientv3.OpPut(Key(name), string(b))).Commit()
		if err != nil {
			return nil, false, fmt.Errorf("%w: update task %s: %v", connector.ErrUnavailable, name, err)
		}
		if resp.Succeeded {
			return rec, true, nil
		}
		if attempt >= 10 {
			return nil, false, fmt.Errorf("update task %s: it keeps changing; try again", name)
		}
	}
}

// PauseTask pauses a running task: agents stop capturing, the coordinator
// stops advancing, and the GC safepoint stays held at the checkpoint (it is
// refreshed here with ttl first). A task paused for longer than the TTL
// fails. It reports whether the state changed (false: already paused).
func PauseTask(ctx context.Context, etcd *clientv3.Client, p PD, name string, ttl time.Duration, now time.Time) (bool, error) {
	if ttl == 0 {
		ttl = DefaultSafePointTTL
	}
	_, changed, err := updateTask(ctx, etcd, name, func(rec *pitrpb.TaskRecord, cp uint64) (bool, error) {
		switch rec.GetState() {
		case pitrpb.TaskState_TASK_STATE_PAUSED:
			return false, nil
		case pitrpb.TaskState_TASK_STATE_RUNNING:
		default:
			return false, fmt.Errorf("%w: task %s is %s; only a running task can be paused", ErrTaskState, name, StateName(rec.GetState()))
		}
		if _, err := p.UpdateServiceGCSafePoint(ctx, SafePointID(name), int64(ttl/time.Second), cp); err != nil {
			return false, fmt.Errorf("%w: hold GC safepoint %s: %v", connector.ErrUnavailable, SafePointID(name), err)
		}
		rec.State, rec.UpdatedUnixMs = pitrpb.TaskState_TASK_STATE_PAUSED, now.UnixMilli()
		return true, nil
	})
	return changed, err
}

// ResumeTask resumes a paused (or failed) task, unless PD's GC has passed
// its checkpoint. It reports whether the state changed (false: already
// running).
func ResumeTask(ctx context.Context, etcd *clientv3.Client, p PD, name string, ttl time.Duration, now time.Time) (bool, error) {
	if ttl == 0 {
		ttl = DefaultSafePointTTL
	}
	_, changed, err := updateTask(ctx, etcd, name, func(rec *pitrpb.TaskRecord, cp uint64) (bool, error) {
		switch rec.GetState() {
		case pitrpb.TaskState_TASK_STATE_RUNNING:
			return false, nil
		case pitrpb.TaskState_TASK_STATE_PAUSED, pitrpb.TaskState_TASK_STATE_FAILED:
		default:
			return false, fmt.Errorf("%w: task %s is %s; start a new task instead", ErrTaskState, name, StateName(rec.GetState()))
		}
		gcSP, err := p.UpdateGCSafePoint(ctx, 0)
		if err != nil {
			return false, fmt.Errorf("%w: read GC safepoint: %v", connector.ErrUnavailable, err)
		}
		min, err := p.UpdateServiceGCSafePoint(ctx, SafePointID(name), int64(ttl/time.Second), cp)
		if err != nil {
			return false, fmt.Errorf("%w: hold GC safepoint %s: %v", connector.ErrUnavailable, SafePointID(name), err)
		}
		if gcSP > cp || min > cp {
			return false, fmt.Errorf("%w: cannot resume %s: GC has moved past its checkpoint %d (GC safepoint %d, minimum service safepoint %d); stop it and start a new task",
				ErrTaskState, name, cp, gcSP, min)
		}
		rec.State, rec.Error, rec.UpdatedUnixMs = pitrpb.TaskState_TASK_STATE_RUNNING, "", now.UnixMilli()
		return true, nil
	})
	return changed, err
}

// StopTask stops a task and removes its GC safepoint; its data and
// metadata in storage are kept. It reports whether the state changed
// (false: already stopped; the safepoint is removed again anyway).
func StopTask(ctx context.Context, etcd *clientv3.Client, p PD, name string, now time.Time) (bool, error) {
	_, changed, err := updateTask(ctx, etcd, name, func(rec *pitrpb.TaskRecord, _ uint64) (bool, error) {
		if rec.GetState() == pitrpb.TaskState_TASK_STATE_STOPPED {
			return false, nil
		}
		rec.State, rec.UpdatedUnixMs = pitrpb.TaskState_TASK_STATE_STOPPED, now.UnixMilli()
		return true, nil
	})
	if err != nil {
		return false, err
	}
	// After the state change, so a coordinator that refreshed the safepoint
	// concurrently sees the stop and releases it too.
	if _, err := p.UpdateServiceGCSafePoint(ctx, SafePointID(name), 0, 0); err != nil {
		return changed, fmt.Errorf("%w: remove GC safepoint %s (run stop again): %v", connector.ErrUnavailable, SafePointID(name), err)
	}
	return changed, nil
}

// PD is what the task operations and the coordinator need of PD. A
// github.com/tikv/pd/client Client is one.
type PD interface {
	// UpdateServiceGCSafePoint sets (ttl > 0) or removes (ttl <= 0) a
	// service safepoint and returns the minimum service safepoint after the
	// update; a safepoint below that minimum is not stored.
	UpdateServiceGCSafePoint(ctx context.Context, serviceID string, ttl int64, safePoint uint64) (uint64, error)
	// UpdateGCSafePoint with 0 reads the GC safepoint (it only moves forward).
	UpdateGCSafePoint(ctx context.Context, safePoint uint64) (uint64, error)
	// GetTS allocates a timestamp.
	GetTS(ctx context.Context) (physical, logical int64, err error)
	// GetClusterID returns the cluster id.
	GetClusterID(ctx context.Context) uint64
}

// SafePointID is the PD service safepoint id of a task.
func SafePointID(taskName string) string { return "pitr-" + taskName }

// encodeCopy is EncodeRecord on a copy.
func encodeCopy(r *pitrpb.TaskRecord) ([]byte, error) { return EncodeRecord(CloneRecord(r)) }

// CloneRecord returns a deep copy of a task record.
func CloneRecord(r *pitrpb.TaskRecord) *pitrpb.TaskRecord {
	return protobuf.Clone(r).(*pitrpb.TaskRecord)
}
