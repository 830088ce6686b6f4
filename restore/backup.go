package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// Source is what restore and verify read from a backup's storage root;
// storage.Storage has it. Restore never writes to it.
type Source interface {
	Get(ctx context.Context, key string) ([]byte, error)
	GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)
	NewReader(ctx context.Context, key string) (io.ReadCloser, error)
	List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error
	URL() string
}

var _ Source = storage.Storage(nil)

// Backup is the metadata of one task's storage root: everything a plan
// needs, read without touching any data file.
type Backup struct {
	URL  string
	Lock *pitrpb.Lock
	Task *pitrpb.TaskInfo
	// Checkpoint is the global checkpoint in checkpoint/global; the task's
	// start_ts when none was written yet.
	Checkpoint uint64
	// Metas in path order (flush ts order), with their files; their
	// coverage is in Coverage (Regions and the chain fields are cleared).
	Metas []MetaFile
	// Coverage is the metas' coverage, merged (logfile.CoverageReader).
	Coverage []logfile.Cover
	// Superseded are the compacted metas another compacted meta
	// supersedes, still in storage until its grace period ends: not in
	// Metas or Coverage, kept for the clean-up (their files are still
	// referenced).
	Superseded []MetaFile
	// Truncation is the truncation record (pitr truncate), nil when the
	// log was never truncated; TruncatedTo its until_ts.
	Truncation  *pitrpb.Truncation
	TruncatedTo uint64
}

// MetaFile is one meta and where it was read from. A compacted meta
// (compacted/…) is one too, with its files, FlushTs its newest input's,
// Supersedes the metas (and compacted metas) it replaces and Heads the
// chains of those its agent may continue; Pending says some of those are
// still in storage (pitr compact deletes them after a grace period).
type MetaFile struct {
	Path       string
	Meta       *pitrpb.Meta
	Supersedes []string
	Heads      []*pitrpb.ChainHead
	Pending    bool
	Created    time.Time // a compacted meta's
}

// IsCompacted reports whether m is a compacted meta.
func (m MetaFile) IsCompacted() bool { return logfile.IsCompactedMetaPath(m.Path) }

// metaConcurrency bounds the metas read at once, metaBatch the metas
// whose coverage is held before it is applied.
const (
	metaConcurrency = 16
	metaBatch       = 256
)

// Load reads pitr.lock, task.pb, checkpoint/global and every meta under
// meta/. A root without pitr.lock or task.pb, or owned by another task, is
// ErrNotBackup; an object whose checksum fails or that does not decode, or
// a meta whose content does not match its name, is ErrCorrupt; one written
// by a newer pitr is ErrFormat. Objects of format version 1 (before
// checksums) are still read.
func Load(ctx context.Context, src Source) (*Backup, error) {
	b := &Backup{URL: src.URL()}
	lockBytes, err := src.Get(ctx, logfile.LockPath)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNotBackup, b.URL, logfile.LockPath)
	} else if err != nil {
		return nil, fmt.Errorf("read %s: %w", logfile.LockPath, err)
	}
	if b.Lock, err = logfile.DecodeLock(lockBytes); err != nil {
		return nil, objectError(logfile.LockPath, err)
	}
	taskBytes, err := src.Get(ctx, logfile.TaskPath)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNotBackup, b.URL, logfile.TaskPath)
	} else if err != nil {
		return nil, fmt.Errorf("read %s: %w", logfile.TaskPath, err)
	}
	if b.Task, err = logfile.DecodeTaskInfo(taskBytes); err != nil {
		return nil, objectError(logfile.TaskPath, err)
	}
	name := b.Task.GetName()
	if b.Lock.GetTask() != name {
		return nil, fmt.Errorf("%w: %s is owned by task %q but %s is task %q", ErrNotBackup, b.URL, b.Lock.GetTask(), logfile.TaskPath, name)
	}
	if l, t := b.Lock.GetClusterId(), b.Task.GetClusterId(); l != 0 && t != 0 && l != t {
		return nil, fmt.Errorf("%w: %s is owned by cluster %d but %s is from cluster %d", ErrNotBackup, b.URL, l, logfile.TaskPath, t)
	}

	b.Checkpoint = b.Task.GetStartTs()
	cp, err := loadOptional(ctx, src, logfile.CheckpointPath, name, logfile.DecodeCheckpoint)
	if err != nil {
		return nil, err
	}
	b.Checkpoint = max(cp.GetTs(), b.Checkpoint)
	if b.Truncation, err = loadOptional(ctx, src, logfile.TruncationPath, name, logfile.DecodeTruncation); err != nil {
		return nil, err
	}
	b.TruncatedTo = b.Truncation.GetUntilTs()

	compacted, err := loadCompacted(ctx, src, name)
	if err != nil {
		return nil, err
	}
	// A compacted meta another one supersedes is read no more (pitr
	// compact merges only compacted metas none of whose own inputs are
	// left, so nothing it supersedes is there to be hidden too).
	hidden := map[string]bool{}
	for _, c := range compacted {
		for _, p := range c.Supersedes {
			if logfile.IsCompactedMetaPath(p) {
				hidden[p] = true
			}
		}
	}
	live := compacted[:0:0]
	for _, c := range compacted {
		if hidden[c.Path] {
			b.Superseded = append(b.Superseded, c.MetaFile)
		} else {
			live = append(live, c)
		}
	}
	compacted = live
	superseded := map[string]int{} // meta path → the compacted meta replacing it
	for i, c := range compacted {
		for _, p := range c.Supersedes {
			superseded[p] = i
			if hidden[p] {
				compacted[i].Pending = true
			}
		}
	}
	var paths []string
	err = src.List(ctx, logfile.MetaPrefix, func(oi storage.ObjectInfo) error {
		if !strings.HasSuffix(oi.Key, ".meta") {
			return nil
		}
		if i, ok := superseded[oi.Key]; ok {
			compacted[i].Pending = true
			return nil
		}
		paths = append(paths, oi.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", logfile.MetaPrefix, err)
	}
	sort.Strings(paths)
	b.Metas = make([]MetaFile, len(paths), len(paths)+len(compacted))
	// Metas are read metaBatch at a time, metaConcurrency at once, and
	// their coverage applied in path order; only their files stay, so
	// memory grows with files and regions, not with metas × regions.
	// Of several problems the first in path order is reported, so the
	// answer does not depend on timing.
	cov := logfile.NewCoverageReader()
	seedHeads(cov, compacted)
	for lo := 0; lo < len(paths); lo += metaBatch {
		batch := paths[lo:min(lo+metaBatch, len(paths))]
		errs := make([]error, len(batch))
		var g errgroup.Group
		g.SetLimit(metaConcurrency)
		for i, p := range batch {
			g.Go(func() error {
				b.Metas[lo+i], errs[i] = loadMeta(ctx, src, p, name)
				return nil
			})
		}
		_ = g.Wait()
		if err := firstErr(errs); err != nil {
			return nil, err
		}
		for i := range batch {
			m := b.Metas[lo+i]
			if err := cov.Add(m.Path, m.Meta); err != nil {
				return nil, coverageError(err)
			}
			m.Meta.Regions, m.Meta.Extends, m.Meta.Dropped = nil, nil, nil
		}
	}
	for _, c := range compacted {
		cov.AddCovers(c.cov)
		b.Metas = append(b.Metas, c.MetaFile)
	}
	b.Coverage = cov.Covers()
	return b, nil
}

// seedHeads gives cov the chain heads of compacted metas, so that a meta
// continuing a superseded meta reads as the chain it continues.
func seedHeads(cov *logfile.CoverageReader, compacted []compactedFile) {
	for _, c := range compacted {
		for _, h := range c.Heads {
			cov.Seed(h)
		}
	}
}

// compactedFile is a compacted meta as Load reads it.
type compactedFile struct {
	MetaFile
	cov []*pitrpb.RegionCoverage
}

// loadCompacted reads every compacted meta of the root, in path order.
func loadCompacted(ctx context.Context, src Source, task string) ([]compactedFile, error) {
	var paths []string
	err := src.List(ctx, logfile.CompactedPrefix, func(oi storage.ObjectInfo) error {
		if rest := strings.TrimPrefix(oi.Key, logfile.CompactedPrefix); strings.HasSuffix(rest, ".meta") && !strings.Contains(rest, "/") {
			paths = append(paths, oi.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", logfile.CompactedPrefix, err)
	}
	sort.Strings(paths)
	out := make([]compactedFile, 0, len(paths))
	for _, p := range paths {
		m, err := loadOptional(ctx, src, p, task, logfile.DecodeCompactedMeta)
		if err != nil {
			return nil, err
		}
		if m == nil {
			continue // deleted meanwhile (pitr truncate)
		}
		out = append(out, compactedFile{
			MetaFile: MetaFile{Path: p, Meta: &pitrpb.Meta{FormatVersion: m.GetFormatVersion(), FlushTs: m.GetMaxFlushTs(), Task: m.GetTask(), Files: m.GetFiles()},
				Supersedes: m.GetSupersedes(), Heads: m.GetHeads(), Created: time.UnixMilli(m.GetCreatedUnixMs())},
			cov: m.GetCoverage(),
		})
	}
	return out, nil
}

// CoverageOf returns the coverage of metas in path order (which Load keeps
// in Backup.Coverage).
func CoverageOf(metas []MetaFile) ([]logfile.Cover, error) {
	cov := logfile.NewCoverageReader()
	for _, m := range metas {
		if err := cov.Add(m.Path, m.Meta); err != nil {
			return nil, coverageError(err)
		}
	}
	return cov.Covers(), nil
}

// coverageError maps a CoverageReader error: a chain inconsistent in
// itself is corrupt, one whose earlier meta is not there is missing.
func coverageError(err error) error {
	if errors.Is(err, logfile.ErrCorrupt) {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return fmt.Errorf("%w: %v", ErrMissing, err)
}

func loadMeta(ctx context.Context, src Source, p, task string) (MetaFile, error) {
	flushTS, store, err := logfile.ParseMetaPath(p)
	if err != nil {
		return MetaFile{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	raw, err := src.Get(ctx, p)
	if errors.Is(err, storage.ErrNotFound) {
		return MetaFile{}, fmt.Errorf("%w: meta %s vanished while reading", ErrMissing, p)
	} else if err != nil {
		return MetaFile{}, fmt.Errorf("read %s: %w", p, err)
	}
	m, err := logfile.DecodeMeta(raw)
	if err != nil {
		return MetaFile{}, objectError(p, err)
	}
	if t := m.GetTask(); t != "" && t != task {
		return MetaFile{}, fmt.Errorf("%w: %s belongs to task %q, not %q", ErrNotBackup, p, t, task)
	}
	// The name is part of what the meta claims (restore orders by it): a
	// meta under another flush's or store's name, or a version 1 meta
	// (no checksum) with a flipped flush_ts or store_id, is refused.
	if m.GetFlushTs() != flushTS || m.GetStoreId() != store {
		return MetaFile{}, fmt.Errorf("%w: %s holds the meta of store %d at flush ts %d", ErrCorrupt, p, m.GetStoreId(), m.GetFlushTs())
	}
	return MetaFile{Path: p, Meta: m}, nil
}

// taskObject is a task root object that names its task.
type taskObject interface{ GetTask() string }

// loadOptional reads and decodes the object at path of task's root: nil
// (a typed nil, whose getters give zero values) when there is none, an
// error when it is damaged or another task's.
func loadOptional[M taskObject](ctx context.Context, src Source, path, task string, decode func([]byte) (M, error)) (M, error) {
	var none M
	raw, err := src.Get(ctx, path)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return none, nil
	case err != nil:
		return none, fmt.Errorf("read %s: %w", path, err)
	}
	m, err := decode(raw)
	if err != nil {
		return none, objectError(path, err)
	}
	if t := m.GetTask(); t != "" && t != task {
		return none, fmt.Errorf("%w: %s belongs to task %q, not %q", ErrNotBackup, path, t, task)
	}
	return m, nil
}

// firstErr returns the first non-nil error.
func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// objectError maps a logfile decode error of a durable object to the
// restore sentinels.
func objectError(path string, err error) error {
	switch {
	case errors.Is(err, logfile.ErrFormat):
		return fmt.Errorf("%w: %s: %v (upgrade pitr to read it)", ErrFormat, path, err)
	case errors.Is(err, logfile.ErrCorrupt):
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return fmt.Errorf("%s: %w", path, err)
}
