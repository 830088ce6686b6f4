package playground

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/pkg/caller"

	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/tikv"
)

// TestGCHonoursServiceSafepoint: while a service safepoint holds ts S, GC
// keeps the version a read at S needs; once it is released, GC collects it,
// as TiKV's GC does, so a backup that fails to hold GC loses data here too.
func TestGCHonoursServiceSafepoint(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1, GCLifeTime: time.Millisecond})
	require.NoError(t, err)
	defer p.Close()
	cli := newClient(t, ctx, p.PDAddr())
	defer cli.Close()

	put(t, ctx, cli, "gc/k", "old")
	s, err := p.PD.TS(ctx)
	require.NoError(t, err)
	put(t, ctx, cli, "gc/k", "new")

	pdc, err := pd.NewClient(caller.Component("playground-gc-test"), []string{p.PDAddr()}, pd.SecurityOption{})
	require.NoError(t, err)
	defer pdc.Close()
	_, err = pdc.UpdateServiceGCSafePoint(ctx, "pitr-test", 3600, s)
	require.NoError(t, err)

	readAtS := func() (string, bool) {
		snap := p.Engine.Snapshot()
		defer snap.Release()
		v, ok, err := snap.Get([]byte("gc/k"), s)
		require.NoError(t, err)
		return string(v), ok
	}

	sp, err := p.RunGC(ctx)
	require.NoError(t, err)
	require.LessOrEqual(t, sp, s, "GC safepoint stays at or below the held service safepoint")
	v, ok := readAtS()
	require.True(t, ok)
	require.Equal(t, "old", v, "the version needed at S survives GC")

	// Release the safepoint: the next GC passes S and collects the old version.
	_, err = pdc.UpdateServiceGCSafePoint(ctx, "pitr-test", 0, 0)
	require.NoError(t, err)
	put(t, ctx, cli, "gc/other", "x") // move time on
	sp, err = p.RunGC(ctx)
	require.NoError(t, err)
	require.Greater(t, sp, s)
	_, ok = readAtS()
	require.False(t, ok, "without the safepoint the old version is collected")
	require.Equal(t, "new", get(t, ctx, cli, "gc/k"), "the newest version is kept")
}

func statusGet(t *testing.T, addr string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/config")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var cfg struct {
		GC map[string]any `json:"gc"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&cfg))
	v, ok := cfg.GC["ratio-threshold"].(float64)
	require.True(t, ok, "gc.ratio-threshold in %v", cfg.GC)
	return v
}

func statusPost(t *testing.T, addr, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/config", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestStatusConfig: each store serves TiKV's status API on the address PD
// reports as its status_address; POST /config takes what TiKV's
// decode_json takes, and a restart resets the change.
func TestStatusConfig(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 2, GCInterval: -1})
	require.NoError(t, err)
	defer p.Close()
	pdc, err := pd.NewClient(caller.Component("playground-gc-test"), []string{p.PDAddr()}, pd.SecurityOption{})
	require.NoError(t, err)
	defer pdc.Close()
	stores, err := pdc.GetAllStores(ctx)
	require.NoError(t, err)
	require.Len(t, stores, 2)
	status := p.StatusAddrs()
	for _, s := range stores {
		require.Equal(t, status[s.GetId()], s.GetStatusAddress(), "store %d", s.GetId())
		require.NotEqual(t, s.GetAddress(), s.GetStatusAddress())
	}
	addr := status[1]
	require.Equal(t, 1.1, statusGet(t, addr), "TiKV's default")

	for _, tc := range []struct {
		name, body string
		code       int
		want       float64
		text       string
	}{
		{name: "string value", body: `{"gc.ratio-threshold": "-1"}`, code: 200, want: -1},
		{name: "number value", body: `{"gc.ratio-threshold": 2.5}`, code: 200, want: 2.5},
		{name: "BR's value", body: `{"gc.ratio-threshold": "-1.0"}`, code: 200, want: -1},
		{name: "nested object", body: `{"gc": {"ratio-threshold": 3}}`, code: 500, want: -1, text: "failed to decode"},
		{name: "array", body: `{"gc.ratio-threshold": [1]}`, code: 500, want: -1, text: "failed to decode"},
		{name: "not json", body: `gc.ratio-threshold=1`, code: 500, want: -1, text: "failed to decode"},
		{name: "not a number", body: `{"gc.ratio-threshold": "x"}`, code: 500, want: -1, text: "failed to update"},
		{name: "unknown item, nothing applied", body: `{"gc.ratio-threshold": "4", "gc.nope": "1"}`, code: 500, want: -1, text: "gc.nope"},
		{name: "inf", body: `{"gc.ratio-threshold": "inf"}`, code: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, text := statusPost(t, addr, tc.body)
			require.Equal(t, tc.code, code, text)
			require.Contains(t, text, tc.text)
			if tc.name == "inf" { // GET shows null, as serde_json writes +inf
				require.False(t, tikvEnabled(p, 1), "+inf disables GC")
				return
			}
			require.Equal(t, tc.want, statusGet(t, addr))
		})
	}

	require.NoError(t, p.StopStore(1))
	require.NoError(t, p.StartStore(1))
	require.Equal(t, addr, p.StatusAddrs()[1], "the store keeps its status address")
	require.Equal(t, 1.1, statusGet(t, addr), "a restart resets the online change")
}

func tikvEnabled(p *Playground, id uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return tikv.GCEnabled(p.stores[id].srv.GCRatioThreshold())
}

// TestGCRatioThreshold: GC collects unless every running store has
// gc.ratio-threshold disabled; a restarted store has GC on again. The GC
// itself is TiKV's: a Delete that is the newest version at or below the
// safepoint goes with everything older, so a Put ingested later below it
// becomes the key's value (why a restore must stop GC, or keep order).
func TestGCRatioThreshold(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 3, GCInterval: -1, GCLifeTime: time.Millisecond})
	require.NoError(t, err)
	defer p.Close()

	ts := func() uint64 {
		v, err := p.PD.TS(ctx)
		require.NoError(t, err)
		return v
	}
	versions := func(key string) int {
		snap := p.Engine.Snapshot()
		defer snap.Release()
		n := 0
		require.NoError(t, snap.DeltaScan([]byte(key), append([]byte(key), 0), 0, func(e mvcc.DeltaEntry) error {
			n += len(e.Writes)
			return nil
		}))
		return n
	}
	t1, t2 := ts(), ts()
	require.NoError(t, p.Engine.Ingest([]mvcc.IngestEntry{{Key: []byte("k"), StartTS: t1 - 1, CommitTS: t2, Delete: true}}))
	gcAfter := func() uint64 { // a GC round whose safepoint is past what was written
		for deadline := time.Now().Add(10 * time.Second); ; {
			sp, err := p.RunGC(ctx)
			require.NoError(t, err)
			if sp > t2 {
				return sp
			}
			require.True(t, time.Now().Before(deadline), "safepoint %d never passed %d", sp, t2)
			time.Sleep(5 * time.Millisecond)
		}
	}

	disable := func(id uint64) {
		code, text := statusPost(t, p.StatusAddrs()[id], `{"gc.ratio-threshold": "-1"}`)
		require.Equal(t, 200, code, text)
	}
	disable(1)
	disable(2)
	require.True(t, p.GCEnabled(), "store 3 still collects its copy")
	disable(3)
	require.False(t, p.GCEnabled())
	gcAfter()
	require.Equal(t, 1, versions("k"), "GC is off on every store: the Delete stays")

	require.NoError(t, p.StopStore(3))
	require.False(t, p.GCEnabled())
	require.NoError(t, p.StartStore(3))
	require.True(t, p.GCEnabled(), "a restarted store has the default threshold: GC is on again")
	gcAfter()
	require.Equal(t, 0, versions("k"), "a Delete below the safepoint is removed")

	// The Put under the removed Delete arrives later: the key comes back.
	require.NoError(t, p.Engine.Ingest([]mvcc.IngestEntry{{Key: []byte("k"), StartTS: t1 - 2, CommitTS: t1, Value: []byte("v1")}}))
	snap := p.Engine.Snapshot()
	v, ok, err := snap.Get([]byte("k"), ts())
	snap.Release()
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "v1", string(v))
}

// TestGCLoopRunsByDefault: with no GCInterval the loop runs on its own.
func TestGCLoopRunsByDefault(t *testing.T) {
	ctx := context.Background()
	p, err := Start(ctx, Config{Stores: 1, GCInterval: 20 * time.Millisecond, GCLifeTime: time.Millisecond})
	require.NoError(t, err)
	defer p.Close()
	var def Config
	def.setDefaults()
	require.Equal(t, DefaultGCInterval, def.GCInterval)
	before, err := p.PD.TS(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Engine.Ingest([]mvcc.IngestEntry{{Key: []byte("d"), StartTS: before - 1, CommitTS: before, Delete: true}}))
	for deadline := time.Now().Add(20 * time.Second); ; {
		snap := p.Engine.Snapshot()
		n := 0
		require.NoError(t, snap.DeltaScan([]byte("d"), []byte("e"), 0, func(e mvcc.DeltaEntry) error { n += len(e.Writes); return nil }))
		snap.Release()
		if n == 0 {
			return
		}
		require.True(t, time.Now().Before(deadline), "the GC loop never removed the Delete")
		time.Sleep(20 * time.Millisecond)
	}
}
