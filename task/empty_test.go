package task

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
)

func TestEmptyAtTiKV(t *testing.T) {
	ctx := context.Background()
	p, err := playground.Start(ctx, playground.Config{Stores: 1, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	cli, err := workload.Connect(context.Background(), []string{p.PDAddr()})
	require.NoError(t, err)
	defer cli.Close()
	var before uint64
	for i := 0; i < 20; i++ { // the pinned PD client may cancel its first TSO request
		if before, err = cli.CurrentTimestamp("global"); err == nil {
			break
		}
	}
	require.NoError(t, err)
	txn, err := cli.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte("m/1"), []byte("v")))
	require.NoError(t, txn.Commit(ctx))
	after, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)

	empty := EmptyAtTiKV(cli)
	for _, tc := range []struct {
		name   string
		ranges []*pitrpb.KeyRange
		ts     uint64
		want   bool
	}{
		{"everything, before the write", nil, before, true},
		{"everything, after the write", nil, after, false},
		{"range with the key", []*pitrpb.KeyRange{{StartKey: []byte("m/"), EndKey: []byte("m0")}}, after, false},
		{"range without the key", []*pitrpb.KeyRange{{StartKey: []byte("t"), EndKey: []byte("u")}}, after, true},
		{"open-ended range", []*pitrpb.KeyRange{{StartKey: []byte("a")}}, after, false},
	} {
		got, err := empty(ctx, tc.ranges, tc.ts)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.want, got, tc.name)
	}
}
