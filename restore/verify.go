package restore

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// RestoreTS is the point to prove restorable; 0: the checkpoint.
	RestoreTS   uint64
	Concurrency int
	// Snapshot, when set, is the base snapshot's own storage (--snapshot);
	// nil: the snapshots under the task root.
	Snapshot Source
	// Volume, when set, is the volume backup a restore would start from
	// (the caller checked the backup itself: package volsnap); the log is
	// verified over (Volume.BackupTS, T].
	Volume *VolumeBase
	// Progress, when set, receives the progress bar while files are read.
	Progress io.Writer
}

// VerifyResult is what Verify checked.
type VerifyResult struct {
	Task     string
	Metas    int
	Files    int
	Bytes    int64
	From, To uint64
	Ranges   []keyspace.Range
	// Unchecksummed counts the objects (metas, task.pb, pitr.lock) of
	// format version 1, written before objects carried a checksum: their
	// content could not be verified byte for byte.
	Unchecksummed int
	// Base is the snapshot a restore to To starts from (nil: the log
	// alone); BaseFiles and BaseBytes count its files, which Files and
	// Bytes include.
	Base      *Base
	BaseFiles int
	BaseBytes int64
}

// Summary is the one line printed when verify succeeds.
func (r *VerifyResult) Summary() string {
	s := fmt.Sprintf("ok: task %q, %d metas, %d files (%s) intact; the log covers %d key ranges over (%s, %s]",
		r.Task, r.Metas, r.Files, storage.FormatBytes(r.Bytes), len(r.Ranges), keyspace.Format(r.From), keyspace.Format(r.To))
	if r.Base != nil && r.Base.Volume {
		s += fmt.Sprintf("; base: the volume backup %s at %s", strings.TrimSuffix(r.Base.URL, "/")+"/"+r.Base.Root, keyspace.Format(r.Base.BackupTS))
	} else if r.Base != nil {
		s += fmt.Sprintf("; base snapshot %s at %s: %d files (%s) intact, its checksums tile its ranges and match its rows, its ranges cover the task ranges",
			strings.TrimSuffix(r.Base.URL, "/")+"/"+r.Base.Root, keyspace.Format(r.Base.BackupTS), r.BaseFiles, storage.FormatBytes(r.BaseBytes))
	} else {
		s += "; no base snapshot: the task started on empty ranges"
	}
	if r.Unchecksummed > 0 {
		s += fmt.Sprintf("; %d objects predate checksums (format 1) and were only parsed", r.Unchecksummed)
	}
	return s
}

// Verify checks a backup offline, without any cluster, and returns the
// first problem it finds:
//   - the root is a pitr backup of one task (ErrNotBackup); every meta,
//     task.pb, pitr.lock and checkpoint/global passes its CRC-32C and
//     parses, and every meta matches its name (ErrCorrupt, ErrFormat);
//   - the restore point is in [start_ts, checkpoint] (ErrOutOfRange);
//   - the base snapshot a restore to T would use is found as restore
//     finds it (ErrNoBase, ErrOutOfRange before the first snapshot); its
//     backupmeta passes its checksum, its checksums tile its ranges
//     (snapshot.Load), and its ranges cover the task ranges;
//   - the metas' coverage leaves no hole in task ranges × (B, T], B the
//     base's backup ts or start_ts (ErrMissing, naming the key range and
//     ts interval);
//   - every file any meta references, and every file of the base, exists
//     (ErrMissing) with its recorded size and sha256 (ErrCorrupt), checked
//     in path order, the base's first;
//   - the base's rows add up to its backupmeta's checksums, range by
//     range (ErrCorrupt).
func Verify(ctx context.Context, src Source, o VerifyOptions) (*VerifyResult, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	b, err := Load(ctx, src)
	if err != nil {
		return nil, err
	}
	start, cp := max(b.Task.GetStartTs(), b.TruncatedTo), b.Checkpoint
	to := o.RestoreTS
	if to == 0 {
		to = cp
	}
	if to < start || to > cp {
		return nil, fmt.Errorf("%w: %s is outside the restorable range; restorable range is [%s, %s]",
			ErrOutOfRange, keyspace.Format(to), keyspace.Format(start), keyspace.Format(cp))
	}
	res := &VerifyResult{Task: b.Task.GetName(), Metas: len(b.Metas), From: start, To: to, Ranges: taskRanges(b.Task)}
	legacy := uint32(pitrpb.FormatVersion_FORMAT_VERSION_V1)
	for _, v := range []uint32{b.Lock.GetFormatVersion(), b.Task.GetFormatVersion()} {
		if v == legacy {
			res.Unchecksummed++
		}
	}
	for _, m := range b.Metas {
		if m.Meta.GetFormatVersion() == legacy {
			res.Unchecksummed++
		}
	}
	var snaps []snapshot.Info
	explicit := false
	if o.Volume == nil {
		if snaps, explicit, err = loadSnapshots(ctx, src, o.Snapshot); err != nil {
			return nil, err
		}
	}
	url := b.URL
	if o.Snapshot != nil {
		url = o.Snapshot.URL()
	}
	base, err := chooseBase(PlanInput{Task: b.Task, Checkpoint: cp, TruncatedTo: b.TruncatedTo, RestoreTS: to, Snapshots: snaps, Explicit: explicit, SnapshotURL: url, Volume: o.Volume}, res.Ranges)
	if err != nil {
		return nil, err
	}
	from := start
	var files []FileRef
	if base != nil {
		res.Base, from = base, base.BackupTS
		for _, f := range base.fileRefs() {
			files = append(files, f)
			res.BaseFiles++
			res.BaseBytes += f.File.GetSize()
			res.Bytes += f.File.GetSize()
		}
	}
	res.From = from
	if err := CheckCoverage(res.Ranges, b.Coverage, from, to); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, m := range b.Metas {
		for _, f := range m.Meta.GetFiles() {
			// pitr truncate deletes the files whose every change is at or
			// before its point first: no restore reads them.
			if b.TruncatedTo > 0 && f.GetMaxCommitTs() <= b.TruncatedTo {
				continue
			}
			if !seen[f.GetPath()] {
				seen[f.GetPath()] = true
				files = append(files, FileRef{Meta: m.Path, File: f})
				res.Bytes += f.GetSize()
			}
		}
	}
	res.Files = len(files)
	var onBytes func(int64)
	if o.Progress != nil {
		m := newMeter()
		m.setPhase("verify", res.Bytes)
		onBytes = func(n int64) { m.done.Add(n) }
		dctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); m.draw(dctx, o.Progress) }()
		defer func() { stop(); wg.Wait() }()
	}
	srcs := sources{log: src, base: o.Snapshot}
	if err := checkFiles(ctx, srcs, files, o.Concurrency, onBytes); err != nil {
		return nil, err
	}
	if base != nil && !base.Volume {
		if err := checkBaseSums(ctx, srcs.of(FileRef{Base: true}), base); err != nil {
			return nil, err
		}
	}
	return res, nil
}
