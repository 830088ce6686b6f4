package logfile

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/pitr-io/pitr/keyspace"
)

// Storage layout of one task (DESIGN §4). Paths are relative to the task's
// storage root and use "/" separators. Names sort by time; readers rely on
// content, not names, for everything but ordering.
const (
	LockPath        = "pitr.lock"         // owner of the root (Lock)
	TaskPath        = "task.pb"           // the task as started (TaskInfo)
	CheckpointPath  = "checkpoint/global" // latest global checkpoint (GlobalCheckpoint)
	TruncationPath  = "truncated"         // start of the restorable range after pitr truncate (Truncation)
	MetaPrefix      = "meta/"             // one Meta per store per flush: the commit point
	LogPrefix       = "log/"              // immutable data files
	CompactedPrefix = "compacted/"        // merge outputs
	SnapshotPrefix  = "snapshot/"         // full backups
	VolumePrefix    = "volume/"           // volume-snapshot backups
)

// CompactedMetaPath is where pitr compact stores a compacted meta whose
// newest input was flushed at maxFlushTS:
//
//	compacted/<max_flush_ts:016x>-<id>.meta
func CompactedMetaPath(maxFlushTS uint64, id string) string {
	return fmt.Sprintf("%s%016x-%s.meta", CompactedPrefix, maxFlushTS, id)
}

// IsCompactedMetaPath reports whether p is a compacted meta's path
// (compacted/<…>.meta, not under compacted/data/).
func IsCompactedMetaPath(p string) bool {
	rest, ok := strings.CutPrefix(p, CompactedPrefix)
	return ok && strings.HasSuffix(rest, ".meta") && !strings.Contains(rest, "/")
}

// CompactedDataPath is where a compacted meta's data files live:
//
//	compacted/data/<max_flush_ts:016x>/<id>.parquet
func CompactedDataPath(maxFlushTS uint64, id string) string {
	return fmt.Sprintf("%sdata/%016x/%s.parquet", CompactedPrefix, maxFlushTS, id)
}

// CompactionLeasePath is the lease of the compaction running on a root.
const CompactionLeasePath = CompactedPrefix + "lease"

// DataPath is where a data file of one flush of one store lives:
//
//	log/<YYYYMMDD>/<HH>/<store_id>/<flush_ts:016x>-<id>.parquet
//
// with date and hour (UTC) taken from flushTS's physical part. id makes the
// name unique (a uuid, or a counter within the flush); it must be a single
// path element.
func DataPath(storeID, flushTS uint64, id string) string {
	t := keyspace.Time(flushTS)
	return fmt.Sprintf("%s%s/%02d/%d/%016x-%s.parquet", LogPrefix, t.Format("20060102"), t.Hour(), storeID, flushTS, id)
}

// MetaPath is the meta of one flush of one store:
// meta/<flush_ts:016x>-<store_id:016x>.meta.
func MetaPath(flushTS, storeID uint64) string {
	return fmt.Sprintf("%s%016x-%016x.meta", MetaPrefix, flushTS, storeID)
}

// ParseMetaPath is the inverse of MetaPath. It accepts any directory (a
// listing under compacted/ uses the same names) and checks the base name
// strictly.
func ParseMetaPath(p string) (flushTS, storeID uint64, err error) {
	base := path.Base(p)
	name, ok := strings.CutSuffix(base, ".meta")
	if !ok || len(name) != 33 || name[16] != '-' {
		return 0, 0, fmt.Errorf("%w: not a meta name: %q", ErrCorrupt, p)
	}
	if flushTS, err = parseHex16(name[:16]); err != nil {
		return 0, 0, fmt.Errorf("%w: meta name %q: %v", ErrCorrupt, p, err)
	}
	if storeID, err = parseHex16(name[17:]); err != nil {
		return 0, 0, fmt.Errorf("%w: meta name %q: %v", ErrCorrupt, p, err)
	}
	return flushTS, storeID, nil
}

func parseHex16(s string) (uint64, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return 0, fmt.Errorf("bad hex digit %q", c)
		}
	}
	return strconv.ParseUint(s, 16, 64)
}
