package coordinator

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

// StatusFormatVersion is the version of the Status record this build writes.
const StatusFormatVersion = 1

// Status is what the elected coordinator publishes for a task each tick, as
// JSON under task.StatusKey. It is informational (the task record and the
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
	// LastError is the last tick's problem (storage, PD, agents), if any.
	LastError     string `json:"last_error,omitempty"`
	Leader        string `json:"leader"`
	Term          int64  `json:"term"`
	UpdatedUnixMs int64  `json:"updated_unix_ms"`
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

func slowStatuses(in []Slow) []SlowStatus {
	var out []SlowStatus
	for _, s := range in {
		out = append(out, SlowStatus{
			Cause: s.Cause.String(), StartKey: hex.EncodeToString(s.Range.Start), EndKey: hex.EncodeToString(s.Range.End),
			RegionID: s.RegionID, StoreID: s.StoreID, Checkpoint: s.Checkpoint, StartTS: s.StartTS, Reason: s.Reason,
		})
	}
	return out
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

// stateName is the lower-case name of a task state.
func stateName(s pitrpb.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}

// ReadViews reads one task (name != "") or every task, as of now.
func ReadViews(ctx context.Context, cli *clientv3.Client, name string, now time.Time) ([]TaskView, error) {
	var recs []*pitrpb.TaskRecord
	if name != "" {
		r, _, err := task.Get(ctx, cli, name)
		if err != nil {
			return nil, err
		}
		recs = []*pitrpb.TaskRecord{r}
	} else {
		all, _, err := task.List(ctx, cli)
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
	if err := prefixGet(task.CheckpointPrefix, func(n string, v []byte) error {
		ts, err := task.DecodeTS(v)
		cps[n] = ts
		return err
	}); err != nil {
		return nil, err
	}
	if err := prefixGet(task.StatusPrefix, func(n string, v []byte) error {
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
		out = append(out, makeView(r, cps[r.GetInfo().GetName()], statuses[r.GetInfo().GetName()], now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// staleStatusAfter is the status age past which a view warns that no
// coordinator is advancing the task.
const staleStatusAfter = 30 * time.Second

func makeView(r *pitrpb.TaskRecord, cp uint64, st *Status, now time.Time) TaskView {
	info := r.GetInfo()
	if cp == 0 {
		cp = info.GetStartTs()
	}
	v := TaskView{
		Name: info.GetName(), State: stateName(r.GetState()), Error: r.GetError(), StorageURL: r.GetStorageUrl(),
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

// RenderViews writes views as a readable table (several tasks) or a
// detailed block (one task with detail).
func RenderViews(w io.Writer, views []TaskView, detail bool) error {
	if len(views) == 0 {
		_, err := fmt.Fprintln(w, "no tasks")
		return err
	}
	if !detail {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tCHECKPOINT\tCHECKPOINT TIME (UTC)\tLAG\tUNCOVERED\tSTORAGE")
		for _, v := range views {
			unc := "-"
			if v.Status != nil && v.State != "stopped" {
				unc = strconv.Itoa(v.Status.UncoveredRanges)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.Checkpoint,
				v.CheckpointTime.Format("2006-01-02 15:04:05.000"), lagString(v), unc, v.StorageURL)
		}
		return tw.Flush()
	}
	for i, v := range views {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := renderDetail(w, v); err != nil {
			return err
		}
	}
	return nil
}

func lagString(v TaskView) string {
	if v.State == "stopped" {
		return "-"
	}
	return (time.Duration(v.LagSeconds * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func renderDetail(w io.Writer, v TaskView) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Task:\t%s\n", v.Name)
	fmt.Fprintf(tw, "State:\t%s\n", v.State)
	if v.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", v.Error)
	}
	fmt.Fprintf(tw, "Storage:\t%s\n", v.StorageURL)
	if len(v.Ranges) == 0 {
		fmt.Fprintf(tw, "Ranges:\tall keys\n")
	}
	for i, r := range v.Ranges {
		label := ""
		if i == 0 {
			label = "Ranges:"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, r)
	}
	fmt.Fprintf(tw, "Start ts:\t%s\n", keyspace.Format(v.StartTS))
	fmt.Fprintf(tw, "Checkpoint:\t%s\n", keyspace.Format(v.Checkpoint))
	fmt.Fprintf(tw, "Lag:\t%s\n", lagString(v))
	if st := v.Status; st != nil && v.State != "stopped" {
		fmt.Fprintf(tw, "Coverage:\t%d regions, %d uncovered ranges, %d stale reports\n", st.Regions, st.UncoveredRanges, st.StaleReports)
		if st.SafePoint != 0 {
			fmt.Fprintf(tw, "GC safepoint:\t%s held at %d (TTL %s); cluster GC safepoint %d\n",
				SafePointID(v.Name), st.SafePoint, time.Duration(st.SafePointTTLSeconds)*time.Second, st.GCSafePoint)
		}
		if l := st.Locks; l != nil {
			fmt.Fprintf(tw, "Lock resolution:\t%s\n", lockLine(l))
		}
		fmt.Fprintf(tw, "Coordinator:\t%s (term %d), status %s old\n", st.Leader, st.Term,
			(time.Duration(v.StatusAgeSeconds * float64(time.Second))).Round(100*time.Millisecond))
		if st.LastError != "" {
			fmt.Fprintf(tw, "Last error:\t%s\n", st.LastError)
		}
	}
	for _, wn := range v.Warnings {
		fmt.Fprintf(tw, "Warning:\t%s\n", wn)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	st := v.Status
	if st == nil || v.State == "stopped" {
		return nil
	}
	if len(st.Slowest) > 0 {
		fmt.Fprintln(w, "\nSlowest:")
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CAUSE\tRANGE\tREGION\tSTORE\tCHECKPOINT\tREASON")
		for _, s := range st.Slowest {
			region, store, cp := "-", "-", "-"
			if s.RegionID != 0 {
				region, store, cp = strconv.FormatUint(s.RegionID, 10), strconv.FormatUint(s.StoreID, 10), strconv.FormatUint(s.Checkpoint, 10)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Cause, hexRange(s.StartKey, s.EndKey),
				region, store, cp, s.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(st.Agents) > 0 {
		fmt.Fprintln(w, "\nAgents:")
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  STORE\tADDR\tSTATE\tREGIONS\tERROR")
		for _, a := range st.Agents {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%d\t%s\n", a.StoreID, a.Addr, a.State, a.Regions, a.Error)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// lockLine describes a task's lock resolutions in one line.
func lockLine(l *LockStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d runs", l.Runs)
	if l.Errors > 0 {
		fmt.Fprintf(&b, " (%d failed)", l.Errors)
	}
	fmt.Fprintf(&b, ", %d locks found", l.Locks)
	if l.LastUnixMs == 0 {
		return b.String()
	}
	in := ""
	if l.LastRanges > 1 {
		in = fmt.Sprintf(" (%d lagging ranges)", l.LastRanges)
	}
	fmt.Fprintf(&b, "; last %s%s at %s, max_version %d: %d locks", hexRange(l.LastStartKey, l.LastEndKey),
		in, time.UnixMilli(l.LastUnixMs).UTC().Format(time.RFC3339), l.LastMaxVersion, l.LastLocks)
	if l.LastLiveMs > 0 {
		fmt.Fprintf(&b, ", live ones left (TTL ends in %s)", (time.Duration(l.LastLiveMs) * time.Millisecond).Round(100*time.Millisecond))
	}
	if l.LastError != "" {
		fmt.Fprintf(&b, ", error: %s", l.LastError)
	}
	return b.String()
}

// hexRange renders a range whose keys a status record holds in hex as
// keyspace.Range.String does; a key that is not hex (a record from a newer
// or broken writer) is shown as it is.
func hexRange(start, end string) string {
	s, err1 := hex.DecodeString(start)
	e, err2 := hex.DecodeString(end)
	if err1 != nil || err2 != nil {
		return "[" + start + ", " + end + ")"
	}
	return keyspace.Range{Start: s, End: e}.String()
}

// marshalStatus encodes a status record.
func marshalStatus(st *Status) ([]byte, error) {
	st.FormatVersion = StatusFormatVersion
	return json.Marshal(st)
}

// encodeRecord is task.EncodeRecord on a copy.
func encodeRecord(r *pitrpb.TaskRecord) ([]byte, error) {
	return task.EncodeRecord(protobuf.Clone(r).(*pitrpb.TaskRecord))
}

func cloneRecord(r *pitrpb.TaskRecord) *pitrpb.TaskRecord {
	return protobuf.Clone(r).(*pitrpb.TaskRecord)
}
