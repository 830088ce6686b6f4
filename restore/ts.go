package restore

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pitr-io/pitr/logfile"
)

// physicalShift is the number of logical bits of a TSO.
const physicalShift = 18

// ParseTS parses a restore point given as a TSO (decimal digits) or as an
// RFC 3339 time, which becomes the TSO of its millisecond with logical part
// 0 (physical ms << 18).
func ParseTS(s string) (uint64, error) {
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
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, fmt.Errorf("timestamp %q: want a TSO or an RFC 3339 time like 2026-01-02T15:04:05Z", s)
	}
	ms := t.UnixMilli()
	if ms < 0 || ms >= 1<<(63-physicalShift) {
		return 0, fmt.Errorf("timestamp %q: out of the TSO range", s)
	}
	return uint64(ms) << physicalShift, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// FormatTS renders a TSO with its wall-clock time: "4626... (2026-01-02T15:04:05.123Z)".
func FormatTS(ts uint64) string {
	return fmt.Sprintf("%d (%s)", ts, logfile.TSTime(ts).Format("2006-01-02T15:04:05.000Z07:00"))
}
