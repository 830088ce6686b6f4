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
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/txnkv/transaction"

	"github.com/pitr-io/pitr/agent"
	"github.com/pitr-io/pitr/playground/workload"
	pitrpb "github.com/pitr-io/pitr/proto"
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

// openTxn prewrites n keys of size bytes under prefix and leaves the
// transaction open (its locks stay until commitTxn).
func openTxn(t *testing.T, tc *txnkv.Client, prefix string, n, size int) transaction.CommitterProbe {
	t.Helper()
	txn, err := tc.Begin()
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		require.NoError(t, txn.Set([]byte(fmt.Sprintf("%s%04d", prefix, i)), bytes.Repeat([]byte{byte('a' + i%26)}, size)))
	}
	cm, err := transaction.TxnProbe{KVTxn: txn}.NewCommitter(1)
	require.NoError(t, err)
	cm.SetLockTTL(uint64((10 * time.Minute).Milliseconds()))
	require.NoError(t, cm.PrewriteAllMutations(context.Background()))
	return cm
}

// commitTxn commits the primary key of an open transaction; readers then
// resolve its secondary locks as committed (resolveRange).
func commitTxn(t *testing.T, tc *txnkv.Client, cm transaction.CommitterProbe) {
	t.Helper()
	ts, err := tc.CurrentTimestamp("global")
	require.NoError(t, err)
	cm.SetCommitTS(ts)
	require.NoError(t, cm.CommitMutations(context.Background()))
}

// resolveRange resolves every lock in [start, end) of a transaction whose
// primary is committed or rolled back, as TiDB's GC and BR's advancer do
// (client-go tikv.ResolveLocksForRange).
func resolveRange(ctx context.Context, tc *txnkv.Client, start, end []byte) error {
	ts, err := tc.CurrentTimestamp("global")
	if err != nil {
		return err
	}
	_, err = tikv.ResolveLocksForRange(ctx, tikv.NewRegionLockResolver("pitr-test", tc.KVStore), ts, start, end,
		func(ctx context.Context) *tikv.Backoffer { return tikv.NewBackoffer(ctx, 20000) }, 1024)
	return err
}

func writeKeys(t *testing.T, tc *txnkv.Client, prefix string, n, size int) {
	t.Helper()
	txn, err := tc.Begin()
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		require.NoError(t, txn.Set([]byte(fmt.Sprintf("%s%04d", prefix, i)), bytes.Repeat([]byte{'s'}, size)))
	}
	require.NoError(t, txn.Commit(context.Background()))
}

// TestPrewriteBudget: two open transactions of 8 MiB each, in two regions
// of one store, against a 1 MiB prewrite budget. The agent holds at most
// the budget (plus one row) under it, keeps one region over it and reports
// it, and after both commit every committed version is in storage.
func TestPrewriteBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	const budget = 1 << 20
	e := newEnv(t, nil, 500*time.Millisecond)
	e.cfg.PrewriteBudget = budget
	ids := e.p.StoreIDs()
	for _, k := range []string{"pw/", "pw/b", "pw/c", "pw0"} {
		_, err := e.p.Cluster.Split([]byte(k))
		require.NoError(t, err)
	}
	for _, r := range e.p.Cluster.Regions() {
		if r.Leader != ids[0] {
			require.NoError(t, e.p.Cluster.TransferLeader(r.ID, ids[0]))
		}
	}
	for _, id := range ids {
		e.startAgent(id)
	}
	e.mu.Lock()
	leader := e.agents[ids[0]]
	e.mu.Unlock()
	ctx := context.Background()
	tc, err := workload.Connect(ctx, []string{e.p.PDAddr()})
	require.NoError(t, err)
	defer tc.Close()

	// History first: the open transactions overwrite pw/a (their
	// prewrites carry old values).
	writeKeys(t, tc, "pw/a/", 128, 1<<10)
	writeKeys(t, tc, "pw/c/", 50, 100)
	t1 := openTxn(t, tc, "pw/a/", 128, 64<<10)
	t2 := openTxn(t, tc, "pw/b/", 128, 64<<10)

	// One region is kept over the budget and reported; the other is
	// released again and again (it is not kept too) while both are open.
	reported := ""
	releases := 0.0
	deadline := time.Now().Add(30 * time.Second)
	for (reported == "" || releases < 3) && time.Now().Before(deadline) {
		resp, err := leader.client.GetProgress(ctx, &pitrpb.GetProgressRequest{Task: "t1"})
		if err == nil {
			for _, r := range resp.Regions {
				if strings.Contains(r.Reason, "kept over the prewrite budget") {
					reported = fmt.Sprintf("region %d [%q,%q): %s", r.RegionId, r.StartKey, r.EndKey, r.Reason)
				}
			}
		}
		releases = metricValue(t, leader, "pitr_agent_prewrite_budget_releases_total")
		time.Sleep(100 * time.Millisecond) // polling GetProgress
	}
	t.Logf("reported: %s; %v releases", reported, releases)
	writeKeys(t, tc, "pw/c/", 50, 200)
	commitTxn(t, tc, t2)
	commitTxn(t, tc, t1)
	require.NoError(t, resolveRange(ctx, tc, []byte("pw/"), []byte("pw0")))

	endTS, err := e.p.PD.TS(ctx)
	require.NoError(t, err)
	low := e.waitCheckpoint(nil, nil, endTS, 90*time.Second)
	rows, _ := e.check(ctx, nil, nil, low)
	require.GreaterOrEqual(t, rows, 128*3+100)

	counted, over := agent.PendingPrewritePeaks(leader.a)
	t.Logf("pending prewrites: peak %d bytes under the budget, %d over it", counted, over)
	require.LessOrEqual(t, counted, int64(budget+128<<10), "pending prewrites counted against the budget")
	require.NotEmpty(t, reported, "no region reported over the prewrite budget")
	require.GreaterOrEqual(t, releases, 3.0, "regions released over the budget")
	require.Greater(t, over, int64(budget), "the region kept over the budget")
	require.Less(t, over, int64(9<<20), "more than one region kept over the budget")
}
