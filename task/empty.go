package task

import (
	"context"
	"fmt"

	"github.com/tikv/client-go/v2/txnkv"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// EmptyAtTiKV returns a StartOptions.EmptyAt that answers with a snapshot
// read at ts through client-go: a range is empty when a scan of it finds no
// key. No ranges means the whole key space.
func EmptyAtTiKV(cli *txnkv.Client) func(ctx context.Context, ranges []*pitrpb.KeyRange, ts uint64) (bool, error) {
	return func(ctx context.Context, ranges []*pitrpb.KeyRange, ts uint64) (bool, error) {
		if len(ranges) == 0 {
			ranges = []*pitrpb.KeyRange{{}}
		}
		snap := cli.GetSnapshot(ts)
		for _, r := range ranges {
			start := r.GetStartKey()
			if len(start) == 0 {
				start = []byte{0} // client-go's iterator needs a key; no user key is empty
			}
			end := r.GetEndKey()
			if len(end) == 0 {
				end = nil
			}
			it, err := snap.Iter(start, end)
			if err != nil {
				return false, fmt.Errorf("scan [%x, %x) at %d: %w", r.GetStartKey(), r.GetEndKey(), ts, err)
			}
			found := it.Valid()
			it.Close()
			if found {
				return false, nil
			}
		}
		return true, nil
	}
}
