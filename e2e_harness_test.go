package pitr_test

import (
	"context"
	"math/rand"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground/workload"
	"github.com/pitr-io/pitr/testkit"
	"github.com/pitr-io/pitr/testkit/pipeline"
)

// The end-to-end tests run on testkit/pipeline: a source playground with a
// backup task, an agent per store and two coordinators, all in this process.
func TestMain(m *testing.M) {
	// The PD client and client-go log every connection step through
	// pingcap/log, to stdout unless routed: warnings and errors to stderr.
	level := hclog.Warn
	if os.Getenv("PITR_DEBUG") != "" {
		level = hclog.Debug
	}
	connector.RouteClientLogs(hclog.New(&hclog.LoggerOptions{Name: "client", Level: level, Output: os.Stderr}))
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild(os.Getenv(childEnv)))
	}
	os.Exit(m.Run())
}

// startE2E skips the test in -short mode, else starts a pipeline that
// stops at the test's end and returns it with the test's seeded source of
// chaos (its seed logged, PITR_SEED replays it).
func startE2E(t *testing.T, o pipeline.Options) (context.Context, *pipeline.Pipeline, *rand.Rand) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, pipeline.Start(t, ctx, o), testkit.Rand(t)
}

// runLength is how long a workload runs: 20 s, 60 s with PITR_LONG=1.
func runLength() time.Duration {
	if os.Getenv("PITR_LONG") == "1" {
		return 60 * time.Second
	}
	return 20 * time.Second
}

// bankKey picks a random account's key, to split at.
func bankKey(b *workload.Bank) func(*rand.Rand) []byte {
	return func(rng *rand.Rand) []byte { return b.Key(rng.Intn(b.Accounts)) }
}

// randomPoints is n restore points in [from, to], sorted: both ends and
// n-2 random ones in between.
func randomPoints(rng *rand.Rand, from, to uint64, n int) []uint64 {
	points := []uint64{from, to}
	for len(points) < n {
		points = append(points, from+uint64(rng.Int63n(int64(to-from))))
	}
	sort.Slice(points, func(i, j int) bool { return points[i] < points[j] })
	return points
}
