package restore

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// LogInfo is what `pitr log` shows of a task root: what a restore could
// use, window by window, and where the log has holes (like `br log
// metadata`, with the gaps and not only the first and last ts).
type LogInfo struct {
	Task         string           `json:"task"`
	StartTS      uint64           `json:"start_ts"`
	Checkpoint   uint64           `json:"checkpoint"`
	StartedEmpty bool             `json:"started_empty"`
	Ranges       []keyspace.Range `json:"-"`
	// Restorable is the first restorable point (the task's start when it
	// started empty, else its oldest usable snapshot); 0 when there is
	// none yet. Restores are possible in [Restorable, Checkpoint] except
	// where Holes are.
	Restorable uint64         `json:"restorable_from"`
	Snapshots  []SnapshotInfo `json:"snapshots"`
	Metas      int            `json:"metas"`
	// Keyframes and Deltas count the format 3 metas; Legacy the older.
	Keyframes int   `json:"keyframes"`
	Deltas    int   `json:"deltas"`
	Legacy    int   `json:"legacy_metas"`
	MetaBytes int64 `json:"meta_bytes"`
	Files     int   `json:"files"`
	FileBytes int64 `json:"file_bytes"`
	Rows      int64 `json:"rows"`
	// Coverage is the number of coverage rectangles after merging.
	Coverage int         `json:"coverage_rectangles"`
	Windows  []LogWindow `json:"windows"`
	// Holes lists up to maxHoles holes of the log over the task ranges ×
	// (start, checkpoint], in key order; More says there were more.
	Holes []HoleInfo `json:"holes"`
	More  bool       `json:"more_holes"`
	// Compacted counts the compacted metas (none before pitr compact).
	Compacted int `json:"compacted_metas"`
	// TruncatedTo is where pitr truncate moved the restorable range's
	// start (0: never truncated).
	TruncatedTo uint64 `json:"truncated_to"`
}

// SnapshotInfo is one snapshot under the task root.
type SnapshotInfo struct {
	BackupTS uint64 `json:"backup_ts"`
	Finished bool   `json:"finished"`
	Files    int    `json:"files"`
	Bytes    int64  `json:"bytes"`
	// Usable: a restore can start from it (finished, of this task's
	// cluster, covering the task ranges, at or after the task's start).
	Usable bool `json:"usable"`
}

// LogWindow is one window of flushes (by flush time).
type LogWindow struct {
	Start time.Time `json:"start"`
	Metas int       `json:"metas"`
	Files int       `json:"files"`
	Bytes int64     `json:"bytes"`
	Rows  int64     `json:"rows"`
}

// HoleInfo is a Hole for JSON.
type HoleInfo struct {
	Start string `json:"start_key"` // hex, "" for -inf
	End   string `json:"end_key"`   // hex, "" for +inf
	From  uint64 `json:"from_ts"`
	To    uint64 `json:"to_ts"`
	hole  Hole
}

const maxHoles = 20

// RestorableFrom returns the first restorable point of a task root, from
// task.pb, the truncation record and the snapshots alone (no meta is read,
// so holes are not looked for): the task's start when it started empty and
// was never truncated, else its oldest usable snapshot at or after the
// truncation point; 0 when there is none yet.
func RestorableFrom(ctx context.Context, src Source) (uint64, error) {
	taskBytes, err := src.Get(ctx, logfile.TaskPath)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", logfile.TaskPath, err)
	}
	tk, err := logfile.DecodeTaskInfo(taskBytes)
	if err != nil {
		return 0, objectError(logfile.TaskPath, err)
	}
	tr, err := loadOptional(ctx, src, logfile.TruncationPath, tk.GetName(), logfile.DecodeTruncation)
	if err != nil {
		return 0, err
	}
	in := PlanInput{Task: tk, TruncatedTo: tr.GetUntilTs(), Checkpoint: ^uint64(0), SnapshotURL: src.URL()}
	if !in.startedEmpty() {
		if in.Snapshots, _, err = loadSnapshots(ctx, src, nil); err != nil {
			return 0, err
		}
	}
	return in.firstRestorable(), nil
}

// usable reports whether a restore can start from s: chooseBase picks it
// for a restore to its own backup ts.
func (in PlanInput) usable(s snapshot.Info) bool {
	if !s.Finished() || s.BackupTS < in.start() || s.BackupTS > in.Checkpoint {
		return false
	}
	in.RestoreTS = s.BackupTS
	base, err := chooseBase(in, taskRanges(in.Task))
	return err == nil && base != nil && base.BackupTS == s.BackupTS
}

// firstRestorable is the first restorable point: the start when the log
// alone rebuilds the ranges, else the oldest usable snapshot of
// in.Snapshots; 0 when there is none.
func (in PlanInput) firstRestorable() uint64 {
	if in.startedEmpty() {
		return in.start()
	}
	for _, s := range in.Snapshots {
		if in.usable(s) {
			return s.BackupTS
		}
	}
	return 0
}

// DescribeLog reads a task root's metas and snapshots (no data file) and
// summarizes them in windows of the given length (default an hour).
func DescribeLog(ctx context.Context, src Source, window time.Duration) (*LogInfo, error) {
	if window <= 0 {
		window = time.Hour
	}
	b, err := Load(ctx, src)
	if err != nil {
		return nil, err
	}
	li := &LogInfo{Task: b.Task.GetName(), StartTS: b.Task.GetStartTs(), Checkpoint: b.Checkpoint,
		StartedEmpty: b.Task.GetStartedEmpty(), Ranges: taskRanges(b.Task), Metas: len(b.Metas), Coverage: len(b.Coverage)}
	err = src.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		if strings.HasSuffix(oi.Key, ".meta") {
			li.MetaBytes += oi.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", logfile.MetaPrefix, err)
	}
	byWindow := map[int64]*LogWindow{}
	seen := map[string]bool{}
	for _, m := range b.Metas {
		switch {
		case m.IsCompacted():
			li.Compacted++
		case m.Meta.GetFormatVersion() < logfile.MetaFormatVersion:
			li.Legacy++
		case logfile.IsDelta(m.Meta):
			li.Deltas++
		default:
			li.Keyframes++
		}
		at := keyspace.Time(m.Meta.GetFlushTs()).UTC().Truncate(window)
		w := byWindow[at.UnixNano()]
		if w == nil {
			w = &LogWindow{Start: at}
			byWindow[at.UnixNano()] = w
		}
		w.Metas++
		for _, f := range m.Meta.GetFiles() {
			if seen[f.GetPath()] {
				continue
			}
			seen[f.GetPath()] = true
			w.Files++
			w.Bytes += f.GetSize()
			w.Rows += f.GetRows()
			li.Files++
			li.FileBytes += f.GetSize()
			li.Rows += f.GetRows()
		}
	}
	for _, w := range byWindow {
		li.Windows = append(li.Windows, *w)
	}
	slices.SortFunc(li.Windows, func(a, b LogWindow) int { return a.Start.Compare(b.Start) })

	snaps, _, err := loadSnapshots(ctx, src, nil)
	if err != nil {
		return nil, err
	}
	li.TruncatedTo = b.TruncatedTo
	in := PlanInput{Task: b.Task, Checkpoint: b.Checkpoint, TruncatedTo: b.TruncatedTo, Snapshots: snaps, SnapshotURL: b.URL}
	li.Restorable = in.firstRestorable()
	for _, s := range snaps {
		si := SnapshotInfo{BackupTS: s.BackupTS, Finished: s.Finished(), Usable: in.usable(s)}
		for _, f := range s.Meta.GetFiles() {
			si.Files++
			si.Bytes += f.GetSize()
		}
		li.Snapshots = append(li.Snapshots, si)
	}
	holes := findHoles(li.Ranges, coverageRects(b.Coverage), max(li.StartTS, b.TruncatedTo), li.Checkpoint, maxHoles+1)
	if len(holes) > maxHoles {
		holes, li.More = holes[:maxHoles], true
	}
	for _, h := range holes {
		li.Holes = append(li.Holes, HoleInfo{Start: fmt.Sprintf("%x", h.Keys.Start), End: fmt.Sprintf("%x", h.Keys.End), From: h.From, To: h.To, hole: h})
	}
	return li, nil
}

// Print writes li for people.
func (li *LogInfo) Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Task:\t%s\n", li.Task)
	fmt.Fprintf(tw, "Start ts:\t%s\n", keyspace.Format(li.StartTS))
	fmt.Fprintf(tw, "Checkpoint:\t%s\n", keyspace.Format(li.Checkpoint))
	if li.TruncatedTo > 0 {
		fmt.Fprintf(tw, "Truncated:\tbefore %s\n", keyspace.Format(li.TruncatedTo))
	}
	switch {
	case li.Restorable == 0:
		fmt.Fprintf(tw, "Restorable:\tnothing yet: the task started on data and has no usable snapshot (pitr backup full)\n")
	default:
		fmt.Fprintf(tw, "Restorable:\t[%s, %s]", keyspace.Format(li.Restorable), keyspace.Format(li.Checkpoint))
		if len(li.Holes) > 0 {
			fmt.Fprintf(tw, " except where the log has holes (below)")
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintf(tw, "Metas:\t%d (%s): %d keyframes, %d continuing a chain, %d of format 1-2; %d compacted\n",
		li.Metas, storage.FormatBytes(li.MetaBytes), li.Keyframes, li.Deltas, li.Legacy, li.Compacted)
	fmt.Fprintf(tw, "Files:\t%d (%s, %d rows)\n", li.Files, storage.FormatBytes(li.FileBytes), li.Rows)
	fmt.Fprintf(tw, "Coverage:\t%d rectangles\n", li.Coverage)
	switch {
	case len(li.Holes) == 0:
		fmt.Fprintf(tw, "Holes:\tnone\n")
	case li.More:
		fmt.Fprintf(tw, "Holes:\tmore than %d (the first below)\n", len(li.Holes))
	default:
		fmt.Fprintf(tw, "Holes:\t%d (below)\n", len(li.Holes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(li.Snapshots) > 0 {
		fmt.Fprintf(tw, "Snapshots:\n")
		for _, s := range li.Snapshots {
			state := "unfinished"
			switch {
			case s.Usable:
				state = "usable"
			case s.Finished:
				state = "finished, not usable by this task"
			}
			fmt.Fprintf(tw, "  %s\t%d files, %s\t%s\n", keyspace.Format(s.BackupTS), s.Files, storage.FormatBytes(s.Bytes), state)
		}
	}
	if len(li.Windows) > 0 {
		fmt.Fprintf(tw, "Windows:\n")
		for _, w := range li.Windows {
			fmt.Fprintf(tw, "  %s\t%d metas\t%d files\t%s\t%d rows\n", w.Start.Format(time.RFC3339), w.Metas, w.Files, storage.FormatBytes(w.Bytes), w.Rows)
		}
	}
	if len(li.Holes) > 0 {
		fmt.Fprintf(tw, "Holes:\n")
		for _, h := range li.Holes {
			fmt.Fprintf(tw, "  %s\n", h.hole.String())
		}
	}
	return tw.Flush()
}
