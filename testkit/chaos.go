package testkit

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"time"
)

// SeedEnv names the environment variable that replays a run's seed.
const SeedEnv = "PITR_SEED"

// Rand returns the random source of a run, seeded from PITR_SEED when set
// and from the clock otherwise, and always logs the seed so that a failed
// run can be replayed: the same seed makes the same choices (which key to
// split at, which region's leader to move where, which store to stop, the
// restore points), though not the same timing.
func Rand(tb TB) *rand.Rand {
	tb.Helper()
	seed := time.Now().UnixNano()
	if s := os.Getenv(SeedEnv); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			tb.Fatalf("%s=%q: not an integer", SeedEnv, s)
		}
		seed = v
	}
	tb.Logf("seed %d (replay: %s=%d)", seed, SeedEnv, seed)
	return rand.New(rand.NewSource(seed))
}

// Action is a routine topology change made on a step of the chaos. It is
// best effort: a split or a leader move fails when the region just changed,
// as it may in a real cluster, and the next step makes another.
type Action func(ctx context.Context, rng *rand.Rand)

// Fault is a one-off fault of the chaos, injected once the run is At (a
// fraction of Chaos.For) through. Inject returns false when it could not
// be injected yet (no free store for a peer, no leader to kill at this
// moment) or is not finished (a stopped store waits to restart); it is
// called again on the next steps until it returns true.
type Fault struct {
	Name   string
	At     float64
	Inject func(ctx context.Context, rng *rand.Rand) (done bool, err error)
}

// Chaos is a schedule of topology changes and faults driven by one seeded
// random source, run while workloads run.
type Chaos struct {
	Rand *rand.Rand
	// Step is the time between two steps; For how long the run lasts.
	Step, For time.Duration
	// Grace lets the run go on past For while a fault is not injected yet;
	// zero: not at all. Either way Run fails if a fault is left.
	Grace time.Duration
	// Routine are made one a step, in turn (a nil entry: nothing that step).
	Routine []Action
	// Faults are injected in order: on each step, the first one not done
	// whose At has come (so at most one a step, and one that cannot be
	// injected yet holds back the later ones).
	Faults []Fault
	// OnStep, when set, runs at the end of each step with the time since
	// the start (restore points, progress lines).
	OnStep func(i int, elapsed time.Duration) error
	// Watch are workloads that must not end during the run.
	Watch []*Workload
}

// Run runs the schedule and returns the first error: a fault's, OnStep's,
// a watched workload that ended, or faults left when the run ended.
func (ch *Chaos) Run(ctx context.Context) error {
	done := make([]bool, len(ch.Faults))
	pending := func() []string {
		var left []string
		for i, f := range ch.Faults {
			if !done[i] {
				left = append(left, f.Name)
			}
		}
		return left
	}
	step := time.NewTicker(ch.Step)
	defer step.Stop()
	began := time.Now()
	for i := 0; ; i++ {
		el := time.Since(began)
		if el >= ch.For && (len(pending()) == 0 || el >= ch.For+ch.Grace) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-step.C:
		}
		frac := float64(time.Since(began)) / float64(ch.For)
		if len(ch.Routine) > 0 {
			if a := ch.Routine[i%len(ch.Routine)]; a != nil {
				a(ctx, ch.Rand)
			}
		}
		for k, f := range ch.Faults {
			if done[k] || frac < f.At {
				continue
			}
			ok, err := f.Inject(ctx, ch.Rand)
			if err != nil {
				return fmt.Errorf("fault %s: %w", f.Name, err)
			}
			done[k] = ok
			break
		}
		for _, w := range ch.Watch {
			if ended, err := w.Ended(); ended {
				return fmt.Errorf("a workload ended during the chaos: %v", err)
			}
		}
		if ch.OnStep != nil {
			if err := ch.OnStep(i, time.Since(began)); err != nil {
				return err
			}
		}
	}
	if left := pending(); len(left) > 0 {
		return fmt.Errorf("faults not injected within %s: %s", ch.For+ch.Grace, strings.Join(left, ", "))
	}
	return nil
}

// Spaced puts n-1 idle steps after each action, so that actions come every
// n steps of a schedule whose steps are short for its OnStep's sake.
func Spaced(n int, actions ...Action) []Action {
	out := make([]Action, 0, n*len(actions))
	for _, a := range actions {
		out = append(out, a)
		out = append(out, make([]Action, n-1)...)
	}
	return out
}

// Split splits the region holding a key key(rng) picks, while the
// cluster has fewer than maxRegions regions.
func (c *Cluster) Split(maxRegions int, key func(rng *rand.Rand) []byte) Action {
	return func(_ context.Context, rng *rand.Rand) {
		if len(c.P.Cluster.Regions()) < maxRegions {
			_, _ = c.P.Cluster.Split(key(rng))
		}
	}
}

// MoveLeader moves a random region's leader to a random store.
func (c *Cluster) MoveLeader() Action {
	return func(_ context.Context, rng *rand.Rand) {
		rs, stores := c.P.Cluster.Regions(), c.P.StoreIDs()
		_ = c.P.Cluster.TransferLeader(rs[rng.Intn(len(rs))].ID, stores[rng.Intn(len(stores))])
	}
}

// RestartStore stops a random store at the given point and starts it
// again once it has been down for down.
func (c *Cluster) RestartStore(at float64, down time.Duration) Fault {
	var stopped uint64
	var since time.Time
	return Fault{Name: "store restart", At: at, Inject: func(_ context.Context, rng *rand.Rand) (bool, error) {
		if stopped == 0 {
			stores := c.P.StoreIDs()
			id := stores[rng.Intn(len(stores))]
			if err := c.P.StopStore(id); err != nil {
				return false, err
			}
			stopped, since = id, time.Now()
			return false, nil
		}
		if time.Since(since) < down {
			return false, nil
		}
		return true, c.P.StartStore(stopped)
	}}
}

// RestartPD restarts PD: regions have no leader until they heartbeat.
func (c *Cluster) RestartPD(at float64) Fault {
	return Fault{Name: "pd restart", At: at, Inject: func(ctx context.Context, _ *rand.Rand) (bool, error) {
		return true, c.P.RestartPD(ctx)
	}}
}

// MovePeer moves one peer of a region whose leader stays put to a store
// that holds none of it, so the region's ConfVer changes and nothing else;
// it waits for such a region (with replicas on fewer stores than there are).
func (c *Cluster) MovePeer(at float64) Fault {
	return Fault{Name: "peer move", At: at, Inject: func(context.Context, *rand.Rand) (bool, error) {
		stores := c.P.StoreIDs()
		for _, r := range c.P.Cluster.Regions() {
			for _, to := range stores {
				if r.PeerOn(to) != nil {
					continue
				}
				for _, from := range stores {
					if from == r.Leader || r.PeerOn(from) == nil {
						continue
					}
					return true, c.P.Cluster.MovePeer(r.ID, from, to)
				}
			}
		}
		return false, nil
	}}
}
