package agent_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground/workload"
)

// TestBigRowThroughAgent: TiKV sends EventFeed messages without a size limit
// (src/server/server.rs max_send_message_len(-1)), and a TiDB row may be up
// to 120 MiB (txn-entry-size-limit); its PREWRITE carries the value and the
// old value. A 70 MiB value overwritten by another one must reach the files.
func TestBigRowThroughAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	e := newEnv(t, nil, 500*time.Millisecond)
	for _, id := range e.p.StoreIDs() {
		e.startAgent(id)
	}
	ctx := context.Background()
	tc, err := workload.Connect(ctx, []string{e.p.PDAddr()})
	require.NoError(t, err)
	defer tc.Close()

	const size = 70 << 20
	key := []byte("big/row")
	for _, fill := range []byte{'a', 'b'} {
		txn, err := tc.Begin()
		require.NoError(t, err)
		require.NoError(t, txn.Set(key, bytes.Repeat([]byte{fill}, size)))
		require.NoError(t, txn.Commit(ctx))
	}
	endTS, err := e.p.PD.TS(ctx)
	require.NoError(t, err)
	low := e.waitCheckpoint(nil, nil, endTS, 60*time.Second)
	rows, _ := e.check(ctx, nil, nil, low)
	require.GreaterOrEqual(t, rows, 2)
}
