package keyspace

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// Range is a half-open raw key range [Start, End). An empty Start is the
// beginning of the key space; an empty End is +inf. The zero Range is the
// whole key space.
type Range struct {
	Start, End []byte
}

// Point is one range boundary: a key, or +inf. Sweeps over many ranges
// (the checkpoint computation) sort points rather than ranges, so the
// +inf end compares correctly without a special case at each use.
type Point struct {
	Key []byte
	Inf bool
}

// StartPoint is the boundary a range start k stands for (never +inf: an
// empty start is the first key).
func StartPoint(k []byte) Point { return Point{Key: k} }

// EndPoint is the boundary a range end k stands for (empty: +inf).
func EndPoint(k []byte) Point { return Point{Key: k, Inf: len(k) == 0} }

// ComparePoints orders two boundaries, +inf after every key.
func ComparePoints(a, b Point) int {
	switch {
	case a.Inf && b.Inf:
		return 0
	case a.Inf:
		return 1
	case b.Inf:
		return -1
	}
	return bytes.Compare(a.Key, b.Key)
}

// CompareEnds orders two range ends, an empty end meaning +inf.
func CompareEnds(a, b []byte) int { return ComparePoints(EndPoint(a), EndPoint(b)) }

// BeforeEnd reports whether key lies before the range end end (empty:
// +inf), that is whether key < end.
func BeforeEnd(key, end []byte) bool { return len(end) == 0 || bytes.Compare(key, end) < 0 }

// Empty reports whether the range holds no key (End set and not after
// Start). Inverted ranges are empty too, so callers never see them as
// wrapping around.
func (r Range) Empty() bool { return !BeforeEnd(r.Start, r.End) }

// Contains reports whether key lies in the range.
func (r Range) Contains(key []byte) bool {
	return bytes.Compare(key, r.Start) >= 0 && BeforeEnd(key, r.End)
}

// Intersect returns r ∩ o and whether it holds a key. The result shares
// its keys with r and o.
func (r Range) Intersect(o Range) (Range, bool) {
	out := r
	if bytes.Compare(o.Start, out.Start) > 0 {
		out.Start = o.Start
	}
	if CompareEnds(o.End, out.End) < 0 {
		out.End = o.End
	}
	return out, !out.Empty()
}

// Overlaps reports whether r and o share a key.
func (r Range) Overlaps(o Range) bool {
	_, ok := r.Intersect(o)
	return ok
}

// String renders the range for messages and `pitr task status`:
// ["a", "b"), [-inf, 0x00ff), ["k", +inf). See FormatKey.
func (r Range) String() string {
	start := "-inf"
	if len(r.Start) > 0 {
		start = FormatKey(r.Start)
	}
	end := "+inf"
	if len(r.End) > 0 {
		end = FormatKey(r.End)
	}
	return "[" + start + ", " + end + ")"
}

// FormatKey renders one key for a one-line message: quoted when it is
// printable ASCII (the empty key is ""), 0x-hex otherwise, so binary keys
// never break a terminal or a log line.
func FormatKey(k []byte) string {
	for _, c := range k {
		if c < 0x20 || c > 0x7e {
			return "0x" + hex.EncodeToString(k)
		}
	}
	return strconv.Quote(string(k))
}

// rangeJSON is the JSON form of a Range: hex keys, empty end +inf. It is
// what `pitr task status --json` has always printed for a task range;
// scripts read it, so it does not change.
type rangeJSON struct {
	StartKey string `json:"start_key"`
	EndKey   string `json:"end_key"`
}

// MarshalJSON writes {"start_key": hex, "end_key": hex}.
func (r Range) MarshalJSON() ([]byte, error) {
	return json.Marshal(rangeJSON{StartKey: hex.EncodeToString(r.Start), EndKey: hex.EncodeToString(r.End)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Range) UnmarshalJSON(b []byte) error {
	var v rangeJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	s, err := hex.DecodeString(v.StartKey)
	if err != nil {
		return fmt.Errorf("range start_key %q: %w", v.StartKey, err)
	}
	e, err := hex.DecodeString(v.EndKey)
	if err != nil {
		return fmt.Errorf("range end_key %q: %w", v.EndKey, err)
	}
	*r = Range{Start: s, End: e}
	return nil
}

// Merge sorts ranges by start, drops empty ones and merges overlapping or
// adjacent ones. It does not modify rs; the result shares keys with it.
// No ranges in, none out (compare Normalize).
func Merge(rs []Range) []Range {
	out := make([]Range, 0, len(rs))
	for _, r := range rs {
		if !r.Empty() {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Range) int { return bytes.Compare(a.Start, b.Start) })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if ComparePoints(StartPoint(r.Start), EndPoint(last.End)) <= 0 {
				if CompareEnds(r.End, last.End) > 0 {
					last.End = r.End
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	return merged
}

// Normalize is Merge for a task's ranges, where no ranges means the whole
// key space: it returns [{}] for none. Ranges that are all empty normalize
// to none (a task over nothing), not to the whole key space.
func Normalize(rs []Range) []Range {
	if len(rs) == 0 {
		return []Range{{}}
	}
	return Merge(rs)
}

// Clip returns the parts of r inside task, which must be normalized
// (sorted, disjoint), in key order.
func Clip(r Range, task []Range) []Range {
	var out []Range
	for _, t := range task {
		if c, ok := r.Intersect(t); ok {
			out = append(out, c)
		}
	}
	return out
}
