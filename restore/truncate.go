package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// Retention (DESIGN §10): `pitr truncate --until TS` removes what only
// restore points before TS need. It keeps the newest usable snapshot S at
// or before TS and everything a restore from S or later reads, so the
// restorable range becomes [S, checkpoint]:
//
//  1. the truncation record (truncated: until_ts = S) is written first, so
//     from then on a point before S is ErrOutOfRange naming the new range
//     and every restore needs a base at or after S (never a half restore
//     over a log that is being deleted);
//  2. the data files of the metas that only points before S need (below);
//  3. those metas, each chain from its last meta back to its keyframe, so a
//     chain is never left continuing a meta that is gone;
//  4. the snapshots finished before S: backupmeta first (the snapshot is
//     then unfinished and no restore uses it), then the rest of its root.
//
// A chain of metas (logfile.Chain) is removed whole or not at all: when
// every meta of it was flushed at or before S, every file it references
// holds only changes at or before S, and it is not its store's newest
// (which the store's agent may still continue). Its coverage then ends before S and a
// restore from S prunes its files anyway. Every step is idempotent: a
// truncate killed at any point is finished by running it again, and
// readers are correct at every point in between (verify skips the files
// at or before S, which step 2 may have removed already).

// TruncateOptions tune Truncate.
type TruncateOptions struct {
	// DryRun plans and reports, and deletes nothing.
	DryRun bool
	// CreatedBy is recorded in the truncation record (default host/pid).
	CreatedBy string
	// Progress, when set, gets one line per step.
	Progress io.Writer
	// afterStep, in tests, runs after each step (1-4) and may stop it;
	// afterMeta after each meta deleted.
	afterStep func(step int) error
	afterMeta func(path string) error
}

// TruncateResult says what Truncate removed (or would remove).
type TruncateResult struct {
	Task        string
	RequestedTS uint64
	// UntilTS is the new start of the restorable range: the kept
	// snapshot's backup ts.
	UntilTS    uint64
	Checkpoint uint64
	Snapshot   string // the kept snapshot's root
	Metas      int
	Files      int
	Bytes      int64
	Snapshots  []string // the snapshot roots removed
	DryRun     bool
}

// Summary is the one-paragraph report of r.
func (r *TruncateResult) Summary() string {
	verb := "removed"
	if r.DryRun {
		verb = "would remove"
	}
	return fmt.Sprintf("truncate task %q: restorable range [%s, %s] (kept snapshot %s); %s %d metas, %d files (%s), %d snapshots",
		r.Task, keyspace.Format(r.UntilTS), keyspace.Format(r.Checkpoint), r.Snapshot, verb, r.Metas, r.Files,
		storage.FormatBytes(r.Bytes), len(r.Snapshots))
}

// Truncate removes from the task root st what only restore points before
// until need (see above). until after the checkpoint is ErrOutOfRange; no
// usable snapshot at or before until is ErrNoBase (nothing could be
// removed without losing every restore point).
func Truncate(ctx context.Context, st storage.Storage, until uint64, o TruncateOptions) (*TruncateResult, error) {
	b, err := Load(ctx, st)
	if err != nil {
		return nil, err
	}
	res := &TruncateResult{Task: b.Task.GetName(), RequestedTS: until, Checkpoint: b.Checkpoint, DryRun: o.DryRun}
	if until > b.Checkpoint {
		return nil, fmt.Errorf("%w: cannot truncate to %s, past the global checkpoint %s: restorable range is [%s, %s]",
			ErrOutOfRange, keyspace.Format(until), keyspace.Format(b.Checkpoint),
			keyspace.Format(max(b.Task.GetStartTs(), b.TruncatedTo)), keyspace.Format(b.Checkpoint))
	}
	snaps, _, err := loadSnapshots(ctx, st, nil)
	if err != nil {
		return nil, err
	}
	// The kept snapshot: the one a restore to until would start from.
	in := PlanInput{Task: b.Task, Checkpoint: b.Checkpoint, TruncatedTo: b.TruncatedTo, RestoreTS: max(until, b.TruncatedTo),
		Snapshots: snaps, SnapshotURL: st.URL()}
	base, err := chooseBase(in, taskRanges(b.Task))
	if err != nil {
		return nil, err
	}
	if base == nil {
		return nil, fmt.Errorf("%w: task %q has no usable snapshot at or before %s, so nothing can be removed without losing every restore point before it: take one with `pitr backup full`",
			ErrNoBase, b.Task.GetName(), keyspace.Format(until))
	}
	s := base.BackupTS
	res.UntilTS, res.Snapshot = s, base.Root

	metas, files, heads := truncatable(b, s)
	res.Metas = len(metas)
	for _, f := range files {
		res.Files++
		res.Bytes += f.GetSize()
	}
	for _, sn := range snaps {
		if sn.Finished() && sn.BackupTS < s {
			res.Snapshots = append(res.Snapshots, sn.Root)
		}
	}
	if o.DryRun {
		return res, nil
	}
	say := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	step := func(n int) error {
		if o.afterStep != nil {
			return o.afterStep(n)
		}
		return nil
	}
	written := "nothing was deleted yet"
	fail := func(err error) error {
		return fmt.Errorf("%w (%s; run pitr truncate again to finish)", err, written)
	}

	if s > b.TruncatedTo {
		by := o.CreatedBy
		if by == "" {
			host, _ := os.Hostname()
			by = fmt.Sprintf("%s/%d", host, os.Getpid())
		}
		rec, err := logfile.EncodeTruncation(&pitrpb.Truncation{Task: b.Task.GetName(), UntilTs: s, RequestedTs: until,
			CreatedUnixMs: time.Now().UnixMilli(), CreatedBy: by})
		if err != nil {
			return nil, err
		}
		if err := st.Put(ctx, logfile.TruncationPath, rec); err != nil {
			return nil, fmt.Errorf("write %s: %w (nothing was deleted)", logfile.TruncationPath, err)
		}
	}
	say("truncate: restorable range is now [%s, %s]", keyspace.Format(s), keyspace.Format(b.Checkpoint))
	written = fmt.Sprintf("the restorable range already starts at %s", keyspace.Format(s))
	if err := step(1); err != nil {
		return nil, fail(err)
	}
	if len(heads) > 0 {
		// Chain heads a store's agent may still continue outlive the
		// compacted metas removed: a compacted meta of heads alone.
		p, err := writeHeads(ctx, st, b.Task.GetName(), heads)
		if err != nil {
			return nil, fail(err)
		}
		say("truncate: kept %d chain heads in %s", len(heads), p)
	}
	for _, f := range files {
		if err := deleteObject(ctx, st, f.GetPath()); err != nil {
			return nil, fail(err)
		}
	}
	say("truncate: removed %d files (%s)", res.Files, storage.FormatBytes(res.Bytes))
	if err := step(2); err != nil {
		return nil, fail(err)
	}
	for _, p := range metas {
		if err := deleteObject(ctx, st, p); err != nil {
			return nil, fail(err)
		}
		if o.afterMeta != nil {
			if err := o.afterMeta(p); err != nil {
				return nil, fail(err)
			}
		}
	}
	say("truncate: removed %d metas", res.Metas)
	if err := step(3); err != nil {
		return nil, fail(err)
	}
	for _, root := range res.Snapshots {
		if err := deleteObject(ctx, st, root+snapshot.MetaName); err != nil {
			return nil, fail(err)
		}
		var keys []string
		if err := st.List(ctx, root, func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
			return nil, fail(fmt.Errorf("list %s: %w", root, err))
		}
		for _, k := range keys {
			if err := deleteObject(ctx, st, k); err != nil {
				return nil, fail(err)
			}
		}
	}
	say("truncate: removed %d snapshots", len(res.Snapshots))
	if err := step(4); err != nil {
		return nil, fail(err)
	}
	return res, nil
}

func deleteObject(ctx context.Context, st storage.Storage, key string) error {
	if err := st.Delete(ctx, key); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// writeHeads stores heads as a compacted meta of their own.
func writeHeads(ctx context.Context, st storage.Storage, task string, heads []*pitrpb.ChainHead) (string, error) {
	var maxTS uint64
	for _, h := range heads {
		ts, _, _ := logfile.ParseMetaPath(h.GetMetaPath())
		maxTS = max(maxTS, ts)
	}
	id, err := randomID()
	if err != nil {
		return "", err
	}
	raw, err := logfile.EncodeCompactedMeta(&pitrpb.CompactedMeta{Task: task, Heads: heads, MinFlushTs: maxTS, MaxFlushTs: maxTS, CreatedUnixMs: time.Now().UnixMilli()})
	if err != nil {
		return "", err
	}
	p := logfile.CompactedMetaPath(maxTS, id)
	if err := st.Put(ctx, p, raw); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	return p, nil
}

// truncatable returns the metas of b that no restore from s or later needs,
// in the order to delete them (each chain last to first), their files, and
// the chain heads of the compacted metas among them that a meta may still
// continue (headNeeded) and no kept compacted meta holds.
func truncatable(b *Backup, s uint64) (metas []string, files []*pitrpb.DataFile, heads []*pitrpb.ChainHead) {
	chains := chainsOf(b)
	// A store's newest chain stays (its agent may continue it), and a
	// compacted meta while the metas it supersedes are still there (its
	// grace period).
	keep := func(c *metaChain) bool {
		return c.newest || c.metas[0].Pending || !c.flushedBy(s) || c.changesAfter(s)
	}
	kept := map[string]bool{}
	keptHeads := map[string]bool{}
	for _, c := range chains {
		if keep(c) {
			for _, m := range c.metas {
				for _, f := range m.Meta.GetFiles() {
					kept[f.GetPath()] = true
				}
				for _, h := range m.Heads {
					keptHeads[h.GetMetaPath()] = true
				}
			}
		}
	}
	seen := map[string]bool{}
	for _, c := range chains {
		if keep(c) {
			continue
		}
		for _, m := range slices.Backward(c.metas) {
			metas = append(metas, m.Path)
			for _, h := range m.Heads {
				if !keptHeads[h.GetMetaPath()] && headNeeded(b, h, nil) {
					keptHeads[h.GetMetaPath()] = true
					heads = append(heads, h)
				}
			}
		}
		for _, m := range c.metas {
			for _, f := range m.Meta.GetFiles() {
				if !kept[f.GetPath()] && !seen[f.GetPath()] {
					seen[f.GetPath()] = true
					files = append(files, f)
				}
			}
		}
	}
	return metas, files, heads
}
