package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/txnkv/transaction"
)

// Value size classes of Mixed. TiKV stores a value of at most 255 bytes
// inside the write record (a "short value", components/txn_types
// SHORT_VALUE_MAX_LEN) and a longer one in the default CF, so the classes
// cover both paths; large values cross the 1 MiB mark.
const (
	SmallMax  = 255
	MediumMin = 256
	MediumMax = 64 << 10
	LargeMin  = 1<<20 + 1
)

// Mixed writes, overwrites and deletes keys under Prefix, several per
// transaction, with values of mixed sizes: most small (≤ 255 B), many
// medium (256 B – 64 KiB), a few large (over 1 MiB). Every value starts
// with "<key>@<start_ts>:", so a value found under the wrong key or from the
// wrong transaction shows.
type Mixed struct {
	Client *txnkv.Client
	Prefix string // key prefix, e.g. "mixed/"
	Keys   int    // size of the key space (default 1000)
	// KeysPerTxn is the largest number of keys one transaction writes
	// (each writes 1..KeysPerTxn distinct keys; default 4).
	KeysPerTxn int
	// DeleteRatio is the share of mutations that delete (default 0.2);
	// MediumRatio and LargeRatio the shares of put values that are medium
	// and large (defaults 0.3 and 0.01); LargeMax bounds large values
	// (default 2 MiB, at least LargeMin).
	DeleteRatio float64
	MediumRatio float64
	LargeRatio  float64
	LargeMax    int
	// Txns stops Run after that many committed transactions in total
	// (0: until ctx ends).
	Txns int64
	// AsyncCommit and OnePC turn on those commit protocols per transaction.
	AsyncCommit bool
	OnePC       bool
	// OnCommit, when set, is called after each committed transaction with
	// its commit ts and mutations (from several workers at once).
	OnCommit func(commitTS uint64, muts []Mutation)
}

// Mutation is one key a Mixed transaction wrote (Value nil: deleted).
type Mutation struct {
	Key   []byte
	Value []byte
}

// MixedStats counts what Mixed.Run did. Safe for concurrent reads.
type MixedStats struct {
	Stats
	Puts    atomic.Int64 // put mutations committed
	Deletes atomic.Int64 // delete mutations committed
	Medium  atomic.Int64 // committed values of 256 B – 64 KiB
	Large   atomic.Int64 // committed values over 1 MiB
}

func (m *Mixed) setDefaults() {
	if m.Keys <= 0 {
		m.Keys = 1000
	}
	if m.KeysPerTxn <= 0 {
		m.KeysPerTxn = 4
	}
	m.KeysPerTxn = min(m.KeysPerTxn, m.Keys)
	if m.DeleteRatio == 0 {
		m.DeleteRatio = 0.2
	}
	if m.MediumRatio == 0 {
		m.MediumRatio = 0.3
	}
	if m.LargeRatio == 0 {
		m.LargeRatio = 0.01
	}
	if m.LargeMax == 0 {
		m.LargeMax = 2 << 20
	}
	m.LargeMax = max(m.LargeMax, LargeMin)
}

// Key returns key i of the key space.
func (m *Mixed) Key(i int) []byte { return []byte(fmt.Sprintf("%skey/%08d", m.Prefix, i)) }

// Range returns the key range Mixed writes: [start, end).
func (m *Mixed) Range() (start, end []byte) {
	return []byte(m.Prefix + "key/"), []byte(m.Prefix + "key0")
}

// Run starts workers that commit mixed transactions until ctx ends or Txns
// have committed. A retryable error retries with a new transaction; any
// other error stops Run and is returned. st may be nil.
func (m *Mixed) Run(ctx context.Context, workers int, st *MixedStats) error {
	m.setDefaults()
	if st == nil {
		st = &MixedStats{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var claimed atomic.Int64 // transactions started towards Txns
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for ctx.Err() == nil {
				if m.Txns > 0 && claimed.Add(1) > m.Txns {
					return
				}
				for {
					err := m.once(ctx, rng, st)
					switch {
					case err == nil:
					case Retryable(err) && ctx.Err() != nil:
						return
					case Retryable(err):
						st.Conflicts.Add(1)
						continue
					default:
						errc <- err
						cancel()
						return
					}
					break
				}
			}
		}(time.Now().UnixNano() + int64(w)*7919)
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func (m *Mixed) begin() (*transaction.KVTxn, error) {
	txn, err := m.Client.Begin()
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if m.AsyncCommit {
		txn.SetEnableAsyncCommit(true)
	}
	if m.OnePC {
		txn.SetEnable1PC(true)
	}
	return txn, nil
}

// once commits one transaction of 1..KeysPerTxn distinct random keys.
func (m *Mixed) once(ctx context.Context, rng *rand.Rand, st *MixedStats) error {
	txn, err := m.begin()
	if err != nil {
		return err
	}
	n := 1 + rng.Intn(m.KeysPerTxn)
	seen := make(map[int]bool, n)
	muts := make([]Mutation, 0, n)
	var bytes int64
	for len(muts) < n {
		i := rng.Intn(m.Keys)
		if seen[i] {
			continue
		}
		seen[i] = true
		key := m.Key(i)
		if rng.Float64() < m.DeleteRatio {
			if err := txn.Delete(key); err != nil {
				_ = txn.Rollback()
				return err
			}
			muts = append(muts, Mutation{Key: key})
			bytes += int64(len(key))
			continue
		}
		v := m.value(rng, key, txn.StartTS())
		if err := txn.Set(key, v); err != nil {
			_ = txn.Rollback()
			return err
		}
		muts = append(muts, Mutation{Key: key, Value: v})
		bytes += int64(len(key) + len(v))
	}
	// A commit that started finishes even when ctx ends, so every
	// transaction's outcome is known when Run returns (OnCommit's record
	// is complete).
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := txn.Commit(cctx); err != nil {
		return err
	}
	st.Committed.Add(1)
	st.Bytes.Add(bytes)
	for _, mu := range muts {
		switch {
		case mu.Value == nil:
			st.Deletes.Add(1)
		case len(mu.Value) >= LargeMin:
			st.Puts.Add(1)
			st.Large.Add(1)
		case len(mu.Value) >= MediumMin:
			st.Puts.Add(1)
			st.Medium.Add(1)
		default:
			st.Puts.Add(1)
		}
	}
	if m.OnCommit != nil {
		m.OnCommit(txn.CommitTS(), muts)
	}
	return nil
}

// value makes a value of a random size class: "<key>@<startTS>:" and a
// filler.
func (m *Mixed) value(rng *rand.Rand, key []byte, startTS uint64) []byte {
	head := fmt.Sprintf("%s@%d:", key, startTS)
	var size int
	switch p := rng.Float64(); {
	case p < m.LargeRatio:
		size = LargeMin + rng.Intn(m.LargeMax-LargeMin+1)
	case p < m.LargeRatio+m.MediumRatio:
		size = MediumMin + rng.Intn(MediumMax-MediumMin+1)
	default:
		size = len(head) + rng.Intn(max(SmallMax-len(head), 0)+1)
	}
	size = max(size, len(head))
	v := make([]byte, size)
	copy(v, head)
	fill := byte('a' + rng.Intn(26))
	for i := len(head); i < size; i++ {
		v[i] = fill + byte(i%7)
	}
	return v
}

// ErrBadValue: a value read back does not start with its key.
var ErrBadValue = errors.New("value does not belong to its key")

// Read reads every key Mixed writes at ts (a snapshot read), checking that
// each value names its key.
func (m *Mixed) Read(ctx context.Context, ts uint64) (map[string][]byte, error) {
	start, end := m.Range()
	out, err := ReadRange(ctx, m.Client, start, end, ts)
	if err != nil {
		return nil, err
	}
	for k, v := range out {
		if len(v) < len(k)+1 || string(v[:len(k)]) != k || v[len(k)] != '@' {
			return nil, fmt.Errorf("%w: key %q", ErrBadValue, k)
		}
	}
	return out, nil
}

// ResolveLocks reads the key space at a fresh timestamp, resolving the
// locks it meets (see Bank.ResolveLocks).
func (m *Mixed) ResolveLocks(ctx context.Context) error {
	ts, err := m.Client.CurrentTimestamp("global")
	if err != nil {
		return err
	}
	_, err = m.Read(ctx, ts)
	return err
}

// ReadRange reads every key in [start, end) at ts (a snapshot read). Scans
// go in small batches, since values may be large.
func ReadRange(ctx context.Context, cli *txnkv.Client, start, end []byte, ts uint64) (map[string][]byte, error) {
	snap := cli.GetSnapshot(ts)
	snap.SetScanBatchSize(16)
	it, err := snap.Iter(start, end)
	if err != nil {
		return nil, fmt.Errorf("scan %q at %d: %w", start, ts, err)
	}
	defer it.Close()
	out := map[string][]byte{}
	for it.Valid() {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		out[string(it.Key())] = append([]byte(nil), it.Value()...)
		if err := it.Next(); err != nil {
			return nil, fmt.Errorf("scan %q at %d: %w", start, ts, err)
		}
	}
	return out, nil
}

// Model is the state of a key space after a set of committed transactions,
// built from Mixed.OnCommit: At gives the value of every live key at a ts.
type Model struct {
	mu   sync.Mutex
	vers map[string][]version
}

type version struct {
	commitTS uint64
	value    []byte // nil: deleted
}

// Record adds a committed transaction (use as Mixed.OnCommit).
func (md *Model) Record(commitTS uint64, muts []Mutation) {
	md.mu.Lock()
	defer md.mu.Unlock()
	if md.vers == nil {
		md.vers = map[string][]version{}
	}
	for _, mu := range muts {
		md.vers[string(mu.Key)] = append(md.vers[string(mu.Key)], version{commitTS, mu.Value})
	}
}

// At returns every key's latest value committed at or before ts (deleted
// keys are absent).
func (md *Model) At(ts uint64) map[string][]byte {
	md.mu.Lock()
	defer md.mu.Unlock()
	out := map[string][]byte{}
	for k, vs := range md.vers {
		var best *version
		for i := range vs {
			if vs[i].commitTS <= ts && (best == nil || vs[i].commitTS > best.commitTS) {
				best = &vs[i]
			}
		}
		if best != nil && best.value != nil {
			out[k] = best.value
		}
	}
	return out
}
