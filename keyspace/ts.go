package keyspace

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LogicalBits is the width of a TSO's logical part: ts>>LogicalBits is the
// physical part, in Unix milliseconds (PD tsoutil).
const LogicalBits = 18

// maxPhysical bounds the physical part so that a TSO stays below 1<<63:
// TSOs travel as int64 in places (Parquet commit_ts INT64, PD's int64
// physical), so a larger value is not a TSO anyone issued.
const maxPhysical = 1<<(63-LogicalBits) - 1

// Compose builds a TSO from its physical (Unix ms) and logical parts, as PD
// returns them (logical < 1<<LogicalBits).
func Compose(physical, logical int64) uint64 {
	return uint64(physical)<<LogicalBits | uint64(logical)
}

// Physical returns a TSO's physical part in Unix milliseconds.
func Physical(ts uint64) int64 { return int64(ts >> LogicalBits) }

// Logical returns a TSO's logical part.
func Logical(ts uint64) int64 { return int64(ts & (1<<LogicalBits - 1)) }

// Time returns the wall-clock time of a TSO's physical part, always in UTC,
// so that what one command prints or lays out by date never depends on the
// machine's time zone.
func Time(ts uint64) time.Time { return time.UnixMilli(Physical(ts)).UTC() }

// FromTime returns the first TSO of t's millisecond (logical part 0).
func FromTime(t time.Time) uint64 { return Compose(t.UnixMilli(), 0) }

// timeLayout is RFC 3339 with milliseconds always shown: a TSO's physical
// part has millisecond resolution, and a fixed width lines columns up.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// Format renders a TSO with its wall-clock time, as status output and
// errors show it: "470855732037681171 (2026-12-02T00:41:13.508Z)".
func Format(ts uint64) string {
	return strconv.FormatUint(ts, 10) + " (" + FormatTime(ts) + ")"
}

// FormatTime renders only a TSO's wall-clock time (UTC, milliseconds).
func FormatTime(ts uint64) string { return Time(ts).Format(timeLayout) }

// Parse reads a timestamp as users give it to --start-ts, --to and the
// like (ParseIn at the current time, in the local time zone).
func Parse(s string) (uint64, error) { return ParseIn(s, time.Now(), time.Local) }

// wallLayouts are the zone-less times ParseIn reads in its location.
var wallLayouts = []string{
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04",
	"2006-01-02T15:04",
	"2006-01-02",
}

// ParseIn reads a timestamp:
//   - a TSO in decimal digits;
//   - an RFC 3339 time (any offset, any fraction);
//   - "now", or "now-" and a Go duration ("now-5m", "now-1h30m"): now
//     minus that;
//   - a wall-clock time without a zone, "2026-12-01 21:00:00" (also with
//     a T, without seconds, a fraction, or a date alone), in loc.
//
// A time becomes the first TSO of its millisecond. Surrounding spaces are
// ignored.
func ParseIn(s string, now time.Time, loc *time.Location) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty timestamp")
	}
	if isDigits(s) {
		ts, err := strconv.ParseUint(s, 10, 64)
		if err != nil || ts >= 1<<63 {
			return 0, fmt.Errorf("timestamp %q: not a TSO", s)
		}
		return ts, nil
	}
	var t time.Time
	switch rest, ok := strings.CutPrefix(s, "now"); {
	case ok && rest == "":
		t = now
	case ok && strings.HasPrefix(rest, "-"):
		d, err := time.ParseDuration(strings.TrimSpace(rest[1:]))
		if err != nil || d < 0 {
			return 0, fmt.Errorf("timestamp %q: want now-DURATION like now-5m or now-1h30m", s)
		}
		t = now.Add(-d)
	default:
		var err error
		if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
			found := false
			for _, l := range wallLayouts {
				if t, err = time.ParseInLocation(l, s, loc); err == nil {
					found = true
					break
				}
			}
			if !found {
				return 0, fmt.Errorf("timestamp %q: want a TSO, an RFC 3339 time like 2026-01-02T15:04:05Z, a time like \"2026-01-02 15:04:05\" (in --tz), or now-5m", s)
			}
		}
	}
	ms := t.UnixMilli()
	if ms < 0 || ms > maxPhysical {
		return 0, fmt.Errorf("timestamp %q: out of the TSO range", s)
	}
	return Compose(ms, 0), nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
