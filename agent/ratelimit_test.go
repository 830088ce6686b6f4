package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// TestUploadRateLimit: the agent's one upload limit holds its uploads back
// (the checkpoint cannot pass 3 MiB of incompressible values at 32 KiB/s
// with a 1 MiB burst),
// shows in GET /config, Status and the metrics, and POST /config lifts it
// while running, after which the checkpoint catches up.
func TestUploadRateLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a playground and an agent")
	}
	e := newEnvWith(t, playground.Config{Stores: 1}, nil, 300*time.Millisecond)
	e.cfg.UploadRateLimit = 32 << 10
	id := e.p.StoreIDs()[0]
	e.startAgent(id)
	ra := e.agents[id]
	base := "http://" + ra.a.HTTPAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	getLimit := func() int64 {
		resp, err := http.Get(base + "/config")
		require.NoError(t, err)
		defer resp.Body.Close()
		var c struct {
			Limit int64 `json:"upload-rate-limit"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&c))
		return c.Limit
	}
	require.Equal(t, int64(32<<10), getLimit())
	st, err := ra.client.Status(ctx, &pitrpb.StatusRequest{})
	require.NoError(t, err)
	require.Equal(t, int64(32<<10), st.GetUploadRateLimit())

	kv, err := workload.Connect(ctx, []string{e.p.PDAddr()})
	require.NoError(t, err)
	defer kv.Close()
	var endTS uint64
	for i := 0; i < 48; i++ {
		txn, err := kv.Begin()
		require.NoError(t, err)
		v := make([]byte, 64<<10)
		_, _ = rand.Read(v)
		require.NoError(t, txn.Set([]byte(fmt.Sprintf("limit/%02d", i)), v))
		require.NoError(t, txn.Commit(ctx))
		endTS = txn.CommitTS()
	}
	time.Sleep(3 * time.Second)
	low := lowest(e.progress(ctx), nil, nil)
	require.Less(t, low, endTS, "3 MiB at 32 KiB/s (1 MiB burst) cannot be uploaded in 3 s")

	resp, err := http.Post(base+"/config", "application/json", bytes.NewReader([]byte(`{"upload-rate-limit": 0}`)))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Zero(t, getLimit())
	e.waitCheckpoint(nil, nil, endTS, 60*time.Second)

	for _, bad := range []string{`{"upload-rate-limit": -1}`, `{"nope": 1}`, `{`} {
		resp, err := http.Post(base+"/config", "application/json", bytes.NewReader([]byte(bad)))
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, bad)
	}

	resp, err = http.Get(base + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.Contains(t, string(metrics), "pitr_agent_upload_rate_limit_bytes 0")
	require.Contains(t, string(metrics), `pitr_storage_operations_total{op="put",result="ok"}`, "the task's storage is metered")
}
