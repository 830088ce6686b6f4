package tikv

import (
	"bytes"
	"context"
	"fmt"

	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// errorpbError keeps signatures short.
type errorpbError = *errorpb.Error

// The unary RPCs delegate to the handlers below, which BatchCommands shares.

func (s *Server) KvGet(_ context.Context, req *kvrpcpb.GetRequest) (*kvrpcpb.GetResponse, error) {
	return s.kvGet(req), nil
}

func (s *Server) KvScan(_ context.Context, req *kvrpcpb.ScanRequest) (*kvrpcpb.ScanResponse, error) {
	return s.kvScan(req), nil
}

func (s *Server) KvBatchGet(_ context.Context, req *kvrpcpb.BatchGetRequest) (*kvrpcpb.BatchGetResponse, error) {
	return s.kvBatchGet(req), nil
}

func (s *Server) KvPrewrite(_ context.Context, req *kvrpcpb.PrewriteRequest) (*kvrpcpb.PrewriteResponse, error) {
	return s.kvPrewrite(req), nil
}

func (s *Server) KvCommit(_ context.Context, req *kvrpcpb.CommitRequest) (*kvrpcpb.CommitResponse, error) {
	return s.kvCommit(req), nil
}

func (s *Server) KvCleanup(_ context.Context, req *kvrpcpb.CleanupRequest) (*kvrpcpb.CleanupResponse, error) {
	return s.kvCleanup(req), nil
}

func (s *Server) KvBatchRollback(_ context.Context, req *kvrpcpb.BatchRollbackRequest) (*kvrpcpb.BatchRollbackResponse, error) {
	return s.kvBatchRollback(req), nil
}

func (s *Server) KvCheckTxnStatus(_ context.Context, req *kvrpcpb.CheckTxnStatusRequest) (*kvrpcpb.CheckTxnStatusResponse, error) {
	return s.kvCheckTxnStatus(req), nil
}

func (s *Server) KvResolveLock(_ context.Context, req *kvrpcpb.ResolveLockRequest) (*kvrpcpb.ResolveLockResponse, error) {
	return s.kvResolveLock(req), nil
}

func (s *Server) KvScanLock(_ context.Context, req *kvrpcpb.ScanLockRequest) (*kvrpcpb.ScanLockResponse, error) {
	return s.kvScanLock(req), nil
}

func (s *Server) KvTxnHeartBeat(_ context.Context, req *kvrpcpb.TxnHeartBeatRequest) (*kvrpcpb.TxnHeartBeatResponse, error) {
	return s.kvTxnHeartBeat(req), nil
}

func (s *Server) KvCheckSecondaryLocks(_ context.Context, req *kvrpcpb.CheckSecondaryLocksRequest) (*kvrpcpb.CheckSecondaryLocksResponse, error) {
	return s.kvCheckSecondaryLocks(req), nil
}

func (s *Server) kvGet(req *kvrpcpb.GetRequest) *kvrpcpb.GetResponse {
	resp := &kvrpcpb.GetResponse{}
	rerr, err := s.apply(req.GetContext(), [][]byte{req.Key}, func(*cluster.Region) error {
		v, found, err := s.cfg.Engine.Get(req.Key, req.Version, readOptions(req.GetContext()))
		resp.Value, resp.NotFound = v, !found
		return err
	})
	if rerr != nil {
		return &kvrpcpb.GetResponse{RegionError: rerr}
	}
	resp.RegionError, resp.Error = splitErr(err)
	if resp.Error != nil || resp.RegionError != nil {
		resp.Value, resp.NotFound = nil, false
	}
	return resp
}

func pairs(ps []mvcc.KvPair) []*kvrpcpb.KvPair {
	out := make([]*kvrpcpb.KvPair, 0, len(ps))
	for _, p := range ps {
		kp := &kvrpcpb.KvPair{Key: p.Key, Value: p.Value}
		if p.Err != nil {
			kp.Value = nil
			kp.Error = &kvrpcpb.KeyError{Locked: lockInfo(p.Err.Lock)}
		}
		out = append(out, kp)
	}
	return out
}

func (s *Server) kvBatchGet(req *kvrpcpb.BatchGetRequest) *kvrpcpb.BatchGetResponse {
	resp := &kvrpcpb.BatchGetResponse{}
	rerr, err := s.apply(req.GetContext(), req.Keys, func(*cluster.Region) error {
		ps, err := s.cfg.Engine.BatchGet(req.Keys, req.Version, readOptions(req.GetContext()))
		resp.Pairs = pairs(ps)
		return err
	})
	if rerr != nil {
		return &kvrpcpb.BatchGetResponse{RegionError: rerr}
	}
	if err != nil {
		resp.Pairs = nil
		resp.RegionError, resp.Error = splitErr(err)
	}
	return resp
}

// clip intersects [lo, hi) (nil hi = +inf) with the region's raw range.
func clip(r *cluster.Region, lo, hi []byte) ([]byte, []byte) {
	rs, re := r.RawRange()
	if bytes.Compare(rs, lo) > 0 {
		lo = rs
	}
	if re != nil && (hi == nil || bytes.Compare(re, hi) < 0) {
		hi = re
	}
	return lo, hi
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func (s *Server) kvScan(req *kvrpcpb.ScanRequest) *kvrpcpb.ScanResponse {
	resp := &kvrpcpb.ScanResponse{}
	var check [][]byte
	if !req.Reverse {
		// Seeking outside the region is KeyNotInRegion, as in RegionSnapshot.
		check = [][]byte{req.StartKey}
	}
	rerr, err := s.apply(req.GetContext(), check, func(r *cluster.Region) error {
		a := mvcc.ScanArgs{Limit: int(req.Limit), TS: req.Version, KeyOnly: req.KeyOnly, Reverse: req.Reverse, Opt: readOptions(req.GetContext())}
		if req.Reverse {
			// start_key is the exclusive upper bound, end_key the lower.
			a.Lower, a.Upper = clip(r, req.EndKey, nilIfEmpty(req.StartKey))
		} else {
			a.Lower, a.Upper = clip(r, req.StartKey, nilIfEmpty(req.EndKey))
		}
		ps, err := s.cfg.Engine.Scan(a)
		resp.Pairs = pairs(ps)
		return err
	})
	if rerr != nil {
		return &kvrpcpb.ScanResponse{RegionError: rerr}
	}
	if err != nil {
		resp.Pairs = nil
		resp.RegionError, resp.Error = splitErr(err)
	}
	return resp
}

func mutationOp(op kvrpcpb.Op) (mvcc.MutationOp, error) {
	switch op {
	case kvrpcpb.Op_Put:
		return mvcc.OpPut, nil
	case kvrpcpb.Op_Del:
		return mvcc.OpDelete, nil
	case kvrpcpb.Op_Lock:
		return mvcc.OpLock, nil
	case kvrpcpb.Op_Insert:
		return mvcc.OpInsert, nil
	case kvrpcpb.Op_CheckNotExists:
		return mvcc.OpCheckNotExists, nil
	}
	return 0, fmt.Errorf("unsupported mutation op %v in prewrite", op)
}

func (s *Server) kvPrewrite(req *kvrpcpb.PrewriteRequest) *kvrpcpb.PrewriteResponse {
	resp := &kvrpcpb.PrewriteResponse{}
	keys := make([][]byte, len(req.Mutations))
	for i, m := range req.Mutations {
		keys[i] = m.Key
	}
	rerr, err := s.apply(req.GetContext(), keys, func(*cluster.Region) error {
		a := mvcc.PrewriteArgs{
			Mutations:           make([]mvcc.Mutation, len(req.Mutations)),
			Primary:             req.PrimaryLock,
			StartTS:             req.StartVersion,
			LockTTL:             req.LockTtl,
			TxnSize:             req.TxnSize,
			ForUpdateTS:         req.ForUpdateTs,
			MinCommitTS:         req.MinCommitTs,
			MaxCommitTS:         req.MaxCommitTs,
			SkipConstraintCheck: req.SkipConstraintCheck,
			UseAsyncCommit:      req.UseAsyncCommit,
			Secondaries:         req.Secondaries,
			TryOnePC:            req.TryOnePc,
			TxnSource:           req.GetContext().GetTxnSource(),
		}
		for i, m := range req.Mutations {
			op, err := mutationOp(m.Op)
			if err != nil {
				return err
			}
			a.Mutations[i] = mvcc.Mutation{Op: op, Key: m.Key, Value: m.Value}
		}
		res, err := s.cfg.Engine.Prewrite(a)
		if err != nil {
			return err
		}
		for _, l := range res.Locked {
			resp.Errors = append(resp.Errors, &kvrpcpb.KeyError{Locked: lockInfo(l.Lock)})
		}
		resp.MinCommitTs, resp.OnePcCommitTs = res.MinCommitTS, res.OnePCCommitTS
		return nil
	})
	if rerr != nil {
		return &kvrpcpb.PrewriteResponse{RegionError: rerr}
	}
	if err != nil {
		var ke *kvrpcpb.KeyError
		resp = &kvrpcpb.PrewriteResponse{}
		resp.RegionError, ke = splitErr(err)
		if ke != nil {
			resp.Errors = []*kvrpcpb.KeyError{ke}
		}
	}
	return resp
}

func (s *Server) kvCommit(req *kvrpcpb.CommitRequest) *kvrpcpb.CommitResponse {
	rerr, err := s.apply(req.GetContext(), req.Keys, func(*cluster.Region) error {
		return s.cfg.Engine.Commit(req.Keys, req.StartVersion, req.CommitVersion)
	})
	if rerr != nil {
		return &kvrpcpb.CommitResponse{RegionError: rerr}
	}
	resp := &kvrpcpb.CommitResponse{}
	resp.RegionError, resp.Error = splitErr(err)
	return resp
}

func (s *Server) kvCleanup(req *kvrpcpb.CleanupRequest) *kvrpcpb.CleanupResponse {
	rerr, err := s.apply(req.GetContext(), [][]byte{req.Key}, func(*cluster.Region) error {
		return s.cfg.Engine.Cleanup(req.Key, req.StartVersion, req.CurrentTs)
	})
	if rerr != nil {
		return &kvrpcpb.CleanupResponse{RegionError: rerr}
	}
	resp := &kvrpcpb.CleanupResponse{}
	if ce, ok := err.(*mvcc.CommittedError); ok {
		resp.CommitVersion = ce.CommitTS
		return resp
	}
	resp.RegionError, resp.Error = splitErr(err)
	return resp
}

func (s *Server) kvBatchRollback(req *kvrpcpb.BatchRollbackRequest) *kvrpcpb.BatchRollbackResponse {
	rerr, err := s.apply(req.GetContext(), req.Keys, func(*cluster.Region) error {
		return s.cfg.Engine.BatchRollback(req.Keys, req.StartVersion)
	})
	if rerr != nil {
		return &kvrpcpb.BatchRollbackResponse{RegionError: rerr}
	}
	resp := &kvrpcpb.BatchRollbackResponse{}
	resp.RegionError, resp.Error = splitErr(err)
	return resp
}

func (s *Server) kvCheckTxnStatus(req *kvrpcpb.CheckTxnStatusRequest) *kvrpcpb.CheckTxnStatusResponse {
	resp := &kvrpcpb.CheckTxnStatusResponse{}
	rerr, err := s.apply(req.GetContext(), [][]byte{req.PrimaryKey}, func(*cluster.Region) error {
		st, err := s.cfg.Engine.CheckTxnStatus(mvcc.CheckTxnStatusArgs{
			Primary:                  req.PrimaryKey,
			LockTS:                   req.LockTs,
			CallerStartTS:            req.CallerStartTs,
			CurrentTS:                req.CurrentTs,
			RollbackIfNotExist:       req.RollbackIfNotExist,
			ForceSyncCommit:          req.ForceSyncCommit,
			ResolvingPessimisticLock: req.ResolvingPessimisticLock,
			VerifyIsPrimary:          req.VerifyIsPrimary,
		})
		if err != nil {
			return err
		}
		resp.Action = kvrpcpb.Action(st.Action)
		resp.LockTtl = st.LockTTL
		resp.CommitVersion = st.CommitTS
		if st.Lock != nil {
			resp.LockInfo = lockInfo(st.Lock)
		}
		return nil
	})
	if rerr != nil {
		return &kvrpcpb.CheckTxnStatusResponse{RegionError: rerr}
	}
	if err != nil {
		resp = &kvrpcpb.CheckTxnStatusResponse{}
		resp.RegionError, resp.Error = splitErr(err)
	}
	return resp
}

func (s *Server) kvResolveLock(req *kvrpcpb.ResolveLockRequest) *kvrpcpb.ResolveLockResponse {
	txns := map[uint64]uint64{}
	if len(req.TxnInfos) > 0 {
		for _, ti := range req.TxnInfos {
			txns[ti.Txn] = ti.Status
		}
	} else {
		txns[req.StartVersion] = req.CommitVersion
	}
	rerr, err := s.apply(req.GetContext(), req.Keys, func(r *cluster.Region) error {
		if len(req.Keys) > 0 {
			return s.cfg.Engine.ResolveLock(nil, nil, txns, req.Keys)
		}
		lo, hi := r.RawRange()
		return s.cfg.Engine.ResolveLock(lo, hi, txns, nil)
	})
	if rerr != nil {
		return &kvrpcpb.ResolveLockResponse{RegionError: rerr}
	}
	resp := &kvrpcpb.ResolveLockResponse{}
	resp.RegionError, resp.Error = splitErr(err)
	return resp
}

func (s *Server) kvScanLock(req *kvrpcpb.ScanLockRequest) *kvrpcpb.ScanLockResponse {
	resp := &kvrpcpb.ScanLockResponse{}
	rerr, err := s.apply(req.GetContext(), nil, func(r *cluster.Region) error {
		lo, hi := clip(r, req.StartKey, nilIfEmpty(req.EndKey))
		locks, err := s.cfg.Engine.ScanLock(lo, hi, req.MaxVersion, int(req.Limit))
		for _, l := range locks {
			resp.Locks = append(resp.Locks, lockInfo(l))
		}
		return err
	})
	if rerr != nil {
		return &kvrpcpb.ScanLockResponse{RegionError: rerr}
	}
	if err != nil {
		resp = &kvrpcpb.ScanLockResponse{}
		resp.RegionError, resp.Error = splitErr(err)
	}
	return resp
}

func (s *Server) kvTxnHeartBeat(req *kvrpcpb.TxnHeartBeatRequest) *kvrpcpb.TxnHeartBeatResponse {
	resp := &kvrpcpb.TxnHeartBeatResponse{}
	rerr, err := s.apply(req.GetContext(), [][]byte{req.PrimaryLock}, func(*cluster.Region) error {
		ttl, err := s.cfg.Engine.TxnHeartBeat(req.PrimaryLock, req.StartVersion, req.AdviseLockTtl)
		resp.LockTtl = ttl
		return err
	})
	if rerr != nil {
		return &kvrpcpb.TxnHeartBeatResponse{RegionError: rerr}
	}
	if err != nil {
		resp = &kvrpcpb.TxnHeartBeatResponse{}
		resp.RegionError, resp.Error = splitErr(err)
	}
	return resp
}

func (s *Server) kvCheckSecondaryLocks(req *kvrpcpb.CheckSecondaryLocksRequest) *kvrpcpb.CheckSecondaryLocksResponse {
	resp := &kvrpcpb.CheckSecondaryLocksResponse{}
	rerr, err := s.apply(req.GetContext(), req.Keys, func(*cluster.Region) error {
		locks, cts, err := s.cfg.Engine.CheckSecondaryLocks(req.Keys, req.StartVersion)
		for _, l := range locks {
			resp.Locks = append(resp.Locks, lockInfo(l))
		}
		resp.CommitTs = cts
		return err
	})
	if rerr != nil {
		return &kvrpcpb.CheckSecondaryLocksResponse{RegionError: rerr}
	}
	if err != nil {
		resp = &kvrpcpb.CheckSecondaryLocksResponse{}
		resp.RegionError, resp.Error = splitErr(err)
	}
	return resp
}
