package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
)

// Base is the snapshot a restore starts from: every key visible at
// BackupTS, written before the log in (BackupTS, T].
type Base struct {
	// URL is the snapshot's storage (the task root's, or --snapshot's).
	URL string
	// Root is the snapshot root inside it ("snapshot/<ts>/", or "").
	Root string
	// Explicit: the snapshot was named (--snapshot) and is read from a
	// Source of its own, not from the task root.
	Explicit bool
	BackupTS uint64
	Meta     *pitrpb.BackupMeta
	// Volume: a volume backup the target was recovered from; no files.
	Volume bool
}

// fileRefs returns the snapshot's data files as the plan reads them.
func (b *Base) fileRefs() []FileRef {
	var out []FileRef
	for _, f := range b.Meta.GetFiles() {
		out = append(out, FileRef{Meta: b.Root + snapshot.MetaName, File: f, Base: true, Root: b.Root})
	}
	return out
}

// loadSnapshots finds the candidate bases: the one snapshot at the top of
// snap when it is set (--snapshot), else the task root's snapshots.
func loadSnapshots(ctx context.Context, src, snap Source) (infos []snapshot.Info, explicit bool, err error) {
	if snap != nil {
		info, err := snapshot.Load(ctx, snap, "")
		if errors.Is(err, snapshot.ErrNoSnapshot) {
			return nil, true, fmt.Errorf("%w: %s holds no snapshot backup (no %s, no %s)", ErrNotBackup, snap.URL(), snapshot.MetaName, snapshot.LockName)
		} else if err != nil {
			return nil, true, objectError(snap.URL(), err)
		}
		return []snapshot.Info{info}, true, nil
	}
	infos, err = snapshot.List(ctx, src)
	if err != nil {
		return nil, false, objectError(logfile.SnapshotPrefix, err)
	}
	return infos, false, nil
}

// covers reports whether have covers every range of want.
func covers(have, want []keyspace.Range) bool {
	have = keyspace.Merge(slices.Clone(have))
	for _, w := range want {
		got := keyspace.Merge(keyspace.Clip(w, have))
		if len(got) != 1 || !bytes.Equal(got[0].Start, w.Start) || !bytes.Equal(got[0].End, w.End) {
			return false
		}
	}
	return true
}

// chooseBase picks the base of a restore to in.RestoreTS (nil: the log
// alone), or says why there is none:
//   - explicit (--snapshot): that snapshot, which must be finished, of the
//     task's cluster, cover the task ranges and have start_ts ≤ B ≤ T;
//   - else the newest finished snapshot with start_ts ≤ B ≤ T covering the
//     task ranges; one of another cluster is an error (ErrNotBackup);
//   - none, and the task started empty: the log alone;
//   - none, and T is before the first usable snapshot: ErrOutOfRange,
//     naming [first B, checkpoint];
//   - none at all: ErrNoBase, saying how to take one.
func chooseBase(in PlanInput, ranges []keyspace.Range) (*Base, error) {
	task, t, start := in.Task, in.RestoreTS, in.start()
	if v := in.Volume; v != nil {
		if v.BackupTS < start || v.BackupTS > t {
			return nil, fmt.Errorf("%w: the volume backup's resolved ts is %s; a restore to %s needs one in [%s, %s]",
				ErrOutOfRange, keyspace.Format(v.BackupTS), keyspace.Format(t), keyspace.Format(start), keyspace.Format(t))
		}
		return &Base{URL: in.SnapshotURL, Root: v.Root, BackupTS: v.BackupTS, Volume: true}, nil
	}
	check := func(s snapshot.Info) error {
		m := s.Meta
		where := strings.TrimSuffix(in.SnapshotURL, "/") + "/" + s.Root
		if m == nil {
			return fmt.Errorf("%w: snapshot %s is unfinished (no %s)", ErrMissing, where, snapshot.MetaName)
		}
		if a, b := m.GetClusterId(), task.GetClusterId(); a != 0 && b != 0 && a != b {
			return fmt.Errorf("%w: snapshot %s is of cluster %d but task %q backs up cluster %d", ErrNotBackup, where, a, task.GetName(), b)
		}
		if n := m.GetTask(); n != "" && n != task.GetName() {
			return fmt.Errorf("%w: snapshot %s belongs to task %q, not %q", ErrNotBackup, where, n, task.GetName())
		}
		if !covers(snapshot.Ranges(m), ranges) {
			return fmt.Errorf("%w: snapshot %s backs up %v, which does not cover the task ranges %v", ErrNoBase, where, snapshot.Ranges(m), ranges)
		}
		return nil
	}
	base := func(s snapshot.Info) *Base {
		return &Base{URL: in.SnapshotURL, Root: s.Root, Explicit: in.Explicit, BackupTS: s.BackupTS, Meta: s.Meta}
	}
	if in.Explicit {
		if len(in.Snapshots) != 1 {
			return nil, fmt.Errorf("%w: --snapshot names no snapshot", ErrNotBackup)
		}
		s := in.Snapshots[0]
		if err := check(s); err != nil {
			return nil, err
		}
		if b := s.BackupTS; b < start || b > t {
			return nil, fmt.Errorf("%w: snapshot %s has backup ts %s; a restore to %s needs one in [%s, %s]",
				ErrOutOfRange, in.SnapshotURL, keyspace.Format(b), keyspace.Format(t), keyspace.Format(start), keyspace.Format(t))
		}
		return base(s), nil
	}
	var first *snapshot.Info // the oldest usable snapshot at all
	var skipped error        // why the newest candidate ≤ T was passed over
	for i := len(in.Snapshots) - 1; i >= 0; i-- {
		s := in.Snapshots[i]
		if !s.Finished() || s.BackupTS < start {
			continue
		}
		if s.BackupTS > t {
			if err := check(s); err == nil {
				first = &in.Snapshots[i]
			}
			continue
		}
		err := check(s)
		if errors.Is(err, ErrNotBackup) {
			return nil, err
		}
		if err != nil {
			if skipped == nil {
				skipped = err
			}
			continue
		}
		return base(s), nil
	}
	if in.startedEmpty() {
		return nil, nil
	}
	if in.TruncatedTo > 0 && first == nil {
		msg := fmt.Sprintf("the log of task %q before %s was truncated, and no usable snapshot at or after it remains", task.GetName(), keyspace.Format(in.TruncatedTo))
		if skipped != nil {
			msg += fmt.Sprintf(" (%v)", skipped)
		}
		return nil, fmt.Errorf("%w: %s", ErrNoBase, msg)
	}
	if first != nil && first.BackupTS > in.Checkpoint {
		return nil, fmt.Errorf("%w: task %q did not start on empty ranges and its first snapshot, at %s, is after the global checkpoint %s: nothing is restorable until the checkpoint passes it",
			ErrOutOfRange, task.GetName(), keyspace.Format(first.BackupTS), keyspace.Format(in.Checkpoint))
	}
	if first != nil {
		why := "did not start on empty ranges"
		if in.TruncatedTo > 0 {
			why = "was truncated to " + keyspace.Format(in.TruncatedTo)
		}
		return nil, fmt.Errorf("%w: %s is before the task's first snapshot; task %q %s, so its restorable range is [%s, %s]",
			ErrOutOfRange, keyspace.Format(t), task.GetName(), why, keyspace.Format(first.BackupTS), keyspace.Format(in.Checkpoint))
	}
	msg := fmt.Sprintf("task %q did not start on empty ranges, so the log alone cannot rebuild the data that existed at its start ts %s, and it has no snapshot backup to start from: take one with `pitr backup full --storage URL --pd ADDRS`",
		task.GetName(), keyspace.Format(start))
	if skipped != nil {
		msg += fmt.Sprintf(" (%v)", skipped)
	}
	return nil, fmt.Errorf("%w: %s", ErrNoBase, msg)
}

// baseRoot names the plan's base for the log.
func baseRoot(p *Plan) string {
	if p.Base == nil {
		return "none"
	}
	return p.Base.URL + " " + p.Base.Root
}

// checkBaseSums reads every row of the base's files and checks that they
// add up, per checksummed range of its backupmeta, to the checksums there
// (what the backup compared with TiKV's at B): a snapshot whose files
// lost, gained or changed a row after the backup checksummed it is
// ErrCorrupt, naming the range.
func checkBaseSums(ctx context.Context, src Source, b *Base) error {
	cs := b.Meta.GetChecksums()
	parts := make([]keyspace.Range, len(cs))
	got := make([]checksum.Sum, len(cs))
	for i, c := range cs {
		parts[i] = keyspace.Range{Start: c.GetRange().GetStartKey(), End: c.GetRange().GetEndKey()}
	}
	for _, f := range b.fileRefs() {
		rd, err := openFile(ctx, src, f)
		if err != nil {
			return err
		}
		it := rd.Iter(nil, nil)
		for it.Next() {
			row := it.Row()
			i := sort.Search(len(parts), func(i int) bool { return keyspace.BeforeEnd(row.Key, parts[i].End) })
			if i < len(parts) && parts[i].Contains(row.Key) && row.Op == logfile.OpPut && checksum.InBounds(parts[i], row.Key) {
				got[i].Add(row.Key, row.Value)
			}
		}
		err = it.Err()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return dataError(f, err)
		}
	}
	for i, c := range cs {
		want := checksum.Sum{Crc64Xor: c.GetCrc64Xor(), TotalKvs: c.GetTotalKvs(), TotalBytes: c.GetTotalBytes()}
		if got[i] != want {
			return fmt.Errorf("%w: snapshot %s: the files' rows in range %s sum to %s, its %s says %s",
				ErrCorrupt, strings.TrimSuffix(b.URL, "/")+"/"+b.Root, parts[i], got[i], snapshot.MetaName, want)
		}
	}
	return nil
}
