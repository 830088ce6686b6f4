package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// metricValue scrapes one sample of an agent's /metrics (0 when absent).
func metricValue(t *testing.T, ra *runningAgent, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + ra.a.HTTPAddr() + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.NoError(t, err)
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			require.NoError(t, err, "metric line %q", line)
			return v
		}
	}
	return 0
}

// TestCorruptSpillRunRecovers: a spill run that no longer decodes (a bit
// flipped on the local disk) makes every later Flush of that Flusher fail
// (flush.ErrSpillCorrupt). The agent must start a fresh capture, so the
// checkpoint advances again on its own and nothing is lost.
func TestCorruptSpillRunRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	e := newEnv(t, nil, time.Hour) // only FlushNow cuts
	e.cfg.MemoryBudget = 1 << 20   // spill after 512 KiB
	e.cfg.FileTarget = 1 << 40     // never cut for size
	for _, id := range e.p.StoreIDs() {
		e.startAgent(id)
	}
	ctx := context.Background()
	tc, err := workload.Connect(ctx, []string{e.p.PDAddr()})
	require.NoError(t, err)
	defer tc.Close()
	val := bytes.Repeat([]byte{'v'}, 16<<10)
	for i := 0; i < 16; i++ {
		txn, err := tc.Begin()
		require.NoError(t, err)
		for j := 0; j < 16; j++ {
			require.NoError(t, txn.Set([]byte(fmt.Sprintf("spill/%02d/%02d", i, j)), val))
		}
		require.NoError(t, txn.Commit(ctx))
	}

	// Wait for a complete spill run at the agent that leads the keys, then
	// flip one bit in the middle of it.
	sample := `pitr_flush_spills_total{task="t1"}`
	var run string
	deadline := time.Now().Add(30 * time.Second)
	for run == "" {
		require.True(t, time.Now().Before(deadline), "no spill run within 30s")
		e.mu.Lock()
		agents := make([]*runningAgent, 0, len(e.agents))
		for _, ra := range e.agents {
			agents = append(agents, ra)
		}
		e.mu.Unlock()
		for _, ra := range agents {
			if metricValue(t, ra, sample) >= 1 {
				// Runs are written one at a time in sequence: the first is complete.
				run = filepath.Join(ra.dir, "t1", "spill", "run-0000000000000001.spill")
			}
		}
		time.Sleep(50 * time.Millisecond) // polling the metrics
	}
	b, err := os.ReadFile(run)
	require.NoError(t, err)
	b[len(b)/2] ^= 0x10
	require.NoError(t, os.WriteFile(run, b, 0o600))

	endTS, err := e.p.PD.TS(ctx)
	require.NoError(t, err)
	low := e.waitCheckpoint(nil, nil, endTS, 60*time.Second)
	rows, _ := e.check(ctx, nil, nil, low)
	require.GreaterOrEqual(t, rows, 256)
}
