package checksum

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/pingcap/kvproto/pkg/coprocessor"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/txnkv/txnlock"
	"google.golang.org/protobuf/proto"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/proto/tipb"
)

// reqTypeChecksum is TiKV's REQ_TYPE_CHECKSUM (src/coprocessor/mod.rs).
const reqTypeChecksum = 105

// regionMaxBackoffMs bounds the sleep spent on one region's part of a
// range (region errors, locks not yet expired): client-go's copNextMaxBackoff.
const regionMaxBackoffMs = 20000

// UnboundedEnd is the end Cluster sends for a range without one. TiKV bounds
// a checksum scan by Key::from_raw(end) (src/coprocessor/dag/storage_impl.rs
// begin_scan), so an empty end scans nothing rather than to +inf; no end
// means +inf nowhere in the coprocessor. Keys sorting at or after
// UnboundedEnd (256 bytes of 0xff) are therefore outside every checksum,
// the cluster's and the local ones alike: a local summer of a range r
// checksums only the keys for which InBounds(r, key) holds. Do not modify.
var UnboundedEnd = bytes.Repeat([]byte{0xff}, 256)

// Bounded returns r with an empty End replaced by UnboundedEnd: the range a
// checksum of r covers.
func Bounded(r keyspace.Range) keyspace.Range {
	if len(r.End) == 0 {
		r.End = UnboundedEnd
	}
	return r
}

// InBounds reports whether key counts in a checksum of r, that is whether it
// lies in Bounded(r). A local summer (a backup's, a restore's) adds a key
// only when InBounds holds, so that its Sum compares with Cluster's.
func InBounds(r keyspace.Range, key []byte) bool { return Bounded(r).Contains(key) }

// Cluster asks a TiKV cluster for the checksum of the keys of Bounded(r)
// visible at ts, with the coprocessor checksum request (tp 105, algorithm
// Crc64_Xor), one request per region, as BR's checksum does. A region error
// re-locates that part and retries it; a lock with start_ts ≤ ts is
// resolved (ResolveLocks at ts) and the part retried; both are bounded by
// a backoff per region. An other_error fails the whole call, naming the
// part.
func Cluster(ctx context.Context, store *tikv.KVStore, r keyspace.Range, ts uint64) (Sum, error) {
	r = Bounded(r)
	var total Sum
	for key := r.Start; bytes.Compare(key, r.End) < 0; {
		bo := tikv.NewBackofferWithVars(ctx, regionMaxBackoffMs, nil)
		sum, end, err := regionChecksum(bo, store, key, r.End, ts)
		if err != nil {
			return Sum{}, fmt.Errorf("checksum %v at %d: %w", keyspace.Range{Start: key, End: r.End}, ts, err)
		}
		total.Merge(sum)
		key = end
	}
	return total, nil
}

// regionChecksum checksums [start, end) ∩ the region holding start, and
// returns where that part ends.
func regionChecksum(bo *tikv.Backoffer, store *tikv.KVStore, start, end []byte, ts uint64) (Sum, []byte, error) {
	data, err := proto.Marshal(&tipb.ChecksumRequest{
		ScanOn:    tipb.ChecksumScanOn_Table.Enum(),
		Algorithm: tipb.ChecksumAlgorithm_Crc64_Xor.Enum(),
	})
	if err != nil {
		return Sum{}, nil, fmt.Errorf("encode checksum request: %w", err)
	}
	cache := store.GetRegionCache()
	for {
		loc, err := cache.LocateKey(bo, start)
		if err != nil {
			return Sum{}, nil, fmt.Errorf("locate region: %w", err)
		}
		partEnd := end
		if len(loc.EndKey) > 0 && bytes.Compare(loc.EndKey, end) < 0 {
			partEnd = loc.EndKey
		}
		part := keyspace.Range{Start: start, End: partEnd}
		req := tikvrpc.NewRequest(tikvrpc.CmdCop, &coprocessor.Request{
			Tp:      reqTypeChecksum,
			Data:    data,
			Ranges:  []*coprocessor.KeyRange{{Start: part.Start, End: part.End}},
			StartTs: ts,
		})
		resp, err := store.SendReq(bo, req, loc.Region, tikv.ReadTimeoutMedium)
		if err != nil {
			return Sum{}, nil, fmt.Errorf("send to region %d for %v: %w", loc.Region.GetID(), part, err)
		}
		regionErr, err := resp.GetRegionError()
		if err != nil {
			return Sum{}, nil, fmt.Errorf("region %d for %v: %w", loc.Region.GetID(), part, err)
		}
		if regionErr != nil {
			// The sender has retried what it could (a new leader) and
			// updated the cache where it knew better (epoch not match);
			// drop the region so the next locate asks PD.
			cache.InvalidateCachedRegion(loc.Region)
			if err := bo.Backoff(tikv.BoRegionMiss(), errors.New(regionErr.String())); err != nil {
				return Sum{}, nil, fmt.Errorf("region %d for %v: %w", loc.Region.GetID(), part, err)
			}
			continue
		}
		cop, ok := resp.Resp.(*coprocessor.Response)
		if !ok || cop == nil {
			return Sum{}, nil, fmt.Errorf("region %d for %v: no coprocessor response (%T)", loc.Region.GetID(), part, resp.Resp)
		}
		if l := cop.GetLocked(); l != nil {
			msBeforeExpired, err := store.GetLockResolver().ResolveLocks(bo, ts, []*txnlock.Lock{txnlock.NewLock(l)})
			if err != nil {
				return Sum{}, nil, fmt.Errorf("resolve lock of txn %d on %s: %w", l.GetLockVersion(), keyspace.FormatKey(l.GetKey()), err)
			}
			if msBeforeExpired > 0 {
				lockErr := fmt.Errorf("lock of txn %d on %s not expired", l.GetLockVersion(), keyspace.FormatKey(l.GetKey()))
				if err := bo.BackoffWithMaxSleepTxnLockFast(int(msBeforeExpired), lockErr); err != nil {
					return Sum{}, nil, fmt.Errorf("region %d for %v: %w", loc.Region.GetID(), part, err)
				}
			}
			continue
		}
		if e := cop.GetOtherError(); e != "" {
			return Sum{}, nil, fmt.Errorf("region %d for %v: %s", loc.Region.GetID(), part, e)
		}
		var cr tipb.ChecksumResponse
		if err := proto.Unmarshal(cop.Data, &cr); err != nil {
			return Sum{}, nil, fmt.Errorf("region %d for %v: decode checksum response: %w", loc.Region.GetID(), part, err)
		}
		return Sum{Crc64Xor: cr.GetChecksum(), TotalKvs: cr.GetTotalKvs(), TotalBytes: cr.GetTotalBytes()}, partEnd, nil
	}
}
