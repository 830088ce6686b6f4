package restore

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// PlanInput is everything a restore plan depends on. Planning is pure: it
// reads nothing and writes nothing, so it is table-tested without storage.
type PlanInput struct {
	Task       *pitrpb.TaskInfo
	Checkpoint uint64
	Metas      []MetaFile
	// Coverage is the metas' coverage (Backup.Coverage); nil: taken from
	// Metas (CoverageOf).
	Coverage []logfile.Cover
	// TruncatedTo is Backup.TruncatedTo: the restorable range starts
	// there, and a restore needs a base at or after it.
	TruncatedTo uint64
	// RestoreTS is T: the restored cluster reads at T as the source did.
	RestoreTS uint64
	// Snapshots are the candidate bases: the task root's snapshots
	// (snapshot.List), or with Explicit the one snapshot --snapshot names.
	Snapshots []snapshot.Info
	Explicit  bool
	// SnapshotURL is where Snapshots were read (for messages).
	SnapshotURL string
	// Volume: the base is a volume backup the target was recovered from
	// (Snapshots are not used).
	Volume *VolumeBase
}

// VolumeBase is a volume backup a target was recovered from: it holds the
// cluster as it was at BackupTS (the backup's resolved ts).
type VolumeBase struct {
	// Root is the backup's root in the task root (volume/<ts>/).
	Root     string
	BackupTS uint64
}

// start is where the restorable range can begin: the task's start ts, or
// the truncation point when the log before it was removed.
func (in PlanInput) start() uint64 { return max(in.Task.GetStartTs(), in.TruncatedTo) }

// startedEmpty reports whether the log alone, from start, rebuilds the
// ranges: the task started on empty ranges and nothing was truncated.
func (in PlanInput) startedEmpty() bool { return in.Task.GetStartedEmpty() && in.TruncatedTo == 0 }

// FileRef is one data file a plan reads, and the meta that references it.
type FileRef struct {
	Meta string
	File *pitrpb.DataFile
	// Base: a file of the base snapshot, whose path is relative to Root in
	// the snapshot's storage (Plan.Base); else a log file of the task root.
	Base bool
	Root string
}

// Key is the file's object key in its storage.
func (f FileRef) Key() string { return f.Root + f.File.GetPath() }

// Plan is what a restore to RestoreTS does: which files it reads, which key
// ranges it writes, in which units it records progress.
type Plan struct {
	Task       string
	RestoreTS  uint64
	StartTS    uint64
	Checkpoint uint64
	// Base is the snapshot written first (nil: the log alone rebuilds the
	// ranges, the task having started on empty ones).
	Base *Base
	// LogFrom is where the log is replayed from: the log window is
	// (LogFrom, RestoreTS]; Base's backup ts, or the task's start ts.
	LogFrom uint64
	// BaseFiles and BaseBytes count the base's files among Files.
	BaseFiles int
	BaseBytes int64
	// Ranges are the task ranges, sorted and merged.
	Ranges []keyspace.Range
	// Files are the data files holding commits at or before RestoreTS that
	// meet the ranges, in path order, each once.
	Files []FileRef
	// Pruned counts the referenced files left out by their statistics.
	Pruned int
	// Units partition Ranges at the source regions' boundaries (from the
	// metas' coverage); a unit is the grain of resume.
	Units []keyspace.Range
	// Bytes, Rows and LogicalBytes sum Files' statistics. Rows and
	// LogicalBytes are upper bounds of what is written: they include the
	// files' rows committed after RestoreTS and duplicates.
	Bytes, Rows, LogicalBytes int64
}

// NewPlan checks a restore to in.RestoreTS and plans it:
//   - T outside [start_ts, checkpoint] is ErrOutOfRange, naming the range;
//   - the base is the newest usable snapshot with start_ts ≤ B ≤ T
//     (chooseBase, base.go); none is needed when the task started on
//     empty ranges, else its absence is ErrNoBase, or ErrOutOfRange for a
//     T before the first snapshot;
//   - the metas' coverage must leave no hole in ranges × (B, T]
//     (ErrMissing), B being the task's start ts without a base;
//   - the files are the base's and the log's with a commit in (B, T]
//     that meet the ranges (min_commit_ts ≤ T, max_commit_ts > B, key
//     bounds overlap); the log files' rows at or before B that survive
//     this are dropped when read (fileIter).
func NewPlan(in PlanInput) (*Plan, error) {
	t, start, cp := in.RestoreTS, in.start(), in.Checkpoint
	if t < start || t > cp {
		return nil, fmt.Errorf("%w: %s is outside the restorable range; restorable range is [%s, %s]",
			ErrOutOfRange, keyspace.Format(t), keyspace.Format(start), keyspace.Format(cp))
	}
	ranges := taskRanges(in.Task)
	base, err := chooseBase(in, ranges)
	if err != nil {
		return nil, err
	}
	from := start
	if base != nil {
		from = base.BackupTS
	}
	covers := in.Coverage
	if covers == nil {
		if covers, err = CoverageOf(in.Metas); err != nil {
			return nil, err
		}
	}
	if err := CheckCoverage(ranges, covers, from, t); err != nil {
		return nil, err
	}
	p := &Plan{Task: in.Task.GetName(), RestoreTS: t, StartTS: start, Checkpoint: cp, Base: base, LogFrom: from, Ranges: ranges}
	if base != nil {
		for _, f := range base.fileRefs() {
			if f.File.GetRows() == 0 || !overlapsAny(ranges, f.File.GetMinKey(), f.File.GetMaxKey()) {
				p.Pruned++
				continue
			}
			p.Files = append(p.Files, f)
			p.BaseFiles++
			p.BaseBytes += f.File.GetSize()
			p.Bytes += f.File.GetSize()
			p.Rows += f.File.GetRows()
			p.LogicalBytes += f.File.GetLogicalBytes()
		}
	}
	seen := map[string]bool{}
	for _, m := range in.Metas {
		for _, f := range m.Meta.GetFiles() {
			if seen[f.GetPath()] {
				continue
			}
			seen[f.GetPath()] = true
			// A file whose every commit is at or before B holds versions
			// the base already has (or older ones it shadows).
			belowBase := base != nil && f.GetMaxCommitTs() != 0 && f.GetMaxCommitTs() >= f.GetMinCommitTs() && f.GetMaxCommitTs() <= from
			if f.GetRows() == 0 || f.GetMinCommitTs() > t || belowBase || !overlapsAny(ranges, f.GetMinKey(), f.GetMaxKey()) {
				p.Pruned++
				continue
			}
			p.Files = append(p.Files, FileRef{Meta: m.Path, File: f})
			p.Bytes += f.GetSize()
			p.Rows += f.GetRows()
			p.LogicalBytes += f.GetLogicalBytes()
		}
	}
	slices.SortFunc(p.Files, func(a, b FileRef) int {
		if a.Base != b.Base { // the base's files first
			if a.Base {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Key(), b.Key())
	})
	var cuts [][]byte
	if base != nil {
		for _, c := range base.Meta.GetChecksums() {
			cuts = append(cuts, c.GetRange().GetStartKey(), c.GetRange().GetEndKey())
		}
	}
	p.Units = splitUnits(ranges, covers, cuts...)
	return p, nil
}

func overlapsAny(ranges []keyspace.Range, minKey, maxKey []byte) bool {
	for _, r := range ranges {
		if overlapsClosed(r, minKey, maxKey) {
			return true
		}
	}
	return false
}

// splitUnits cuts the ranges at every coverage boundary inside them, and
// at the extra keys.
func splitUnits(ranges []keyspace.Range, covers []logfile.Cover, extra ...[]byte) []keyspace.Range {
	var cuts [][]byte
	for _, k := range extra {
		if len(k) > 0 {
			cuts = append(cuts, k)
		}
	}
	for _, c := range covers {
		for _, k := range [][]byte{c.Start, c.End} {
			if len(k) > 0 {
				cuts = append(cuts, k)
			}
		}
	}
	slices.SortFunc(cuts, bytes.Compare)
	cuts = slices.CompactFunc(cuts, bytes.Equal)
	var units []keyspace.Range
	for _, r := range ranges {
		i, _ := slices.BinarySearchFunc(cuts, r.Start, bytes.Compare)
		start := r.Start
		for ; i < len(cuts) && keyspace.BeforeEnd(cuts[i], r.End); i++ {
			if bytes.Compare(cuts[i], start) <= 0 {
				continue
			}
			units = append(units, keyspace.Range{Start: start, End: cuts[i]})
			start = cuts[i]
		}
		units = append(units, keyspace.Range{Start: start, End: r.End})
	}
	return units
}

// job is a run of consecutive, adjacent units [first, last) that one worker
// reads in one sweep, so that a file's row groups are read once per job, not
// once per unit.
type job struct {
	first, last int
	est         int64 // estimated logical bytes
}

// splitJobs groups units into jobs of about target estimated logical bytes.
// A file's logical bytes are spread evenly over the units its key bounds
// meet (a rough guess; it only balances the work). Jobs never span a gap
// between units.
func splitJobs(units []keyspace.Range, files []FileRef, target int64) []job {
	if len(units) == 0 {
		return nil
	}
	diff := make([]float64, len(units)+1)
	for _, f := range files {
		lo, hi := unitSpan(units, f.File.GetMinKey(), f.File.GetMaxKey())
		if lo > hi {
			continue
		}
		per := float64(f.File.GetLogicalBytes()) / float64(hi-lo+1)
		diff[lo] += per
		diff[hi+1] -= per
	}
	var jobs []job
	cur := job{first: 0}
	var acc, run float64
	for i := range units {
		run += diff[i]
		if i > cur.first && (acc >= float64(target) || !bytes.Equal(units[i-1].End, units[i].Start) || len(units[i-1].End) == 0) {
			cur.last, cur.est = i, int64(acc)
			jobs = append(jobs, cur)
			cur, acc = job{first: i}, 0
		}
		acc += run
	}
	cur.last, cur.est = len(units), int64(acc)
	return append(jobs, cur)
}

// unitSpan returns the indices of the first and last unit meeting the
// closed key interval [minKey, maxKey] (lo > hi: none).
func unitSpan(units []keyspace.Range, minKey, maxKey []byte) (lo, hi int) {
	// First unit whose end is after minKey.
	lo, _ = slices.BinarySearchFunc(units, minKey, func(u keyspace.Range, k []byte) int {
		if keyspace.BeforeEnd(k, u.End) {
			return 1
		}
		return -1
	})
	// Last unit starting at or before maxKey.
	n, _ := slices.BinarySearchFunc(units, maxKey, func(u keyspace.Range, k []byte) int {
		if bytes.Compare(u.Start, k) > 0 {
			return 1
		}
		return -1
	})
	return lo, n - 1
}

// Print writes the plan for humans (pitr restore --dry-run).
func (p *Plan) Print(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "restore plan for task %q\n", p.Task)
	fmt.Fprintf(&b, "  restore to    %s\n", keyspace.Format(p.RestoreTS))
	fmt.Fprintf(&b, "  restorable    [%s, %s]\n", keyspace.Format(p.StartTS), keyspace.Format(p.Checkpoint))
	if p.Base != nil && p.Base.Volume {
		fmt.Fprintf(&b, "  base          volume backup %s at %s, already in the target\n", strings.TrimSuffix(p.Base.URL, "/")+"/"+p.Base.Root, keyspace.Format(p.Base.BackupTS))
	} else if p.Base != nil {
		fmt.Fprintf(&b, "  base          snapshot %s at %s: %d files, %s\n", strings.TrimSuffix(p.Base.URL, "/")+"/"+p.Base.Root, keyspace.Format(p.Base.BackupTS), p.BaseFiles, storage.FormatBytes(p.BaseBytes))
	} else {
		fmt.Fprintf(&b, "  base          none: log only (the task started on empty ranges, the log alone rebuilds them)\n")
	}
	fmt.Fprintf(&b, "  log window    (%s, %s]\n", keyspace.Format(p.LogFrom), keyspace.Format(p.RestoreTS))
	fmt.Fprintf(&b, "  key ranges    %d:", len(p.Ranges))
	for i, r := range p.Ranges {
		if i == 8 {
			fmt.Fprintf(&b, " ... (%d more)", len(p.Ranges)-i)
			break
		}
		fmt.Fprintf(&b, " %s", r)
	}
	fmt.Fprintf(&b, "\n  units         %d (source region ranges; the grain of resume)\n", len(p.Units))
	fmt.Fprintf(&b, "  files         %d to read (%d pruned by their statistics), %s in storage\n", len(p.Files), p.Pruned, storage.FormatBytes(p.Bytes))
	fmt.Fprintf(&b, "  rows          at most %d, %s of keys and values (including commits after the restore point and duplicates)\n", p.Rows, storage.FormatBytes(p.LogicalBytes))
	for i, f := range p.Files {
		if i == 20 {
			fmt.Fprintf(&b, "    ... (%d more)\n", len(p.Files)-i)
			break
		}
		fmt.Fprintf(&b, "    %s  %s  %d rows  commit_ts [%d, %d]\n", f.Key(), storage.FormatBytes(f.File.GetSize()), f.File.GetRows(), f.File.GetMinCommitTs(), f.File.GetMaxCommitTs())
	}
	_, err := io.WriteString(w, b.String())
	return err
}
