package workload

import (
	"context"
	"time"

	"github.com/tikv/client-go/v2/txnkv"
)

// Connect opens a client-go transaction client on the PD addresses and
// waits until it can get a timestamp. The pinned PD client may cancel its
// very first TSO request right after it starts (a known client bug), which
// fails txnkv.NewClient itself (its oracle reads a first timestamp) or the
// first request after it, so both are retried for up to 10 s.
func Connect(ctx context.Context, pdAddrs []string) (*txnkv.Client, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cli, err := txnkv.NewClient(pdAddrs)
		if err == nil {
			if _, err = cli.CurrentTimestamp("global"); err == nil {
				return cli, nil
			}
			cli.Close()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
