package restore

import (
	"context"
	"fmt"
	"time"

	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
)

// openChecksumKV opens the client-go client the target's checksum is asked
// through. client-go's NewClient sometimes fails at once (a cancelled RPC
// while its PD client starts, seen in the package's tests with several
// clusters in one process), and connector.KV does not retry it: a failure
// that comes quickly is retried twice; one that took its time (the target
// does not answer) is not.
func openChecksumKV(ctx context.Context, c connector.Config) (*txnkv.Client, error) {
	for attempt := 0; ; attempt++ {
		began := time.Now()
		kv, err := connector.KV(ctx, c)
		if err == nil || attempt == 2 || time.Since(began) > 2*time.Second || ctx.Err() != nil {
			return kv, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, err
		}
	}
}

// unitsDoneBefore returns the plan's units recorded done before this run.
func unitsDoneBefore(plan *Plan, prog *progress) []keyspace.Range {
	var out []keyspace.Range
	for _, u := range plan.Units {
		if prog.isDone(u) {
			out = append(out, u)
		}
	}
	return out
}

// verifyChecksums is BR's restore checksum: once every write is ingested,
// it asks the target for the checksum, at its current TSO, of every range
// a single-pass sweep summed (this run's and those an earlier run
// recorded in the progress file), and compares. The first difference is
// ErrChecksum. Sweeps that took several passes, and units an earlier run
// finished without a recorded sum, are counted in res.ChecksumSkipped.
func (r *runner) verifyChecksums(ctx context.Context, store *tikv.KVStore, now func(context.Context) (uint64, error), earlier []keyspace.Range, res *Result) error {
	sums := r.prog.sums()
	ts, err := now(ctx)
	if err != nil {
		return fmt.Errorf("%w: get a timestamp from the target's PD for its checksum: %v", ErrUnavailable, err)
	}
	for _, s := range sums {
		got, err := checksum.Cluster(ctx, store, s.Range, ts)
		if err != nil {
			return fmt.Errorf("checksum the target: %w", err)
		}
		if got != s.Sum {
			return fmt.Errorf("%w: range %s of the target: expected %s, got %s", ErrChecksum, s.Range, s.Sum, got)
		}
		res.ChecksumRanges++
	}
	skipped := int(r.multiPass.Load())
	for _, u := range earlier {
		covered := false
		for _, s := range sums {
			if s.Range.Contains(u.Start) && keyspace.CompareEnds(u.End, s.Range.End) <= 0 {
				covered = true
				break
			}
		}
		if !covered {
			skipped++
		}
	}
	res.ChecksumSkipped = skipped
	if skipped > 0 {
		r.log.Warn("some key ranges were not checksummed", "checksummed", res.ChecksumRanges, "skipped", skipped,
			"why", "their sweeps took several passes, or an earlier run finished them without recording a checksum")
	} else {
		r.log.Info("checksum matches", "ranges", res.ChecksumRanges)
	}
	return nil
}
