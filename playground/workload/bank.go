// Package workload drives client-go transactions against a cluster: the bank
// transfer workload used by tests, `pitr-playground demo` and `make bench`, and the
// mixed workload (puts, overwrites and deletes of small, medium and large
// values) for end-to-end tests. It talks to
// any TiKV-compatible cluster through PD addresses; nothing in it knows about
// the playground.
package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/txnkv/transaction"
)

// Bank is a set of accounts whose total balance never changes: every
// transaction moves money between two accounts.
type Bank struct {
	Client   *txnkv.Client
	Prefix   string // key prefix, e.g. "bank/"
	Accounts int
	Initial  int64 // initial balance per account
	// AsyncCommit and OnePC turn on those commit protocols per transaction.
	AsyncCommit bool
	OnePC       bool
}

// Stats counts what Run did. Safe for concurrent reads.
type Stats struct {
	Committed atomic.Int64 // transfer transactions committed
	Conflicts atomic.Int64 // transactions that failed with a retryable error and were retried
	Bytes     atomic.Int64 // key+value bytes written by committed transactions
}

// Key returns account i's key.
func (b *Bank) Key(i int) []byte { return []byte(fmt.Sprintf("%saccount/%08d", b.Prefix, i)) }

// Total returns the expected sum of all balances.
func (b *Bank) Total() int64 { return int64(b.Accounts) * b.Initial }

func (b *Bank) begin() (*transaction.KVTxn, error) {
	txn, err := b.Client.Begin()
	if err != nil {
		return nil, err
	}
	if b.AsyncCommit {
		txn.SetEnableAsyncCommit(true)
	}
	if b.OnePC {
		txn.SetEnable1PC(true)
	}
	return txn, nil
}

// Init writes every account with the initial balance, in batches.
func (b *Bank) Init(ctx context.Context) error {
	const batch = 500
	for lo := 0; lo < b.Accounts; lo += batch {
		txn, err := b.Client.Begin()
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		for i := lo; i < lo+batch && i < b.Accounts; i++ {
			if err := txn.Set(b.Key(i), []byte(strconv.FormatInt(b.Initial, 10))); err != nil {
				return err
			}
		}
		if err := txn.Commit(ctx); err != nil {
			return fmt.Errorf("init accounts %d..: %w", lo, err)
		}
	}
	return nil
}

// Retryable reports whether a transaction error is one a client is expected
// to retry (write conflicts, lock contention, undetermined commits are NOT
// retryable: they need a read to find out).
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	if tikverr.IsErrWriteConflict(err) || tikverr.IsErrKeyExist(err) {
		return true
	}
	var retry *tikverr.ErrRetryable
	var latch *tikverr.ErrWriteConflictInLatch
	if errors.As(err, &retry) || errors.As(err, &latch) {
		return true
	}
	return errors.Is(err, tikverr.ErrResolveLockTimeout) || errors.Is(err, tikverr.ErrLockWaitTimeout) ||
		errors.Is(err, tikverr.ErrTiKVServerBusy) || errors.Is(err, tikverr.ErrRegionUnavailable)
}

// Run starts workers that transfer random amounts between random accounts
// until ctx ends. A retryable error retries the transfer; any other error
// stops Run and is returned.
func (b *Bank) Run(ctx context.Context, workers int, st *Stats) error {
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for ctx.Err() == nil {
				err := b.transfer(ctx, rng, st)
				switch {
				case err == nil:
				case ctx.Err() != nil:
					return
				case Retryable(err):
					st.Conflicts.Add(1)
				default:
					errc <- err
					return
				}
			}
		}(time.Now().UnixNano() + int64(w))
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func (b *Bank) transfer(ctx context.Context, rng *rand.Rand, st *Stats) error {
	from, to := rng.Intn(b.Accounts), rng.Intn(b.Accounts)
	for to == from {
		to = rng.Intn(b.Accounts)
	}
	txn, err := b.begin()
	if err != nil {
		return err
	}
	// Two point gets, not one BatchGet: client-go's BatchGet over several
	// regions races on its Backoffer (KVSnapshot.batchGetKeysByRegions
	// clones it while a region's goroutine backs off with it), which the
	// race detector reports in every test that runs this workload.
	var vals [2][]byte
	for i, k := range [][]byte{b.Key(from), b.Key(to)} {
		if vals[i], err = txn.Get(ctx, k); err != nil {
			_ = txn.Rollback()
			return err
		}
	}
	fb, err1 := strconv.ParseInt(string(vals[0]), 10, 64)
	tb, err2 := strconv.ParseInt(string(vals[1]), 10, 64)
	if err1 != nil || err2 != nil {
		_ = txn.Rollback()
		return fmt.Errorf("corrupt balance: %v %v", err1, err2)
	}
	amount := int64(rng.Intn(10) + 1)
	if fb < amount {
		amount = fb
	}
	fv, tv := []byte(strconv.FormatInt(fb-amount, 10)), []byte(strconv.FormatInt(tb+amount, 10))
	if err := txn.Set(b.Key(from), fv); err != nil {
		return err
	}
	if err := txn.Set(b.Key(to), tv); err != nil {
		return err
	}
	if err := txn.Commit(ctx); err != nil {
		return err
	}
	st.Committed.Add(1)
	st.Bytes.Add(int64(2*len(b.Key(0)) + len(fv) + len(tv)))
	return nil
}

// ResolveLocks reads every account at a fresh timestamp. The read resolves
// each lock it meets (once the lock's TTL has passed), so locks left by
// transactions cut off mid-commit stop pinning their regions' resolved ts.
func (b *Bank) ResolveLocks(ctx context.Context) error {
	ts, err := b.Client.CurrentTimestamp("global")
	if err != nil {
		return err
	}
	_, _, err = b.Sum(ctx, ts)
	return err
}

// Sum reads every account at ts (a snapshot read) and returns the total and
// the number of accounts seen.
func (b *Bank) Sum(ctx context.Context, ts uint64) (total int64, n int, err error) {
	snap := b.Client.GetSnapshot(ts)
	it, err := snap.Iter([]byte(b.Prefix+"account/"), []byte(b.Prefix+"account0"))
	if err != nil {
		return 0, 0, err
	}
	defer it.Close()
	for it.Valid() {
		v, err := strconv.ParseInt(string(it.Value()), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("account %q: %w", it.Key(), err)
		}
		total += v
		n++
		if err := it.Next(); err != nil {
			return 0, 0, err
		}
	}
	return total, n, nil
}
