package snapshot

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// Layout of one snapshot root (paths relative to it):
//
//	backup.lock                  SnapshotLock: owns the root for one backup ts and ranges
//	files/<id>.parquet           data files (the log's schema), immutable
//	progress/<start_key hex>.range   SnapshotRange: one finished range
//	backupmeta                   BackupMeta: the commit point, written last
//
// Under a task root a snapshot lives at snapshot/<backup_ts:016x>/; a root
// of its own holds one snapshot at its top.
const (
	LockName    = "backup.lock"
	MetaName    = "backupmeta"
	RangePrefix = "progress/"
	FilePrefix  = "files/"
)

// TaskRoot is where the snapshot at ts lives under a task root.
func TaskRoot(ts uint64) string {
	return fmt.Sprintf("%s%016x/", logfile.SnapshotPrefix, ts)
}

// FilePath is a data file's path relative to the snapshot root.
func FilePath(id string) string { return FilePrefix + id + ".parquet" }

// RangePath is where the finished range starting at start is recorded
// ("_" stands for the empty start key).
func RangePath(start []byte) string {
	if len(start) == 0 {
		return RangePrefix + "_.range"
	}
	return RangePrefix + hex.EncodeToString(start) + ".range"
}

// Reader is what reading snapshots needs from storage (storage.Storage has
// it).
type Reader interface {
	Get(ctx context.Context, key string) ([]byte, error)
	List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error
}

// Errors of reading snapshots.
var (
	// ErrNoSnapshot: the root holds no finished snapshot.
	ErrNoSnapshot = errors.New("no snapshot")
)

// Info is one snapshot found in storage.
type Info struct {
	// Root is the snapshot root's path ("" or "snapshot/<ts>/").
	Root     string
	BackupTS uint64
	// Meta is the backupmeta; nil while the backup is unfinished.
	Meta *pitrpb.BackupMeta
	// Lock is the backup.lock (nil if the root has none).
	Lock *pitrpb.SnapshotLock
}

// Finished reports whether the snapshot's backupmeta is written.
func (i Info) Finished() bool { return i.Meta != nil }

// Load reads the snapshot at root: its backupmeta when finished, else its
// lock. A root with neither is ErrNoSnapshot; a damaged object is
// logfile.ErrCorrupt, one from a newer pitr logfile.ErrFormat.
func Load(ctx context.Context, src Reader, root string) (Info, error) {
	info := Info{Root: root}
	b, err := src.Get(ctx, root+MetaName)
	switch {
	case err == nil:
		if info.Meta, err = logfile.DecodeBackupMeta(b); err != nil {
			return info, fmt.Errorf("%s%s: %w", root, MetaName, err)
		}
		info.BackupTS = info.Meta.GetBackupTs()
		if err := checkTiling(info.Meta); err != nil {
			return info, fmt.Errorf("%w: %s%s: %v", logfile.ErrCorrupt, root, MetaName, err)
		}
	case !errors.Is(err, storage.ErrNotFound):
		return info, fmt.Errorf("read %s%s: %w", root, MetaName, err)
	}
	b, err = src.Get(ctx, root+LockName)
	switch {
	case err == nil:
		if info.Lock, err = logfile.DecodeSnapshotLock(b); err != nil {
			return info, fmt.Errorf("%s%s: %w", root, LockName, err)
		}
		if info.Meta == nil {
			info.BackupTS = info.Lock.GetBackupTs()
		} else if info.Lock.GetBackupTs() != info.BackupTS {
			return info, fmt.Errorf("%w: %s%s says backup ts %d, its backupmeta %d", logfile.ErrCorrupt, root, LockName, info.Lock.GetBackupTs(), info.BackupTS)
		}
	case errors.Is(err, storage.ErrNotFound):
		if info.Meta == nil {
			return info, fmt.Errorf("%w at %q", ErrNoSnapshot, root)
		}
	default:
		return info, fmt.Errorf("read %s%s: %w", root, LockName, err)
	}
	return info, nil
}

// List finds the snapshots under a task root (snapshot/<ts>/), oldest
// first, finished or not.
func List(ctx context.Context, src Reader) ([]Info, error) {
	var roots []string
	err := src.List(ctx, logfile.SnapshotPrefix, func(o storage.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Key, logfile.SnapshotPrefix)
		dir, name, ok := strings.Cut(rest, "/")
		if !ok || (name != LockName && name != MetaName) {
			return nil
		}
		if _, err := strconv.ParseUint(dir, 16, 64); err != nil || len(dir) != 16 {
			return nil
		}
		root := logfile.SnapshotPrefix + dir + "/"
		if len(roots) == 0 || roots[len(roots)-1] != root {
			roots = append(roots, root)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(roots)
	roots = slices.Compact(roots)
	out := make([]Info, 0, len(roots))
	for _, r := range roots {
		info, err := Load(ctx, src, r)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Ranges returns the backupmeta's ranges as keyspace ranges.
func Ranges(m *pitrpb.BackupMeta) []keyspace.Range {
	return fromPB(m.GetRanges())
}

func fromPB(rs []*pitrpb.KeyRange) []keyspace.Range {
	out := make([]keyspace.Range, 0, len(rs))
	for _, r := range rs {
		out = append(out, keyspace.Range{Start: r.GetStartKey(), End: r.GetEndKey()})
	}
	return out
}

func toPB(rs []keyspace.Range) []*pitrpb.KeyRange {
	out := make([]*pitrpb.KeyRange, 0, len(rs))
	for _, r := range rs {
		out = append(out, &pitrpb.KeyRange{StartKey: r.Start, EndKey: r.End})
	}
	return out
}

// checkTiling checks that the checksummed ranges tile the backed-up
// ranges exactly: sorted, adjacent, no gap, no overlap.
func checkTiling(m *pitrpb.BackupMeta) error {
	var got []keyspace.Range
	for _, c := range m.GetChecksums() {
		got = append(got, keyspace.Range{Start: c.GetRange().GetStartKey(), End: c.GetRange().GetEndKey()})
	}
	return tiles(got, Ranges(m))
}

// tiles reports whether parts, in order, cover exactly want (sorted,
// merged ranges).
func tiles(parts, want []keyspace.Range) error {
	i := 0
	for _, w := range want {
		at := w.Start
		for {
			if i >= len(parts) {
				return fmt.Errorf("range %s is not covered from %q", w, at)
			}
			p := parts[i]
			if string(p.Start) != string(at) {
				return fmt.Errorf("range %s: expected a part starting at %q, found %s", w, at, p)
			}
			i++
			if string(p.End) == string(w.End) {
				break
			}
			if len(p.End) == 0 || (len(w.End) > 0 && string(p.End) > string(w.End)) {
				return fmt.Errorf("part %s runs past range %s", p, w)
			}
			at = p.End
		}
	}
	if i != len(parts) {
		return fmt.Errorf("%d parts outside the ranges", len(parts)-i)
	}
	return nil
}
