package workload

import (
	"context"
	"time"

	"github.com/tikv/client-go/v2/txnkv"
)

// Connect opens a client-go transaction client on the PD addresses and
// waits until it can get a timestamp. The pinned PD client may cancel its
// very first TSO request right after it starts (a known client bug), so the
// first request is retried for up to 10 s.
func Connect(ctx context.Context, pdAddrs []string) (*txnkv.Client, error) {
	cli, err := txnkv.NewClient(pdAddrs)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err = cli.CurrentTimestamp("global"); err == nil {
			return cli, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			cli.Close()
			return nil, err
		}
	}
}
