package restore

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/google/uuid"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"

	"github.com/pitr-io/pitr/logfile"
)

// A chunk is a run of versions, in file order (key ASC, commit_ts DESC),
// headed for one target region: the unit of one Write + MultiIngest.
// Keys and values live in one arena; rows hold offsets into it.
type chunk struct {
	arena []byte
	rows  []kv
	bytes int64 // key+value bytes
}

type kv struct {
	kOff, kLen, vOff, vLen int
	ts                     uint64
	del                    bool
}

func (c *chunk) key(r *kv) []byte   { return c.arena[r.kOff : r.kOff+r.kLen : r.kOff+r.kLen] }
func (c *chunk) value(r *kv) []byte { return c.arena[r.vOff : r.vOff+r.vLen : r.vOff+r.vLen] }

func (c *chunk) add(r *logfile.Row) {
	k := len(c.arena)
	c.arena = append(c.arena, r.Key...)
	v := len(c.arena)
	c.arena = append(c.arena, r.Value...)
	c.rows = append(c.rows, kv{kOff: k, kLen: len(r.Key), vOff: v, vLen: len(r.Value), ts: r.CommitTS, del: r.Op == logfile.OpDelete})
	c.bytes += int64(len(r.Key) + len(r.Value))
}

func (c *chunk) reset() {
	c.arena, c.rows, c.bytes = c.arena[:0], c.rows[:0], 0
}

// maxBatchBytes bounds the pairs of one WriteBatch message.
const maxBatchBytes = 1 << 20

// batches turns rows (file order: key ASC, commit_ts DESC) into
// WriteBatch messages, one per run of consecutive rows with the same
// commit_ts (split further at maxBatchBytes), in file order. Every row keeps
// its own commit_ts. The order matters on a real TiKV: the Write stream
// builds one SST whose keys (user key, then commit_ts descending) must
// arrive in ascending order, so rows are never regrouped across the key
// order. Log data has few rows per commit_ts in a key range, so most
// batches hold one row: the messages are allocated in slabs.
func (c *chunk) batches(rows []kv) []*import_sstpb.WriteRequest {
	n := 0
	curBytes := 0
	for i := range rows {
		if i == 0 || rows[i].ts != rows[i-1].ts || curBytes >= maxBatchBytes {
			n++
			curBytes = 0
		}
		curBytes += rows[i].kLen + rows[i].vLen + 16
	}
	pairs := make([]import_sstpb.Pair, len(rows))
	ptrs := make([]*import_sstpb.Pair, len(rows))
	wbs := make([]import_sstpb.WriteBatch, n)
	oneofs := make([]import_sstpb.WriteRequest_Batch, n)
	reqs := make([]import_sstpb.WriteRequest, n)
	out := make([]*import_sstpb.WriteRequest, n)
	b, first := -1, 0
	for i := range rows {
		r := &rows[i]
		if i == 0 || r.ts != rows[i-1].ts || curBytes >= maxBatchBytes {
			if b >= 0 {
				wbs[b].Pairs = ptrs[first:i:i]
			}
			b++
			first, curBytes = i, 0
			wbs[b].CommitTs = r.ts
			oneofs[b].Batch = &wbs[b]
			reqs[b].Chunk = &oneofs[b]
			out[b] = &reqs[b]
		}
		p := &pairs[i]
		p.Key = c.key(r)
		if r.del {
			p.Op = import_sstpb.Pair_Delete
		} else {
			p.Value = c.value(r)
		}
		ptrs[i] = p
		curBytes += r.kLen + r.vLen + 16
	}
	if b >= 0 {
		wbs[b].Pairs = ptrs[first:]
	}
	return out
}

// writeChunk writes the rows of c to the target, region by region, with
// retries: a region error or an unreachable store drops the cached region,
// and the rows not yet ingested are routed again from fresh PD data.
func (t *target) writeChunk(ctx context.Context, c *chunk, onIngest func(regionID uint64, rows []kv)) error {
	rows := c.rows
	for len(rows) > 0 {
		for attempt := 1; ; attempt++ {
			reg, err := t.locate(ctx, c.key(&rows[0]))
			if err == nil {
				n := sort.Search(len(rows), func(i int) bool { return !beforeEnd(c.key(&rows[i]), reg.end) })
				if err = t.writeAndIngest(ctx, c, reg, rows[:n]); err == nil {
					if onIngest != nil {
						onIngest(reg.id, rows[:n])
					}
					rows = rows[n:]
					break
				}
				if ctx.Err() == nil {
					t.log.Debug("write chunk failed; refreshing the region", "region", reg.id, "attempt", attempt, "error", err)
				}
				t.invalidate(reg)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var pe *permanentError
			if errors.As(err, &pe) {
				return err
			}
			if attempt >= t.maxAttempts {
				return fmt.Errorf("write to the target: %w (gave up after %d attempts)", err, attempt)
			}
			if err := t.backoff(ctx, attempt); err != nil {
				return err
			}
		}
	}
	return nil
}

// permanentError is an import error retrying does not fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// writeAndIngest writes rows, all inside reg, to every peer's store (as
// Lightning does: each peer applies the ingest from its own copy) and
// ingests them at the leader.
func (t *target) writeAndIngest(ctx context.Context, c *chunk, reg *region, rows []kv) error {
	msgs := c.batches(rows)
	// One SST name for every peer's copy: the leader's ingest command names
	// the SST, and each peer applies it from its own copy of that name.
	id := uuid.New()
	var leaderMetas []*import_sstpb.SSTMeta
	for _, p := range reg.peers {
		if t.leaderOnly && p.GetStoreId() != reg.leader.GetStoreId() {
			continue
		}
		metas, err := t.write(ctx, reg, p.GetStoreId(), id, msgs)
		if err != nil {
			return err
		}
		if p.GetStoreId() == reg.leader.GetStoreId() {
			leaderMetas = metas
		}
	}
	if leaderMetas == nil {
		return &regionError{region: reg.id, err: &errorpb.Error{Message: fmt.Sprintf("leader store %d is not a peer", reg.leader.GetStoreId())}}
	}
	cc, err := t.conn(ctx, reg.leader.GetStoreId())
	if err != nil {
		return err
	}
	resp, err := import_sstpb.NewImportSSTClient(cc).MultiIngest(ctx, &import_sstpb.MultiIngestRequest{
		Context: &kvrpcpb.Context{RegionId: reg.id, RegionEpoch: reg.epoch, Peer: reg.leader},
		Ssts:    leaderMetas,
	})
	if err != nil {
		t.maybeDropConn(reg.leader.GetStoreId(), err)
		return fmt.Errorf("ingest at store %d: %w", reg.leader.GetStoreId(), err)
	}
	if e := resp.GetError(); e != nil {
		return &regionError{region: reg.id, err: e}
	}
	return nil
}

// write streams msgs to one store's import service and returns the SSTs it built.
func (t *target) write(ctx context.Context, reg *region, storeID uint64, id uuid.UUID, msgs []*import_sstpb.WriteRequest) ([]*import_sstpb.SSTMeta, error) {
	cc, err := t.conn(ctx, storeID)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := import_sstpb.NewImportSSTClient(cc).Write(wctx)
	if err != nil {
		t.maybeDropConn(storeID, err)
		return nil, fmt.Errorf("write to store %d: %w", storeID, err)
	}
	peer := reg.leader
	for _, p := range reg.peers {
		if p.GetStoreId() == storeID {
			peer = p
		}
	}
	head := &import_sstpb.WriteRequest{
		Chunk: &import_sstpb.WriteRequest_Meta{Meta: &import_sstpb.SSTMeta{
			Uuid: id[:], RegionId: reg.id, RegionEpoch: reg.epoch, CfName: "default",
		}},
		Context: &kvrpcpb.Context{RegionId: reg.id, RegionEpoch: reg.epoch, Peer: peer},
	}
	if err := ws.Send(head); err != nil {
		return nil, t.streamErr(ws, reg, storeID, err)
	}
	for _, m := range msgs {
		if err := ws.Send(m); err != nil {
			return nil, t.streamErr(ws, reg, storeID, err)
		}
	}
	resp, err := ws.CloseAndRecv()
	if err != nil {
		t.maybeDropConn(storeID, err)
		return nil, fmt.Errorf("write to store %d: %w", storeID, err)
	}
	if err := writeRespErr(reg, storeID, resp); err != nil {
		return nil, err
	}
	return resp.GetMetas(), nil
}

func writeRespErr(reg *region, storeID uint64, resp *import_sstpb.WriteResponse) error {
	e := resp.GetError()
	if e == nil {
		return nil
	}
	if se := e.GetStoreError(); se != nil {
		return &regionError{region: reg.id, err: se}
	}
	return &permanentError{fmt.Errorf("write to store %d: %s", storeID, e.GetMessage())}
}

// streamErr returns the real error of a failed Send (io.EOF means the
// server ended the stream; its answer comes with CloseAndRecv).
func (t *target) streamErr(ws import_sstpb.ImportSST_WriteClient, reg *region, storeID uint64, err error) error {
	resp, rerr := ws.CloseAndRecv()
	if rerr == nil {
		if werr := writeRespErr(reg, storeID, resp); werr != nil {
			return werr
		}
	} else {
		err = rerr
	}
	t.maybeDropConn(storeID, err)
	return fmt.Errorf("write to store %d: %w", storeID, err)
}
