package keyspace

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCompose(t *testing.T) {
	ts := Compose(1767323045123, 7)
	require.Equal(t, uint64(1767323045123)<<18|7, ts)
	require.Equal(t, int64(1767323045123), Physical(ts))
	require.Equal(t, int64(7), Logical(ts))
	require.Equal(t, uint64(1767323045000)<<18, FromTime(time.Date(2026, 1, 2, 3, 4, 5, 999_000, time.UTC)))
}

// TestTimeIsUTC: Time is UTC whatever the process's zone, so dates in
// storage paths and printed times agree across machines.
func TestTimeIsUTC(t *testing.T) {
	old := time.Local
	t.Cleanup(func() { time.Local = old })
	time.Local = time.FixedZone("UTC+9", 9*3600)
	ts := Compose(1767323045123, 1)
	require.Equal(t, time.UTC, Time(ts).Location())
	require.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 123_000_000, time.UTC), Time(ts))
	require.Equal(t, ts&^(1<<LogicalBits-1), FromTime(Time(ts)))
}

func TestFormat(t *testing.T) {
	require.Equal(t, "470855732037681171 (2026-12-02T00:41:13.508Z)", Format(470855732037681171))
	require.Equal(t, "2026-01-02T03:04:05.000Z", FormatTime(Compose(1767323045000, 0)), "milliseconds always shown")
	require.Equal(t, "0 (1970-01-01T00:00:00.000Z)", Format(0))
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want uint64
		err  bool
	}{
		{name: "tso", in: "463856812345678901", want: 463856812345678901},
		{name: "zero", in: "0", want: 0},
		{name: "rfc3339", in: "2026-01-02T03:04:05Z", want: uint64(1767323045000) << 18},
		{name: "rfc3339 ms", in: "2026-01-02T03:04:05.123+00:00", want: uint64(1767323045123) << 18},
		{name: "rfc3339 ns truncates to the ms", in: "2026-01-02T03:04:05.123999999Z", want: uint64(1767323045123) << 18},
		{name: "offset", in: "2026-01-02T04:04:05+01:00", want: uint64(1767323045000) << 18},
		{name: "spaces", in: " 42 ", want: 42},
		{name: "what Format prints, time part", in: "2026-12-02T00:41:13.508Z", want: 470855732037681171 &^ (1<<18 - 1)},
		{name: "empty", in: "", err: true},
		{name: "garbage", in: "yesterday", err: true},
		{name: "negative", in: "-5", err: true},
		{name: "plus sign", in: "+5", err: true},
		{name: "not below 1<<63", in: "9223372036854775808", err: true},
		{name: "too big", in: "18446744073709551615", err: true},
		{name: "before epoch", in: "1960-01-01T00:00:00Z", err: true},
		// Relative to now, and wall-clock times in the given zone (UTC+1).
		{name: "now", in: "now", want: uint64(1767323045000) << 18},
		{name: "now minus", in: "now-5m", want: uint64(1767323045000-300000) << 18},
		{name: "now minus compound", in: " now-1h30m ", want: uint64(1767323045000-5400000) << 18},
		{name: "now plus", in: "now+5m", err: true},
		{name: "now minus garbage", in: "now-soon", err: true},
		{name: "now minus negative", in: "now--5m", err: true},
		{name: "wall clock in zone", in: "2026-01-02 04:04:05", want: uint64(1767323045000) << 18},
		{name: "wall clock with T", in: "2026-01-02T04:04:05.5", want: uint64(1767323045500) << 18},
		{name: "wall clock minutes", in: "2026-01-02 04:04", want: uint64(1767323040000) << 18},
		{name: "date only is midnight in zone", in: "2026-01-02", want: uint64(1767308400000) << 18},
		{name: "wall clock garbage", in: "2026-13-02 04:04:05", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseIn(tc.in, time.UnixMilli(1767323045000), time.FixedZone("UTC+1", 3600))
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// FuzzParse: Parse never panics, accepts only TSOs below 1<<63, and reads
// back every TSO it is given in decimal and the time Format prints.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "42", " 463856812345678901 ", "2026-01-02T03:04:05.123+01:00", "x", "9223372036854775808"} {
		f.Add(s, uint64(470855732037681171))
	}
	f.Fuzz(func(t *testing.T, s string, ts uint64) {
		if got, err := Parse(s); err == nil && got >= 1<<63 {
			t.Fatalf("Parse(%q) = %d, not a TSO", s, got)
		}
		ts &= 1<<63 - 1
		if got, err := Parse(strconv.FormatUint(ts, 10)); err != nil || got != ts {
			t.Fatalf("Parse(%d) = %d, %v", ts, got, err)
		}
		if Time(ts).Year() > 9999 {
			return // RFC 3339 has four-digit years
		}
		if got, err := Parse(FormatTime(ts)); err != nil || got != ts&^(1<<LogicalBits-1) {
			t.Fatalf("Parse(FormatTime(%d)=%q) = %d, %v", ts, FormatTime(ts), got, err)
		}
	})
}
