package testkit_test

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/testkit"
)

func TestDiff(t *testing.T) {
	m := func(kv ...string) map[string][]byte {
		out := map[string][]byte{}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = []byte(kv[i+1])
		}
		return out
	}
	for _, c := range []struct {
		name      string
		want, got map[string][]byte
		err       string
	}{
		{"same", m("a", "1", "b", "22"), m("b", "22", "a", "1"), ""},
		{"both empty", m(), m(), ""},
		{"missing", m("a", "1", "b", "2"), m("a", "1"), `key "b" missing at T=7`},
		{"length", m("a", "1"), m("a", "11"), `key "a" at T=7: value length 2, want 1`},
		{"value", m("a", "1"), m("a", "2"), `key "a" at T=7: values differ`},
		{"extra", m("a", "1"), m("a", "1", "z", "9"), `extra keys at T=7 (2, want 1), such as "z"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := testkit.Diff(c.want, c.got, 7)
			if c.err == "" {
				require.NoError(t, err)
			} else {
				require.EqualError(t, err, c.err)
			}
		})
	}
}

// TestRun: the adapter the demo and the bench use turns Fatalf, Errorf
// (from any goroutine) and fn's error into Run's error, keeps the first,
// runs cleanups last first, and lets other panics through.
func TestRun(t *testing.T) {
	var order []int
	var log strings.Builder
	err := testkit.Run(testkit.RunOptions{Log: &log, Dir: t.TempDir()}, func(tb testkit.TB) error {
		tb.Cleanup(func() { order = append(order, 1) })
		tb.Cleanup(func() { order = append(order, 2) })
		done := make(chan struct{})
		go func() { defer close(done); tb.Errorf("from a goroutine: %d", 1) }()
		<-done
		require.True(t, tb.Failed())
		tb.Fatalf("fatal")
		t.Error("Fatalf returned")
		return nil
	})
	require.EqualError(t, err, "from a goroutine: 1")
	require.Equal(t, []int{2, 1}, order)
	require.Contains(t, log.String(), "error: from a goroutine: 1")

	err = testkit.Run(testkit.RunOptions{}, func(tb testkit.TB) error {
		dir := tb.TempDir()
		tb.Cleanup(func() {
			_, err := os.Stat(dir)
			require.NoError(t, err, "temporary directories outlive the cleanups")
		})
		tb.Fatalf("stop at %d", 2)
		return nil
	})
	require.EqualError(t, err, "stop at 2")

	sentinel := errors.New("fn failed")
	require.ErrorIs(t, testkit.Run(testkit.RunOptions{}, func(testkit.TB) error { return sentinel }), sentinel)
	require.NoError(t, testkit.Run(testkit.RunOptions{}, func(testkit.TB) error { return nil }))
	require.PanicsWithValue(t, "bug", func() {
		_ = testkit.Run(testkit.RunOptions{}, func(testkit.TB) error { panic("bug") })
	})
}

// TestRandReplay: the seed is logged, and PITR_SEED replays its choices.
func TestRandReplay(t *testing.T) {
	t.Setenv(testkit.SeedEnv, "42")
	var log strings.Builder
	var got int64
	require.NoError(t, testkit.Run(testkit.RunOptions{Log: &log}, func(tb testkit.TB) error {
		got = testkit.Rand(tb).Int63()
		return nil
	}))
	require.Equal(t, rand.New(rand.NewSource(42)).Int63(), got)
	require.Equal(t, "seed 42 (replay: PITR_SEED=42)\n", log.String())

	t.Setenv(testkit.SeedEnv, "x")
	require.Error(t, testkit.Run(testkit.RunOptions{}, func(tb testkit.TB) error { testkit.Rand(tb); return nil }))
}

// TestChaosSchedule: faults come in order, at most one a step and not
// before their point; one that cannot be injected yet holds back the
// later ones; the run goes on for Grace while a fault is left, and fails
// if one is still left then.
func TestChaosSchedule(t *testing.T) {
	var events []string
	fault := func(name string, at float64, tries int) testkit.Fault {
		n := 0
		return testkit.Fault{Name: name, At: at, Inject: func(context.Context, *rand.Rand) (bool, error) {
			n++
			events = append(events, name)
			return n >= tries, nil
		}}
	}
	steps := 0
	ch := &testkit.Chaos{Rand: rand.New(rand.NewSource(1)), Step: 5 * time.Millisecond, For: 100 * time.Millisecond, Grace: time.Second,
		Routine: []testkit.Action{func(context.Context, *rand.Rand) { steps++ }, nil},
		Faults:  []testkit.Fault{fault("a", 0.2, 1), fault("b", 0.3, 3), fault("c", 0.35, 1), fault("d", 0.01, 1)},
	}
	require.NoError(t, ch.Run(context.Background()))
	require.Equal(t, []string{"d", "a", "b", "b", "b", "c"}, events)
	require.Greater(t, steps, 5)

	events = nil
	ch = &testkit.Chaos{Rand: rand.New(rand.NewSource(1)), Step: 5 * time.Millisecond, For: 20 * time.Millisecond,
		Grace: 40 * time.Millisecond, Faults: []testkit.Fault{fault("late", 0.9, 8)}}
	require.NoError(t, ch.Run(context.Background()), "Grace lets the fault in")

	ch = &testkit.Chaos{Rand: rand.New(rand.NewSource(1)), Step: 5 * time.Millisecond, For: 20 * time.Millisecond,
		Faults: []testkit.Fault{fault("never", 0, 1<<30)}}
	require.ErrorContains(t, ch.Run(context.Background()), "faults not injected within 20ms: never")

	boom := errors.New("boom")
	ch = &testkit.Chaos{Rand: rand.New(rand.NewSource(1)), Step: 5 * time.Millisecond, For: time.Second,
		Faults: []testkit.Fault{{Name: "x", Inject: func(context.Context, *rand.Rand) (bool, error) { return false, boom }}}}
	require.ErrorIs(t, ch.Run(context.Background()), boom)
}
