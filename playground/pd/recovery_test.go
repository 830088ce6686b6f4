package pd

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/pdpb"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground/cluster"
)

func pdHTTP(t *testing.T, s *Server, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL()+APIPrefix+path, strings.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

const markerPath = "admin/cluster/markers/snapshot-recovering"

func marked(t *testing.T, s *Server) bool {
	t.Helper()
	code, body := pdHTTP(t, s, http.MethodGet, markerPath, "")
	require.Equal(t, http.StatusOK, code, body)
	var out map[string]bool
	require.NoError(t, json.Unmarshal([]byte(body), &out))
	v, ok := out["marked"]
	require.True(t, ok, "GET answers {\"marked\": bool}: %s", body)
	return v
}

func grpcMarked(t *testing.T, s *Server) bool {
	t.Helper()
	resp, err := rawPD(t, s).IsSnapshotRecovering(ctxT(t), &pdpb.IsSnapshotRecoveringRequest{Header: &pdpb.RequestHeader{ClusterId: s.ClusterID()}})
	require.NoError(t, err)
	require.Nil(t, resp.GetHeader().GetError())
	return resp.GetMarked()
}

// TestSnapshotRecoveringMarker: the marker over HTTP and pdpb, kept in
// etcd across a restart.
func TestSnapshotRecoveringMarker(t *testing.T) {
	c, err := cluster.Open("", testClusterID, 3)
	require.NoError(t, err)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{Dir: dir, Cluster: c})
	require.NoError(t, err)
	require.False(t, marked(t, s))
	require.False(t, grpcMarked(t, s))
	code, body := pdHTTP(t, s, http.MethodPost, markerPath, "")
	require.Equal(t, http.StatusOK, code, body)
	require.True(t, marked(t, s))
	require.True(t, grpcMarked(t, s))

	addr := s.Addr()
	require.NoError(t, s.Close())
	s, err = Start(ctx, Config{Dir: dir, Cluster: c, ClientAddr: addr})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	require.True(t, marked(t, s), "the marker survives a restart")
	require.True(t, grpcMarked(t, s))

	code, body = pdHTTP(t, s, http.MethodDelete, markerPath, "")
	require.Equal(t, http.StatusOK, code, body)
	require.False(t, marked(t, s))
	require.False(t, grpcMarked(t, s))
}

// TestBaseAllocID: only while marked, never below the current id, and
// AllocID continues above it.
func TestBaseAllocID(t *testing.T) {
	c, err := cluster.Open("", testClusterID, 3)
	require.NoError(t, err)
	s := startPD(t, c, "")
	code, body := pdHTTP(t, s, http.MethodPost, "admin/base-alloc-id", `{"id": "1000"}`)
	require.Equal(t, http.StatusForbidden, code, "not marked: %s", body)
	code, _ = pdHTTP(t, s, http.MethodPost, markerPath, "")
	require.Equal(t, http.StatusOK, code)
	code, body = pdHTTP(t, s, http.MethodPost, "admin/base-alloc-id", `{"id": 1000}`)
	require.Equal(t, http.StatusBadRequest, code, "the id is a string: %s", body)
	code, body = pdHTTP(t, s, http.MethodPost, "admin/base-alloc-id", `{"id": "1000"}`)
	require.Equal(t, http.StatusOK, code, body)
	id, err := c.AllocID()
	require.NoError(t, err)
	require.EqualValues(t, 1001, id)
	code, body = pdHTTP(t, s, http.MethodPost, "admin/base-alloc-id", `{"id": "900"}`)
	require.Equal(t, http.StatusInternalServerError, code, "below the current id: %s", body)
	id, err = c.AllocID()
	require.NoError(t, err)
	require.EqualValues(t, 1002, id, "a refused base id changes nothing")
}

// TestMinResolvedTS: the minimum over the up stores, 0 until each
// reported, never backwards; the body as PD shapes it.
func TestMinResolvedTS(t *testing.T) {
	c, err := cluster.Open("", testClusterID, 2)
	require.NoError(t, err)
	s := startPD(t, c, "")
	get := func() map[string]any {
		code, body := pdHTTP(t, s, http.MethodGet, "min-resolved-ts", "")
		require.Equal(t, http.StatusOK, code, body)
		var out map[string]any
		require.NoError(t, json.Unmarshal([]byte(body), &out))
		return out
	}
	out := get()
	require.Equal(t, map[string]any{"is_real_time": true, "min_resolved_ts": float64(0), "persist_interval": "1s"}, out)
	s.ReportMinResolvedTS(1, 100)
	require.EqualValues(t, 0, get()["min_resolved_ts"], "store 2 has not reported")
	_, err = rawPD(t, s).ReportMinResolvedTS(ctxT(t), &pdpb.ReportMinResolvedTsRequest{Header: &pdpb.RequestHeader{ClusterId: s.ClusterID()}, StoreId: 2, MinResolvedTs: 80})
	require.NoError(t, err)
	require.EqualValues(t, 80, get()["min_resolved_ts"])
	s.ReportMinResolvedTS(2, 200)
	require.EqualValues(t, 100, get()["min_resolved_ts"])
	s.ReportMinResolvedTS(1, 50)
	require.EqualValues(t, 100, get()["min_resolved_ts"], "a store's report never moves back")
}

// TestResetTS: the next TSO is above the ts; below the current one is refused.
func TestResetTS(t *testing.T) {
	s := startPD(t, nil, "")
	now, err := s.TS(ctxT(t))
	require.NoError(t, err)
	code, body := pdHTTP(t, s, http.MethodPost, "admin/reset-ts", `{"tso": "1"}`)
	require.Equal(t, http.StatusForbidden, code, body)
	target := ComposeTS(ExtractPhysical(now)+60_000, 5)
	code, body = pdHTTP(t, s, http.MethodPost, "admin/reset-ts", `{"tso": "`+itoa(target)+`"}`)
	require.Equal(t, http.StatusOK, code, body)
	next, err := s.TS(ctxT(t))
	require.NoError(t, err)
	require.Greater(t, next, target)
}

func itoa(v uint64) string {
	b, _ := json.Marshal(v)
	return string(b)
}
