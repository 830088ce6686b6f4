package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// Compaction (DESIGN §10): `pitr compact` merges the small files of sealed
// chains of metas into sorted, de-duplicated files of about FileTarget
// bytes, and writes one compacted meta (compacted/…meta) that supersedes
// those metas. Readers (Load) take a compacted meta instead of the metas it
// names, so a restore reads a few large files instead of many small ones.
// The rows are the same (only exact duplicates, equal key and commit_ts,
// go), and so is the coverage: what a restore to any T returns does not
// change (I4).
//
// A chain (logfile.Chain) is sealed when every meta of it was flushed at
// or before --until and it is not its store's newest (its agent has moved
// on to a keyframe), or it is but has been idle for SealIdle (a store that
// leads no region writes no meta, and its last chain would never seal).
// Its agent may still continue such a chain: the compacted meta keeps the
// chain's head (pitrpb.ChainHead), from which readers follow a meta that
// continues a superseded one.
//
// Compacted metas stay small when their passes had little data (a
// low-traffic cluster, short passes): a compacted meta of under half the
// target, none of whose inputs is left, is merged again with the next
// sealed chains or other such metas, and superseded like a meta.
//
// Steps, each safe to be killed after:
//
//  1. the lease compacted/lease (renewed; a live holder is ErrConflict);
//  2. the inputs' sha256 is checked, and the output files written
//     (unreferenced until step 3: orphans if killed, removed by a later
//     run once older than the grace period);
//  3. the compacted meta: the commit point;
//  4. later, once a compacted meta is older than the grace period (longer
//     than any restore's planning and reading), the files of the metas it
//     supersedes and then those metas are deleted. While it exists, Load
//     skips them, so a half-deleted set is never read.

// CompactOptions tune Compact.
type CompactOptions struct {
	// Until: only chains flushed at or before it (0: the checkpoint).
	Until uint64
	// FileTarget is the size of the output files (default 128 MiB).
	FileTarget int64
	// MaxInputs bounds the input files of one run (default 512): a larger
	// backlog is compacted by later runs.
	MaxInputs int
	// Grace: superseded metas and their files, and orphaned outputs, are
	// deleted once this old (default DefaultCompactGrace).
	Grace time.Duration
	// SealIdle: a store's newest chain is compacted too once its last
	// meta was flushed this long before Until (0: DefaultSealIdle;
	// negative: whatever its age).
	SealIdle time.Duration
	// Concurrency bounds the input files read at once and the key-range
	// parts merged at once (those also by the CPUs; default
	// DefaultConcurrency).
	Concurrency int
	LeaseTTL    time.Duration
	Progress    io.Writer
	Logger      hclog.Logger
	// afterStep, in tests, runs after "outputs", "meta" and each deletion
	// ("gc-files", "gc-metas") and may stop the run.
	afterStep func(step string) error
	now       func() time.Time
}

// DefaultCompactGrace is how long superseded inputs stay after their
// compacted meta is written.
const DefaultCompactGrace = time.Hour

// DefaultSealIdle is how long a store's newest chain is idle before it is
// compacted: long enough that an active chain, which its agent continues
// at every flush, is not compacted pass after pass.
const DefaultSealIdle = 10 * time.Minute

// CompactResult says what a Compact run did.
type CompactResult struct {
	Chains, Metas int
	// Recompacted counts the small compacted metas merged again.
	Recompacted    int
	InputFiles     int
	InputBytes     int64
	OutputFiles    int
	OutputBytes    int64
	Rows           int64
	Compacted      string // the compacted meta written ("" if none)
	RemovedMetas   int    // superseded metas deleted after their grace
	RemovedFiles   int
	RemovedOrphans int
}

// Summary is the one-line report of r.
func (r *CompactResult) Summary() string {
	s := fmt.Sprintf("compact: %d chains (%d metas", r.Chains, r.Metas)
	if r.Recompacted > 0 {
		s += fmt.Sprintf(") and %d small compacted metas (", r.Recompacted)
	} else {
		s += ", "
	}
	s += fmt.Sprintf("%d files, %s) into %d files (%s, %d rows)",
		r.InputFiles, storage.FormatBytes(r.InputBytes), r.OutputFiles, storage.FormatBytes(r.OutputBytes), r.Rows)
	if r.Compacted != "" {
		s += "; wrote " + r.Compacted
	}
	if r.RemovedMetas+r.RemovedFiles+r.RemovedOrphans > 0 {
		s += fmt.Sprintf("; removed %d superseded metas, %d files and %d orphaned outputs past the grace period", r.RemovedMetas, r.RemovedFiles, r.RemovedOrphans)
	}
	return s
}

// Compact runs one compaction of the task root st (see above).
func Compact(ctx context.Context, st storage.Storage, o CompactOptions) (*CompactResult, error) {
	if o.FileTarget <= 0 {
		o.FileTarget = flush.DefaultFileTarget
	}
	if o.MaxInputs <= 0 {
		o.MaxInputs = 512
	}
	if o.Grace <= 0 {
		o.Grace = DefaultCompactGrace
	}
	if o.SealIdle == 0 {
		o.SealIdle = DefaultSealIdle
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = snapshot.DefaultLeaseTTL
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.now == nil {
		o.now = time.Now
	}
	step := func(name string) error {
		if o.afterStep != nil {
			return o.afterStep(name)
		}
		return nil
	}
	ls, err := snapshot.TakeLease(ctx, st, logfile.CompactionLeasePath, "the compaction of "+st.URL(), o.LeaseTTL, o.Logger)
	if err != nil {
		return nil, err
	}
	defer ls.Release()

	b, err := Load(ctx, st)
	if err != nil {
		return nil, err
	}
	until := o.Until
	if until == 0 {
		until = b.Checkpoint
	}
	if until > b.Checkpoint {
		return nil, fmt.Errorf("%w: cannot compact up to %s, past the global checkpoint %s", ErrOutOfRange, keyspace.Format(until), keyspace.Format(b.Checkpoint))
	}
	res := &CompactResult{}
	if err := collectGarbage(ctx, st, b, o, res, step); err != nil {
		return res, err
	}

	chains, small := compactInputs(b, until, o)
	if len(chains) == 0 && len(small) < 2 {
		return res, ls.Err()
	}
	var metas, supersedes []string
	var inputs []FileRef
	var maxTS, minTS uint64
	minTS = ^uint64(0)
	add := func(m MetaFile) {
		supersedes = append(supersedes, m.Path)
		maxTS, minTS = max(maxTS, m.Meta.GetFlushTs()), min(minTS, m.Meta.GetFlushTs())
		for _, f := range m.Meta.GetFiles() {
			if f.GetRows() > 0 {
				inputs = append(inputs, FileRef{Meta: m.Path, File: f})
				res.InputBytes += f.GetSize()
			}
		}
	}
	for _, c := range chains {
		res.Chains++
		for _, m := range c.metas {
			metas = append(metas, m.Path)
			add(m)
		}
	}
	for _, m := range small {
		res.Recompacted++
		add(m)
	}
	slices.Sort(metas)
	slices.Sort(supersedes)
	res.Metas, res.InputFiles = len(metas), len(inputs)
	say := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	say("compact: %d chains, %d metas, %d small compacted metas, %d files (%s)", res.Chains, res.Metas, res.Recompacted, res.InputFiles, storage.FormatBytes(res.InputBytes))

	// Their coverage, from the metas themselves (Load keeps none per meta);
	// a chain continuing a superseded meta starts from its head.
	cov := logfile.NewCoverageReader()
	for _, m := range b.Metas {
		for _, h := range m.Heads {
			cov.Seed(h)
		}
	}
	for _, p := range metas {
		raw, err := st.Get(ctx, p)
		if err != nil {
			return res, fmt.Errorf("read %s: %w", p, err)
		}
		m, err := logfile.DecodeMeta(raw)
		if err != nil {
			return res, objectError(p, err)
		}
		if err := cov.Add(p, m); err != nil {
			return res, coverageError(err)
		}
	}
	var heads []*pitrpb.ChainHead
	for _, m := range small {
		raw, err := st.Get(ctx, m.Path)
		if err != nil {
			return res, fmt.Errorf("read %s: %w", m.Path, err)
		}
		cm, err := logfile.DecodeCompactedMeta(raw)
		if err != nil {
			return res, objectError(m.Path, err)
		}
		cov.AddCovers(cm.GetCoverage())
		minTS = min(minTS, cm.GetMinFlushTs())
		heads = append(heads, cm.GetHeads()...)
	}
	// The heads a meta may still continue: of the chains sealed while
	// their store's newest, and those the merged compacted metas kept.
	for _, c := range chains {
		if c.newest {
			if h := cov.Head(c.metas[len(c.metas)-1].Path); h != nil {
				heads = append(heads, h)
			}
		}
	}
	gone := map[string]bool{}
	for _, p := range metas {
		gone[p] = true
	}
	heads = slices.DeleteFunc(heads, func(h *pitrpb.ChainHead) bool { return !headNeeded(b, h, gone) })
	var coverage []*pitrpb.RegionCoverage
	for _, c := range cov.Covers() {
		coverage = append(coverage, &pitrpb.RegionCoverage{RegionId: c.RegionID, EpochVersion: c.Version, EpochConfVer: c.ConfVer,
			StartKey: c.Start, EndKey: c.End, FromTs: c.From, ToTs: c.To})
	}

	files, err := mergeInto(ctx, st, inputs, maxTS, o)
	if err != nil {
		return res, err
	}
	for _, f := range files {
		res.OutputFiles++
		res.OutputBytes += f.GetSize()
		res.Rows += f.GetRows()
	}
	say("compact: wrote %d files (%s, %d rows)", res.OutputFiles, storage.FormatBytes(res.OutputBytes), res.Rows)
	if err := step("outputs"); err != nil {
		return res, err
	}
	if err := ls.Err(); err != nil {
		return res, err
	}
	id, err := randomID()
	if err != nil {
		return res, err
	}
	cm := &pitrpb.CompactedMeta{Task: b.Task.GetName(), Files: files, Coverage: coverage, Supersedes: supersedes, Heads: heads,
		MinFlushTs: minTS, MaxFlushTs: maxTS, CreatedUnixMs: o.now().UnixMilli()}
	raw, err := logfile.EncodeCompactedMeta(cm)
	if err != nil {
		return res, err
	}
	path := logfile.CompactedMetaPath(maxTS, id)
	if err := st.Put(ctx, path, raw); err != nil {
		return res, fmt.Errorf("write %s: %w", path, err)
	}
	res.Compacted = path
	say("compact: %s supersedes %d metas", path, len(supersedes))
	if err := step("meta"); err != nil {
		return res, err
	}
	return res, nil
}

// compactInputs returns what a run merges: the chains of b (each in path
// order) that are sealed by until (see above), none of their metas
// superseded, and the small compacted metas, oldest first, with at most
// o.MaxInputs data files in all (at least one chain).
func compactInputs(b *Backup, until uint64, o CompactOptions) (chains []*metaChain, small []MetaFile) {
	files := 0
	fits := func(n int) bool {
		if files > 0 && files+n > o.MaxInputs {
			return false
		}
		files += n
		return true
	}
	for _, c := range chainsOf(b) {
		if c.compacted() || !c.flushedBy(until) {
			continue
		}
		if c.newest && (o.SealIdle > 0 && keyspace.Time(until).Sub(keyspace.Time(c.lastFlush())) < o.SealIdle) {
			continue
		}
		n := 0
		for _, m := range c.metas {
			n += len(m.Meta.GetFiles())
		}
		if !fits(n) {
			break
		}
		chains = append(chains, c)
	}
	for _, m := range b.Metas {
		if !m.IsCompacted() || m.Pending || m.Meta.GetFlushTs() > until {
			continue
		}
		var size int64
		for _, f := range m.Meta.GetFiles() {
			size += f.GetSize()
		}
		if size >= o.FileTarget/2 {
			continue
		}
		if !fits(len(m.Meta.GetFiles())) {
			break
		}
		small = append(small, m)
	}
	return chains, small
}

// headNeeded reports whether a meta may continue the chain head h: one in
// b does (and is not among gone, the metas about to be superseded with
// h's), or its store has flushed no meta after h's (its agent may still
// continue it; once it continued it, or wrote a keyframe, it never will).
func headNeeded(b *Backup, h *pitrpb.ChainHead, gone map[string]bool) bool {
	headTS, _, err := logfile.ParseMetaPath(h.GetMetaPath())
	if err != nil {
		return true
	}
	later := func(p string) bool {
		ts, store, err := logfile.ParseMetaPath(p)
		return err == nil && store == h.GetStoreId() && ts > headTS
	}
	for _, m := range append(b.Metas[:len(b.Metas):len(b.Metas)], b.Superseded...) {
		if !m.IsCompacted() {
			if m.Meta.GetPrevMeta() == h.GetMetaPath() {
				return !gone[m.Path]
			}
			if later(m.Path) {
				return false
			}
			continue
		}
		if slices.ContainsFunc(m.Supersedes, later) {
			return false
		}
	}
	return true
}

// collectGarbage deletes, for every compacted meta older than the grace
// period, the metas and compacted metas it supersedes that are still there
// (their files first: Load skips those while the compacted meta exists;
// a file the live compacted metas reference stays), and the outputs under
// compacted/data/ that no compacted meta references and are older than
// the grace period (a run killed before its meta).
func collectGarbage(ctx context.Context, st storage.Storage, b *Backup, o CompactOptions, res *CompactResult, step func(string) error) error {
	live := map[string]bool{} // the files of the compacted metas Load reads
	for _, m := range b.Metas {
		if m.IsCompacted() {
			for _, f := range m.Meta.GetFiles() {
				live[f.GetPath()] = true
			}
		}
	}
	referenced := maps.Clone(live) // and of those superseded, until deleted
	for _, m := range b.Superseded {
		for _, f := range m.Meta.GetFiles() {
			referenced[f.GetPath()] = true
		}
	}
	for _, m := range b.Metas {
		if !m.IsCompacted() || !m.Pending || o.now().Sub(m.Created) < o.Grace {
			continue
		}
		var left []string
		for _, p := range m.Supersedes {
			raw, err := st.Get(ctx, p)
			if errors.Is(err, storage.ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
			var files []*pitrpb.DataFile
			if logfile.IsCompactedMetaPath(p) {
				cm, err := logfile.DecodeCompactedMeta(raw)
				if err != nil {
					return objectError(p, err)
				}
				files = cm.GetFiles()
			} else {
				sm, err := logfile.DecodeMeta(raw)
				if err != nil {
					return objectError(p, err)
				}
				files = sm.GetFiles()
			}
			for _, f := range files {
				if live[f.GetPath()] {
					continue
				}
				if err := deleteObject(ctx, st, f.GetPath()); err != nil {
					return err
				}
				res.RemovedFiles++
			}
			left = append(left, p)
		}
		if err := step("gc-files"); err != nil {
			return err
		}
		for _, p := range slices.Backward(left) { // a chain's last meta first
			if err := deleteObject(ctx, st, p); err != nil {
				return err
			}
			res.RemovedMetas++
		}
		if err := step("gc-metas"); err != nil {
			return err
		}
	}
	var orphans []string
	err := st.List(ctx, logfile.CompactedPrefix+"data/", func(oi storage.ObjectInfo) error {
		if !referenced[oi.Key] && strings.HasSuffix(oi.Key, ".parquet") && !oi.ModTime.IsZero() && o.now().Sub(oi.ModTime) >= o.Grace {
			orphans = append(orphans, oi.Key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %sdata/: %w", logfile.CompactedPrefix, err)
	}
	for _, k := range orphans {
		if err := deleteObject(ctx, st, k); err != nil {
			return err
		}
		res.RemovedOrphans++
	}
	return nil
}

func randomID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
