package restore

import (
	"bytes"
	"encoding/hex"
	"slices"
	"strconv"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// KeyRange is a half-open range [Start, End) of raw user keys. An empty
// Start is the beginning of the key space, an empty End its end (+inf).
type KeyRange struct {
	Start, End []byte
}

// Contains reports whether key lies in the range.
func (r KeyRange) Contains(key []byte) bool {
	return bytes.Compare(key, r.Start) >= 0 && (len(r.End) == 0 || bytes.Compare(key, r.End) < 0)
}

func (r KeyRange) String() string {
	return "[" + fmtKey(r.Start, false) + ", " + fmtKey(r.End, true) + ")"
}

// compareEnd compares two range ends, empty meaning +inf.
func compareEnd(a, b []byte) int {
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return 1
	case len(b) == 0:
		return -1
	}
	return bytes.Compare(a, b)
}

// beforeEnd reports whether key < end (end empty: +inf).
func beforeEnd(key, end []byte) bool { return len(end) == 0 || bytes.Compare(key, end) < 0 }

// overlaps reports whether [aStart, aEnd) meets the closed key interval
// [minKey, maxKey].
func overlapsClosed(r KeyRange, minKey, maxKey []byte) bool {
	return bytes.Compare(maxKey, r.Start) >= 0 && beforeEnd(minKey, r.End)
}

// taskRanges returns the task's ranges sorted and merged; no ranges means
// the whole key space.
func taskRanges(task *pitrpb.TaskInfo) []KeyRange {
	var rs []KeyRange
	for _, r := range task.GetRanges() {
		kr := KeyRange{Start: r.GetStartKey(), End: r.GetEndKey()}
		if len(kr.End) > 0 && bytes.Compare(kr.Start, kr.End) >= 0 {
			continue
		}
		rs = append(rs, kr)
	}
	if len(task.GetRanges()) == 0 {
		return []KeyRange{{}}
	}
	return mergeRanges(rs)
}

// mergeRanges sorts ranges and merges the overlapping or adjacent ones.
func mergeRanges(rs []KeyRange) []KeyRange {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b KeyRange) int { return bytes.Compare(a.Start, b.Start) })
	var out []KeyRange
	for _, r := range rs {
		if n := len(out); n > 0 && len(out[n-1].End) > 0 && bytes.Compare(r.Start, out[n-1].End) <= 0 {
			if compareEnd(r.End, out[n-1].End) > 0 {
				out[n-1].End = r.End
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// fmtKey renders a key for a one-line message: quoted when it is printable
// ASCII, hex otherwise; empty is -inf or +inf.
func fmtKey(k []byte, isEnd bool) string {
	if len(k) == 0 {
		if isEnd {
			return "+inf"
		}
		return `""`
	}
	for _, c := range k {
		if c < 0x20 || c > 0x7e {
			return "0x" + hex.EncodeToString(k)
		}
	}
	return strconv.Quote(string(k))
}
