package agent

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/tikv/client-go/v2/txnkv"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
)

// DefaultBackupConcurrency bounds the snapshot ranges an agent scans at
// once.
const DefaultBackupConcurrency = 2

// BackupRange scans one range of a snapshot backup from beside the store
// (snapshot.ScanRange) and stores its files with this agent's storage
// credentials. The backup command sends each range to the agent of the
// store leading it, so the data goes from the store to storage without
// passing through the command, and every store's agent works at once. The
// scan reads through client-go: if the leader moves away mid-scan, the
// read follows it.
func (s *service) BackupRange(ctx context.Context, req *pitrpb.BackupRangeRequest) (*pitrpb.BackupRangeResponse, error) {
	a := s.a
	if req.GetBackupTs() == 0 || req.GetStorageUrl() == "" || req.GetRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "backup range: backup_ts, storage_url and range are required")
	}
	select {
	case a.backupSem <- struct{}{}:
		defer func() { <-a.backupSem }()
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	resp, err := a.backupRange(ctx, req)
	if err != nil {
		a.met.backupRanges.WithLabelValues("error").Inc()
		a.log.Warn("snapshot range failed", "range", rangeOf(req).String(), "backup_ts", req.GetBackupTs(), "error", err)
		return nil, rpcErr(err)
	}
	a.met.backupRanges.WithLabelValues("ok").Inc()
	return resp, nil
}

func rangeOf(req *pitrpb.BackupRangeRequest) keyspace.Range {
	return keyspace.Range{Start: req.GetRange().GetStartKey(), End: req.GetRange().GetEndKey()}
}

func (a *Agent) backupRange(ctx context.Context, req *pitrpb.BackupRangeRequest) (*pitrpb.BackupRangeResponse, error) {
	kv, err := a.backupKV(ctx)
	if err != nil {
		return nil, err
	}
	// One bucket for every range the agent scans at once: the limit is
	// per agent, as the backup command documents it.
	a.kvMu.Lock()
	if a.backupLimit == nil {
		a.backupLimit = storage.NewSharedLimit(req.GetRateLimit())
	} else if a.backupLimit.Limit() != req.GetRateLimit() {
		a.backupLimit.SetLimit(req.GetRateLimit())
	}
	limit := a.backupLimit
	a.kvMu.Unlock()
	st, err := storage.OpenStack(ctx, req.GetStorageUrl(), storage.StackOptions{
		Logger: a.log, Metrics: a.storMet, SharedLimit: limit,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	defer st.Close()
	var scanned atomic.Int64
	res, err := snapshot.ScanRange(ctx, kv.KVStore, st, snapshot.ScanOptions{
		Root: req.GetRoot(), BackupTS: req.GetBackupTs(), Range: rangeOf(req), FileTarget: req.GetFileTarget(), Scanned: &scanned,
	})
	a.met.backupBytes.Add(float64(scanned.Load()))
	if err != nil {
		return nil, err
	}
	a.log.Info("snapshot range stored", "range", rangeOf(req).String(), "backup_ts", req.GetBackupTs(), "files", len(res.Files), "rows", res.Rows, "bytes", res.LogicalBytes)
	return &pitrpb.BackupRangeResponse{Files: res.Files, StoreId: a.storeID, Checksum: &pitrpb.RangeChecksum{
		Range: req.GetRange(), Crc64Xor: res.Sum.Crc64Xor, TotalKvs: res.Sum.TotalKvs, TotalBytes: res.Sum.TotalBytes,
	}}, nil
}

// backupKV is the client-go client of snapshot scans, made on the first
// one and kept until Close.
func (a *Agent) backupKV(ctx context.Context) (*txnkv.Client, error) {
	a.kvMu.Lock()
	defer a.kvMu.Unlock()
	if a.kv != nil {
		return a.kv, nil
	}
	kv, err := connector.KV(ctx, connector.Config{PDAddrs: a.cfg.PDAddrs, TLS: a.cfg.TLS, Component: "pitr-agent-backup"})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotReady, err)
	}
	a.kv = kv
	return kv, nil
}
