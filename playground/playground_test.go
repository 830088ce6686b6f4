package playground

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tikv/client-go/v2/txnkv"

	"github.com/pitr-io/pitr/playground/workload"
)

func ctlDo(t *testing.T, p *Playground, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, "http://"+p.CtlAddr()+path, rd)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes()
}

// newClient opens a client-go txn client, retrying the one start-up TSO
// cancellation the pinned PD client is known for. The caller closes it
// (exactly once: client-go panics on a second Close).
func newClient(t *testing.T, ctx context.Context, pdAddr string) *txnkv.Client {
	t.Helper()
	cli, err := workload.Connect(ctx, []string{pdAddr})
	require.NoError(t, err)
	return cli
}

func put(t *testing.T, ctx context.Context, cli *txnkv.Client, k, v string) {
	t.Helper()
	txn, err := cli.Begin()
	require.NoError(t, err)
	require.NoError(t, txn.Set([]byte(k), []byte(v)))
	require.NoError(t, txn.Commit(ctx))
}

func get(t *testing.T, ctx context.Context, cli *txnkv.Client, k string) string {
	t.Helper()
	ts, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	v, err := cli.GetSnapshot(ts).Get(ctx, []byte(k))
	require.NoError(t, err)
	return string(v)
}

func TestControlAPIAndRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := Start(ctx, Config{Dir: dir, Stores: 3, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()

	code, body := ctlDo(t, p, "GET", "/stores", nil)
	require.Equal(t, http.StatusOK, code)
	var stores []StoreInfo
	require.NoError(t, json.Unmarshal(body, &stores))
	require.Len(t, stores, 3)

	cli := newClient(t, ctx, p.PDAddr())
	for i := 0; i < 20; i++ {
		put(t, ctx, cli, fmt.Sprintf("k%02d", i), fmt.Sprintf("v%d", i))
	}

	code, body = ctlDo(t, p, "POST", "/split", map[string][]byte{"key": []byte("k10")})
	require.Equal(t, http.StatusOK, code, string(body))
	var halves []RegionInfo
	require.NoError(t, json.Unmarshal(body, &halves))
	require.Len(t, halves, 2)
	require.Equal(t, []byte("k10"), halves[1].StartKey)

	code, body = ctlDo(t, p, "POST", "/split", map[string][]byte{"key": []byte("k10")})
	require.Equal(t, http.StatusBadRequest, code, "split at a boundary: %s", body)

	target := stores[2].ID
	code, body = ctlDo(t, p, "POST", "/transfer-leader", map[string]uint64{"region_id": halves[1].ID, "store_id": target})
	require.Equal(t, http.StatusOK, code, string(body))
	require.Equal(t, target, p.Cluster.LocateRaw([]byte("k15")).Leader)

	// Stop the store that leads the right half: the leader moves, reads go on.
	code, body = ctlDo(t, p, "POST", fmt.Sprintf("/stores/%d/stop", target), nil)
	require.Equal(t, http.StatusOK, code, string(body))
	require.NotEqual(t, target, p.Cluster.LocateRaw([]byte("k15")).Leader)
	require.Equal(t, "v15", get(t, ctx, cli, "k15"))
	code, _ = ctlDo(t, p, "POST", fmt.Sprintf("/stores/%d/stop", target), nil)
	require.Equal(t, http.StatusConflict, code)
	code, body = ctlDo(t, p, "POST", fmt.Sprintf("/stores/%d/start", target), nil)
	require.Equal(t, http.StatusOK, code, string(body))
	require.Contains(t, p.StoreAddrs(), target)

	code, body = ctlDo(t, p, "POST", "/merge", map[string]uint64{"left": halves[0].ID, "right": halves[1].ID})
	require.Equal(t, http.StatusOK, code, string(body))
	code, body = ctlDo(t, p, "GET", "/regions", nil)
	require.Equal(t, http.StatusOK, code)
	var regions []RegionInfo
	require.NoError(t, json.Unmarshal(body, &regions))
	require.Len(t, regions, 1)

	code, _ = ctlDo(t, p, "POST", "/stores/99/stop", nil)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = ctlDo(t, p, "POST", "/split", map[string]string{"nokey": "x"})
	require.Equal(t, http.StatusBadRequest, code)

	// Data, topology and TSO survive a restart from the same dir.
	ts1, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	cli.Close()
	require.NoError(t, p.Close())
	p2, err := Start(ctx, Config{Dir: dir, GCInterval: -1})
	require.NoError(t, err)
	defer p2.Close()
	cli2 := newClient(t, ctx, p2.PDAddr())
	ts2, err := cli2.CurrentTimestamp("global")
	require.NoError(t, err)
	require.Greater(t, ts2, ts1, "TSO is monotonic across restarts")
	defer cli2.Close()
	require.Len(t, p2.Cluster.Regions(), 1)
	for i := 0; i < 20; i++ {
		require.Equal(t, fmt.Sprintf("v%d", i), get(t, ctx, cli2, fmt.Sprintf("k%02d", i)))
	}
}
