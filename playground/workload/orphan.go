package workload

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/txnkv"
)

// OpenTxn is a one-key transaction stopped between prewrite and commit: its
// key holds a primary lock with a TTL. A client that dies at this point
// leaves the lock behind (an orphaned lock); nothing in TiKV removes it until
// a reader of the key or GC's lock resolution checks the transaction's
// status and rolls it back (TiKV never resolves a lock by itself).
type OpenTxn struct {
	cli     *txnkv.Client
	Key     []byte
	StartTS uint64
	// TTL is the lock's TTL as prewritten (TiKV counts it from the physical
	// time of StartTS).
	TTL time.Duration
}

// rpcBackoff bounds the retries of one request (ms of backoff sleep).
const rpcBackoff = 20_000

// Prewrite starts a transaction that puts value at key and prewrites it
// with the given lock TTL: the raw kvrpcpb Prewrite a client sends in the
// first phase of two-phase commit, key as its own primary. Nothing commits,
// rolls back or heartbeats it unless the caller does.
func Prewrite(ctx context.Context, cli *txnkv.Client, key, value []byte, ttl time.Duration) (*OpenTxn, error) {
	startTS, err := cli.CurrentTimestamp("global")
	if err != nil {
		return nil, fmt.Errorf("get start ts: %w", err)
	}
	req := tikvrpc.NewRequest(tikvrpc.CmdPrewrite, &kvrpcpb.PrewriteRequest{
		Mutations:    []*kvrpcpb.Mutation{{Op: kvrpcpb.Op_Put, Key: key, Value: value}},
		PrimaryLock:  key,
		StartVersion: startTS,
		LockTtl:      uint64(ttl.Milliseconds()),
		TxnSize:      1,
	})
	resp, err := sendKey(ctx, cli, key, req)
	if err != nil {
		return nil, fmt.Errorf("prewrite %q: %w", key, err)
	}
	if kes := resp.Resp.(*kvrpcpb.PrewriteResponse).GetErrors(); len(kes) > 0 {
		return nil, fmt.Errorf("prewrite %q: %s", key, kes[0].String())
	}
	return &OpenTxn{cli: cli, Key: key, StartTS: startTS, TTL: ttl}, nil
}

// LeakLock prewrites key and forgets the transaction, as a client that died
// between prewrite and commit: an orphaned lock with the given TTL on a key
// nobody needs to read again. It returns the lock's start ts.
func LeakLock(ctx context.Context, cli *txnkv.Client, key []byte, ttl time.Duration) (uint64, error) {
	t, err := Prewrite(ctx, cli, key, []byte("orphan"), ttl)
	if err != nil {
		return 0, err
	}
	return t.StartTS, nil
}

// HeartBeat extends the lock's TTL to ttl (counted from the start ts), as a
// live client's TTL manager does (kvrpcpb TxnHeartBeat).
func (t *OpenTxn) HeartBeat(ctx context.Context, ttl time.Duration) error {
	req := tikvrpc.NewRequest(tikvrpc.CmdTxnHeartBeat, &kvrpcpb.TxnHeartBeatRequest{
		PrimaryLock: t.Key, StartVersion: t.StartTS, AdviseLockTtl: uint64(ttl.Milliseconds()),
	})
	resp, err := sendKey(ctx, t.cli, t.Key, req)
	if err != nil {
		return fmt.Errorf("heartbeat %q: %w", t.Key, err)
	}
	if ke := resp.Resp.(*kvrpcpb.TxnHeartBeatResponse).GetError(); ke != nil {
		return fmt.Errorf("heartbeat %q: %s", t.Key, ke.String())
	}
	return nil
}

// ErrRolledBack: the transaction's lock is gone (someone rolled it back).
var ErrRolledBack = errors.New("transaction rolled back")

// Commit commits the transaction at a fresh ts and returns it. A lock that
// someone resolved meanwhile yields ErrRolledBack.
func (t *OpenTxn) Commit(ctx context.Context) (uint64, error) {
	commitTS, err := t.cli.CurrentTimestamp("global")
	if err != nil {
		return 0, fmt.Errorf("get commit ts: %w", err)
	}
	req := tikvrpc.NewRequest(tikvrpc.CmdCommit, &kvrpcpb.CommitRequest{
		Keys: [][]byte{t.Key}, StartVersion: t.StartTS, CommitVersion: commitTS,
	})
	resp, err := sendKey(ctx, t.cli, t.Key, req)
	if err != nil {
		return 0, fmt.Errorf("commit %q: %w", t.Key, err)
	}
	if ke := resp.Resp.(*kvrpcpb.CommitResponse).GetError(); ke != nil {
		if ke.GetTxnLockNotFound() != nil {
			return 0, fmt.Errorf("commit %q at %d: %w (%s)", t.Key, commitTS, ErrRolledBack, ke.String())
		}
		return 0, fmt.Errorf("commit %q: %s", t.Key, ke.String())
	}
	return commitTS, nil
}

// sendKey sends req to the leader of key's region through client-go's
// region cache, retrying region errors (split, leader moves).
func sendKey(ctx context.Context, cli *txnkv.Client, key []byte, req *tikvrpc.Request) (*tikvrpc.Response, error) {
	bo := tikv.NewBackofferWithVars(ctx, rpcBackoff, nil)
	for {
		loc, err := cli.GetRegionCache().LocateKey(bo, key)
		if err != nil {
			return nil, fmt.Errorf("locate: %w", err)
		}
		resp, err := cli.SendReq(bo, req, loc.Region, tikv.ReadTimeoutShort)
		if err != nil {
			return nil, err
		}
		regionErr, err := resp.GetRegionError()
		if err != nil {
			return nil, err
		}
		if regionErr != nil {
			if err := bo.Backoff(tikv.BoRegionMiss(), errors.New(regionErr.String())); err != nil {
				return nil, err
			}
			continue
		}
		if resp.Resp == nil {
			return nil, errors.New("empty response")
		}
		return resp, nil
	}
}
