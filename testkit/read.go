package testkit

import (
	"bytes"
	"fmt"

	"github.com/tikv/client-go/v2/txnkv"
)

// ReadAll reads the keys of a cluster at ts in [start, end) for each pair
// of bounds ("" as an end: to the end of the key space); no bounds: every
// key. Tests read around keys nobody may read (a leaked lock) with bounds.
func ReadAll(kv *txnkv.Client, ts uint64, bounds ...string) (map[string][]byte, error) {
	if len(bounds) == 0 {
		bounds = []string{"\x00", ""}
	}
	out := map[string][]byte{}
	for i := 0; i+1 < len(bounds); i += 2 {
		var end []byte
		if bounds[i+1] != "" {
			end = []byte(bounds[i+1])
		}
		it, err := kv.GetSnapshot(ts).Iter([]byte(bounds[i]), end)
		if err != nil {
			return nil, fmt.Errorf("scan [%q, %q): %w", bounds[i], bounds[i+1], err)
		}
		for it.Valid() {
			out[string(it.Key())] = append([]byte(nil), it.Value()...)
			if err := it.Next(); err != nil {
				it.Close()
				return nil, fmt.Errorf("scan [%q, %q): %w", bounds[i], bounds[i+1], err)
			}
		}
		it.Close()
	}
	return out, nil
}

// Diff compares two reads at ts key for key and describes the first
// difference: a key missing from got, a value that differs (length first),
// or keys got has and want has not. Nil: the same.
func Diff(want, got map[string][]byte, ts uint64) error {
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			return fmt.Errorf("key %q missing at T=%d", k, ts)
		case len(v) != len(g):
			return fmt.Errorf("key %q at T=%d: value length %d, want %d", k, ts, len(g), len(v))
		case !bytes.Equal(v, g):
			return fmt.Errorf("key %q at T=%d: values differ", k, ts)
		}
	}
	if len(got) != len(want) {
		for k := range got {
			if _, ok := want[k]; !ok {
				return fmt.Errorf("extra keys at T=%d (%d, want %d), such as %q", ts, len(got), len(want), k)
			}
		}
	}
	return nil
}

// RequireSame fails the TB unless Diff finds the reads the same.
func RequireSame(tb TB, want, got map[string][]byte, ts uint64) {
	tb.Helper()
	if err := Diff(want, got, ts); err != nil {
		tb.Fatalf("%v", err)
	}
}
