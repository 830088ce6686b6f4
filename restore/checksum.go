package restore

import (
	"context"
	"fmt"

	"github.com/tikv/client-go/v2/tikv"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
)

// clusterChecksum asks the target for a range's checksum; tests replace it.
var clusterChecksum = checksum.Cluster

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
		got, err := clusterChecksum(ctx, store, s.Range, ts)
		if err != nil {
			return fmt.Errorf("%w: checksum the target: %v", ErrUnavailable, err)
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
