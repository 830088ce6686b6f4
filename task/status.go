package task

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// DefaultSafePointTTL is the TTL of the GC safepoint held for a task: set
// when it starts or resumes, refreshed by the elected coordinator; a task
// paused longer than it is not healthy.
const DefaultSafePointTTL = 24 * time.Hour

// The views of tasks (`pitr task status`): the task record, the checkpoint
// and the elected coordinator's last published Status, read together.

// StatusFormatVersion is the version of the Status record this build writes.
const StatusFormatVersion = 1

// Status is what the elected coordinator publishes for a task each tick, as
// JSON under StatusKey. It is informational (the task record and the
// checkpoint key are authoritative) and written with the same fence.
type Status struct {
	FormatVersion int    `json:"format_version"`
	Task          string `json:"task"`
	// State is the task's state as the tick saw it.
	State      string `json:"state"`
	Checkpoint uint64 `json:"checkpoint"`
	// Covered: every task range had a current report at the last tick.
	Covered         bool `json:"covered"`
	UncoveredRanges int  `json:"uncovered_ranges"`
	Regions         int  `json:"regions"`
	StaleReports    int  `json:"stale_reports"`
	// Slowest lists what holds the checkpoint back.
	Slowest []SlowStatus  `json:"slowest,omitempty"`
	Agents  []AgentStatus `json:"agents,omitempty"`
	// SafePoint is the PD service safepoint held for the task (0: none).
	SafePoint           uint64 `json:"safepoint"`
	SafePointTTLSeconds int64  `json:"safepoint_ttl_seconds"`
	GCSafePoint         uint64 `json:"gc_safepoint"`
	// Locks are this term's lock resolutions for the task (nil: none).
	Locks *LockStatus `json:"lock_resolution,omitempty"`
	// RestorableFrom is the first restorable point and Storage what the
	// task's root holds, as the leader's last maintenance pass found them
	// (Config.RetentionInterval; zero: not measured yet).
	RestorableFrom uint64        `json:"restorable_from,omitempty"`
	Storage        *StorageUsage `json:"storage,omitempty"`
	// LastError is the last tick's problem (storage, PD, agents), if any.
	LastError     string `json:"last_error,omitempty"`
	Leader        string `json:"leader"`
	Term          int64  `json:"term"`
	UpdatedUnixMs int64  `json:"updated_unix_ms"`
}

// StorageUsage is what a task's storage root holds.
type StorageUsage struct {
	Bytes          int64 `json:"bytes"`
	Objects        int64 `json:"objects"`
	MeasuredUnixMs int64 `json:"measured_unix_ms"`
}

// SlowStatus is one Slow in a Status. Keys are hex.
type SlowStatus struct {
	Cause      string `json:"cause"`
	StartKey   string `json:"start_key"`
	EndKey     string `json:"end_key"`
	RegionID   uint64 `json:"region_id,omitempty"`
	StoreID    uint64 `json:"store_id,omitempty"`
	Checkpoint uint64 `json:"checkpoint,omitempty"`
	StartTS    uint64 `json:"start_ts,omitempty"`
	Reason     string `json:"reason"`
}

// Agent states in AgentStatus.
const (
	AgentUp         = "up"         // answered with the task's progress
	AgentNoTask     = "no-task"    // answered, but does not run the task (yet)
	AgentDown       = "down"       // did not answer in time
	AgentRegistered = "registered" // registered, not polled (task not running)
)

// AgentStatus is one agent as the last tick saw it.
type AgentStatus struct {
	StoreID uint64 `json:"store_id"`
	Addr    string `json:"addr"`
	State   string `json:"state"`
	Regions int    `json:"regions"`
	Error   string `json:"error,omitempty"`
}

// LockStatus is a task's lock resolutions in this term, in a Status. Keys
// are hex.
type LockStatus struct {
	// Runs counts the resolutions started; Errors those that failed; Locks
	// the locks they found (resolved or left alive).
	Runs   int64 `json:"runs"`
	Errors int64 `json:"errors,omitempty"`
	Locks  int64 `json:"locks"`
	// The last finished resolution: the start of its first range and the
	// end of its last, how many ranges it covered, when it ended, its
	// maxVersion, the locks it found, how long the longest live lock it
	// left has to live (0: none), its error.
	LastStartKey   string `json:"last_start_key"`
	LastEndKey     string `json:"last_end_key"`
	LastRanges     int    `json:"last_ranges,omitempty"`
	LastUnixMs     int64  `json:"last_unix_ms"`
	LastMaxVersion uint64 `json:"last_max_version"`
	LastLocks      int    `json:"last_locks"`
	LastLiveMs     int64  `json:"last_live_ms,omitempty"`
	LastError      string `json:"last_error,omitempty"`
}

// TaskView is what `pitr task status` shows of one task: the task record,
// the checkpoint and the coordinator's last status, read together.
type TaskView struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	Error      string `json:"error,omitempty"`
	StorageURL string `json:"storage_url"`
	// Ranges are the task's ranges as given (JSON: hex start_key and
	// end_key, empty end +inf).
	Ranges     []keyspace.Range `json:"ranges"`
	StartTS    uint64           `json:"start_ts"`
	StartTime  time.Time        `json:"start_time"`
	Checkpoint uint64           `json:"checkpoint"`
	// CheckpointTime is the checkpoint's wall-clock time; LagSeconds is
	// now minus it.
	CheckpointTime time.Time `json:"checkpoint_time"`
	LagSeconds     float64   `json:"lag_seconds"`
	// Status is the coordinator's last published status (nil: none yet);
	// StatusAgeSeconds is how old it is.
	Status           *Status `json:"status,omitempty"`
	StatusAgeSeconds float64 `json:"status_age_seconds,omitempty"`
	// Warnings are problems the reader should know about (a stale status,
	// no coordinator).
	Warnings []string `json:"warnings,omitempty"`
}

// StateName is the lower-case name of a task state.
func StateName(s pitrpb.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}

// ReadViews reads one task (name != "") or every task, as of now.
func ReadViews(ctx context.Context, cli *clientv3.Client, name string, now time.Time) ([]TaskView, error) {
	var recs []*pitrpb.TaskRecord
	if name != "" {
		r, _, err := Get(ctx, cli, name)
		if err != nil {
			return nil, err
		}
		recs = []*pitrpb.TaskRecord{r}
	} else {
		all, _, err := List(ctx, cli)
		if err != nil {
			return nil, err
		}
		recs = all
	}
	cps := map[string]uint64{}
	statuses := map[string]*Status{}
	prefixGet := func(prefix string, fn func(name string, v []byte) error) error {
		key, opts := prefix, []clientv3.OpOption{clientv3.WithPrefix()}
		if name != "" {
			key, opts = prefix+name, nil
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			return fmt.Errorf("read %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			if err := fn(strings.TrimPrefix(string(kv.Key), prefix), kv.Value); err != nil {
				return fmt.Errorf("%s: %w", kv.Key, err)
			}
		}
		return nil
	}
	if err := prefixGet(CheckpointPrefix, func(n string, v []byte) error {
		ts, err := DecodeTS(v)
		cps[n] = ts
		return err
	}); err != nil {
		return nil, err
	}
	if err := prefixGet(StatusPrefix, func(n string, v []byte) error {
		st := &Status{}
		if err := json.Unmarshal(v, st); err != nil {
			return fmt.Errorf("decode status: %w", err)
		}
		if st.FormatVersion <= StatusFormatVersion {
			statuses[n] = st
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var out []TaskView
	for _, r := range recs {
		out = append(out, NewView(r, cps[r.GetInfo().GetName()], statuses[r.GetInfo().GetName()], now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// staleStatusAfter is the status age past which a view warns that no
// coordinator is advancing the task.
const staleStatusAfter = 30 * time.Second

// NewView is the view of one task record with its checkpoint cp (0: the
// start ts) and the coordinator's status st (nil: none), as of now.
func NewView(r *pitrpb.TaskRecord, cp uint64, st *Status, now time.Time) TaskView {
	info := r.GetInfo()
	if cp == 0 {
		cp = info.GetStartTs()
	}
	v := TaskView{
		Name: info.GetName(), State: StateName(r.GetState()), Error: r.GetError(), StorageURL: r.GetStorageUrl(),
		StartTS: info.GetStartTs(), StartTime: keyspace.Time(info.GetStartTs()),
		Checkpoint: cp, CheckpointTime: keyspace.Time(cp),
		Status: st,
	}
	for _, kr := range info.GetRanges() {
		v.Ranges = append(v.Ranges, keyspace.Range{Start: kr.GetStartKey(), End: kr.GetEndKey()})
	}
	if r.GetState() == pitrpb.TaskState_TASK_STATE_STOPPED {
		return v
	}
	v.LagSeconds = max(0, now.Sub(v.CheckpointTime).Seconds())
	if r.GetState() == pitrpb.TaskState_TASK_STATE_PAUSED && r.GetUpdatedUnixMs() > 0 {
		ttl := DefaultSafePointTTL
		if st != nil && st.SafePointTTLSeconds > 0 {
			ttl = time.Duration(st.SafePointTTLSeconds) * time.Second
		}
		if d := now.Sub(time.UnixMilli(r.GetUpdatedUnixMs())); d > ttl {
			v.Warnings = append(v.Warnings, fmt.Sprintf("paused for %s, longer than the GC safepoint TTL %s: not healthy (a coordinator marks it failed)",
				d.Round(time.Second), ttl))
		}
	}
	if st == nil {
		v.Warnings = append(v.Warnings, "no coordinator has published a status for this task yet (is one running?)")
		return v
	}
	age := now.Sub(time.UnixMilli(st.UpdatedUnixMs))
	v.StatusAgeSeconds = max(0, age.Seconds())
	if age > staleStatusAfter {
		v.Warnings = append(v.Warnings, fmt.Sprintf("the last coordinator status is %s old (is a coordinator running and elected?)", age.Round(time.Second)))
	}
	return v
}
