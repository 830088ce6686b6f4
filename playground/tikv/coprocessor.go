package tikv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/pingcap/kvproto/pkg/coprocessor"
	"google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/proto/tipb"
)

// ReqTypeChecksum is the coprocessor request type of a checksum, TiKV's
// REQ_TYPE_CHECKSUM (src/coprocessor/mod.rs). It is the only type the
// playground serves.
const ReqTypeChecksum = 105

// Coprocessor serves the unary coprocessor RPC; BatchCommands shares the
// handler.
func (s *Server) Coprocessor(_ context.Context, req *coprocessor.Request) (*coprocessor.Response, error) {
	return s.coprocessor(req), nil
}

// coprocessor answers a coprocessor request as TiKV's endpoint does
// (src/coprocessor/endpoint.rs parse_request, then the handler; errors
// shaped by make_error_response): a request it cannot parse or whose tp it
// does not know is other_error "unsupported tp N"; then the region check
// (region_error); then the checksum, whose scan failing on a lock is
// locked and whose other failures are other_error.
func (s *Server) coprocessor(req *coprocessor.Request) *coprocessor.Response {
	if req.Tp != ReqTypeChecksum {
		return &coprocessor.Response{OtherError: fmt.Sprintf("unsupported tp %d", req.Tp)}
	}
	var creq tipb.ChecksumRequest
	if err := proto.Unmarshal(req.Data, &creq); err != nil {
		return &coprocessor.Response{OtherError: fmt.Sprintf("decode checksum request: %v", err)}
	}
	startTS := req.StartTs
	if startTS == 0 {
		startTS = creq.GetStartTsFallback()
	}
	// The scanner's first seek is to each range's start, and a region
	// snapshot refuses a seek outside its region (components/raftstore/src/
	// store/region_snapshot.rs should_seekable: KeyNotInRegion); its
	// iterator bounds are the region's, so an end past the region is
	// clipped (update_upper_bound).
	starts := make([][]byte, 0, len(req.Ranges))
	for _, r := range req.Ranges {
		starts = append(starts, r.Start)
	}
	var resp *coprocessor.Response
	rerr, err := s.apply(req.GetContext(), starts, func(r *cluster.Region) error {
		sum, err := s.checksum(r, &creq, req.Ranges, startTS, readOptions(req.GetContext()))
		if err != nil {
			return err
		}
		data, err := proto.Marshal(&tipb.ChecksumResponse{
			Checksum:   proto.Uint64(sum.Crc64Xor),
			TotalKvs:   proto.Uint64(sum.TotalKvs),
			TotalBytes: proto.Uint64(sum.TotalBytes),
		})
		if err != nil {
			return fmt.Errorf("encode checksum response: %w", err)
		}
		resp = &coprocessor.Response{Data: data}
		return nil
	})
	if rerr != nil {
		return &coprocessor.Response{RegionError: rerr}
	}
	var locked *mvcc.KeyIsLockedError
	switch {
	case err == nil:
		return resp
	case errors.As(err, &locked):
		return &coprocessor.Response{Locked: lockInfo(locked.Lock)}
	case errors.Is(err, mvcc.ErrClosed):
		return &coprocessor.Response{RegionError: closingError()}
	}
	return &coprocessor.Response{OtherError: err.Error()}
}

// checksum is TiKV's ChecksumContext::handle_request (src/coprocessor/
// checksum.rs): every key visible at ts in the ranges (clipped to the
// region), crc64-xor of key and value; with a rewrite rule, keys must start
// with new_prefix and are summed as if they started with old_prefix.
func (s *Server) checksum(r *cluster.Region, req *tipb.ChecksumRequest, ranges []*coprocessor.KeyRange, ts uint64, opt mvcc.ReadOptions) (checksum.Sum, error) {
	var sum checksum.Sum
	if req.GetAlgorithm() != tipb.ChecksumAlgorithm_Crc64_Xor {
		return sum, fmt.Errorf("unknown checksum algorithm %v", req.GetAlgorithm())
	}
	oldPrefix, newPrefix := req.GetRule().GetOldPrefix(), req.GetRule().GetNewPrefix()
	for _, kr := range ranges {
		// TiKV bounds the scan by Key::from_raw(end) (src/coprocessor/dag/
		// storage_impl.rs begin_scan): an empty end is the encoded empty
		// key, below every other key, so the range holds nothing.
		if len(kr.End) == 0 {
			continue
		}
		lo, hi := clip(r, kr.Start, kr.End)
		// The region's snapshot holds every version of its keys, and the
		// engine reads them under the cluster's apply lock, so one scan
		// of the whole range is the region's consistent view.
		ps, err := s.cfg.Engine.Scan(mvcc.ScanArgs{Lower: lo, Upper: hi, Limit: math.MaxInt, TS: ts, Opt: opt})
		if err != nil {
			return sum, err
		}
		for _, p := range ps {
			if p.Err != nil {
				return sum, p.Err
			}
			if !bytes.HasPrefix(p.Key, newPrefix) {
				return sum, fmt.Errorf("wrong prefix, expect %x", newPrefix)
			}
			key := p.Key
			if len(oldPrefix) > 0 || len(newPrefix) > 0 {
				key = append(append([]byte{}, oldPrefix...), p.Key[len(newPrefix):]...)
			}
			sum.Add(key, p.Value)
		}
	}
	return sum, nil
}
