package restore

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/importer"
)

// TestRestoreUnderWritePressure: a target whose stores stall ingests in
// normal mode (ServerIsBusy after 4 SSTs, for an hour) is restored without
// a single busy answer, because restore switches every store to import
// mode first, and back to normal at the end.
func TestRestoreUnderWritePressure(t *testing.T) {
	ctx := context.Background()
	b, hist, cp := writeBackup(t)
	tgt := startImportTarget(t, ctx, importer.Limits{BusyFiles: 4, BusyWindow: time.Hour}, "w100")
	cli := newTargetClient(t, tgt.PDAddr())
	_, err := Run(ctx, Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, ChunkBytes: 4 << 10,
		MaxAttempts: 3, ProgressFile: filepath.Join(t.TempDir(), "progress.json")})
	require.NoError(t, err)
	requireSame(t, hist.at(cp), scanAt(t, cli, cp), "restored")
	require.Zero(t, tgt.ImportStats().Busy, "no ingest met a write stall")
	modes, err := tgt.ImportMode(ctx)
	require.NoError(t, err)
	for id, m := range modes {
		require.Equal(t, import_sstpb.SwitchMode_Normal, m, "store %d is back in normal mode", id)
	}
}

// TestWriteChunkBusy: ServerIsBusy is waited out by retrying the ingest
// alone — the same SSTs, not written again — and does not count against
// the attempt budget.
func TestWriteChunkBusy(t *testing.T) {
	ctx := context.Background()
	tgt := startImportTarget(t, ctx, importer.Limits{BusyFiles: 2, BusyWindow: 1500 * time.Millisecond})
	cli := newTargetClient(t, tgt.PDAddr())
	target, err := dialTarget(ctx, []string{tgt.PDAddr()}, connector.TLS{}, hclog.NewNullLogger())
	require.NoError(t, err)
	defer target.Close()
	target.maxAttempts = 2
	now, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	const chunks = 4
	want := map[string]string{}
	for i := 0; i < chunks; i++ {
		c := &chunk{}
		for j := 0; j < 10; j++ {
			k := fmt.Sprintf("b%d/%02d", i, j)
			r := logfile.Row{Key: []byte(k), CommitTS: now - 10, Op: logfile.OpPut, Value: []byte(k)}
			c.add(&r)
			want[k] = k
		}
		require.NoError(t, target.writeChunk(ctx, c, nil), "chunk %d", i)
	}
	st := tgt.ImportStats()
	require.Positive(t, st.Busy, "the stall was met")
	require.EqualValues(t, chunks, st.Ingests)
	require.EqualValues(t, 3*chunks, st.Writes, "each chunk written once to each of 3 peers")
	ts, err := cli.CurrentTimestamp("global")
	require.NoError(t, err)
	requireSame(t, want, scanAt(t, cli, ts), "written")
}

// TestImportModeKeepalive: TiKV leaves import mode by itself after
// import.import-mode-timeout; restore renews it every ImportModeInterval,
// so a restore that outlasts the timeout meets no write stall. Without a
// renewal in time (the second case) the stall is met: the test can fail.
func TestImportModeKeepalive(t *testing.T) {
	ctx := context.Background()
	b, hist, cp := writeBackup(t)
	const timeout = time.Second
	for _, tc := range []struct {
		name     string
		interval time.Duration
		wantBusy bool
	}{
		{name: "renewed", interval: 100 * time.Millisecond},
		{name: "not renewed in time", interval: time.Hour, wantBusy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := startImportTarget(t, ctx, importer.Limits{BusyFiles: 4, BusyWindow: time.Hour, ImportModeTimeout: timeout}, "w100")
			cli := newTargetClient(t, tgt.PDAddr())
			o := Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, ChunkBytes: 4 << 10,
				ImportModeInterval: tc.interval, BusyTimeout: 2 * time.Second,
				ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
			// Every writer pauses after its first ingests until the
			// import-mode timeout has passed three times over.
			var once sync.Once
			var until time.Time
			o.hooks = &hooks{ingested: func(*chunk, []kv) {
				once.Do(func() { until = time.Now().Add(3 * timeout) })
				time.Sleep(time.Until(until))
			}}
			_, err := Run(ctx, o)
			if tc.wantBusy {
				require.Error(t, err)
				require.Contains(t, err.Error(), "too many sst files are ingesting")
				require.Positive(t, tgt.ImportStats().Busy)
				return
			}
			require.NoError(t, err)
			require.Zero(t, tgt.ImportStats().Busy)
			requireSame(t, hist.at(cp), scanAt(t, cli, cp), "restored")
		})
	}
}

// TestImportModeBackToNormal: a restore that fails still switches every
// store back to normal mode.
func TestImportModeBackToNormal(t *testing.T) {
	ctx := context.Background()
	b, _, cp := writeBackup(t)
	tgt := startImportTarget(t, ctx, importer.Limits{BusyFiles: -1}, "w100")
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o := Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, ChunkBytes: 4 << 10,
		ProgressFile: filepath.Join(t.TempDir(), "progress.json")}
	var sawImport atomic.Bool
	o.hooks = &hooks{ingested: func(*chunk, []kv) {
		modes, err := tgt.ImportMode(ctx)
		if err == nil && len(modes) == 3 {
			all := true
			for _, m := range modes {
				all = all && m == import_sstpb.SwitchMode_Import
			}
			sawImport.Store(sawImport.Load() || all)
		}
		cancel() // the restore fails part way
	}}
	_, err := Run(rctx, o)
	require.ErrorIs(t, err, context.Canceled)
	require.True(t, sawImport.Load(), "every store was in import mode while restore wrote")
	modes, err := tgt.ImportMode(ctx)
	require.NoError(t, err)
	for id, m := range modes {
		require.Equal(t, import_sstpb.SwitchMode_Normal, m, "store %d is back in normal mode", id)
	}
}

// TestLeaderOnly: the bench-only LeaderOnly mode runs only against stores
// that carry the playground's label, and the playground accepts its
// ingests only when started to (real TiKV would panic).
func TestLeaderOnly(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stores []*metapb.Store
		ok     bool
	}{
		{name: "playground", ok: true, stores: []*metapb.Store{
			{Id: 1, Labels: []*metapb.StoreLabel{{Key: "pitr-playground", Value: "shared-engine"}}},
			{Id: 2, Labels: []*metapb.StoreLabel{{Key: "zone", Value: "a"}, {Key: "pitr-playground", Value: "shared-engine"}}},
		}},
		{name: "real TiKV", stores: []*metapb.Store{{Id: 1, Address: "tikv-0:20160", Labels: []*metapb.StoreLabel{{Key: "zone", Value: "a"}}}}},
		{name: "one real TiKV among playground stores", stores: []*metapb.Store{
			{Id: 1, Labels: []*metapb.StoreLabel{{Key: "pitr-playground", Value: "shared-engine"}}},
			{Id: 2},
		}},
		{name: "no stores"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := leaderOnlyAllowed(tc.stores)
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrLeaderOnly)
			}
		})
	}
	require.Equal(t, cluster.PlaygroundLabel, playgroundLabel)

	ctx := context.Background()
	b, hist, cp := writeBackup(t)
	t.Run("playground refuses leader-only ingests by default", func(t *testing.T) {
		tgt := startImportTarget(t, ctx, importer.Limits{}, "w100")
		_, err := Run(ctx, Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, LeaderOnly: true, MaxAttempts: 2,
			ProgressFile: filepath.Join(t.TempDir(), "progress.json")})
		require.Error(t, err)
		require.Contains(t, err.Error(), "has no copy of SST")
	})
	t.Run("benchmark playground", func(t *testing.T) {
		tgt := startImportTarget(t, ctx, importer.Limits{LeaderOnlyIngest: true}, "w100")
		cli := newTargetClient(t, tgt.PDAddr())
		_, err := Run(ctx, Options{Source: b.st, PDAddrs: []string{tgt.PDAddr()}, RestoreTS: cp, LeaderOnly: true,
			ProgressFile: filepath.Join(t.TempDir(), "progress.json")})
		require.NoError(t, err)
		requireSame(t, hist.at(cp), scanAt(t, cli, cp), "restored")
	})
}
