package restore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/keyspace"
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

// writeTarget is what the runner needs of the target to restore chunks:
// the region a key is in (where a chunk is cut) and the write of a chunk,
// retried until it is ingested or cannot be. *target writes through PD and
// import_sstpb; the tests' faultyTarget keeps the versions in memory and
// injects faults. PD- and etcd-level preparation (prepareTarget, the GC
// hold, import mode) stays on *target: the runner never does it.
type writeTarget interface {
	// locateRetry returns the region holding key, retrying while no region
	// with a leader holds it (MaxAttempts).
	locateRetry(ctx context.Context, key []byte) (*region, error)
	// writeChunk writes and ingests every row of c, and calls onIngest
	// once per region ingest with the rows it made visible, in order.
	// Rows may reach the target more than once (a retry after an ingest
	// whose answer was lost); a version written twice is harmless (I5).
	writeChunk(ctx context.Context, c *chunk, onIngest func(regionID uint64, rows []kv)) error
}

var _ writeTarget = (*target)(nil)

// regionOps is what the retry policy of writeRegion and locateRetry does
// to a cluster, one region at a time: *target over PD and import_sstpb,
// an in-memory cluster with faults in the tests.
type regionOps interface {
	// locate returns the (cached) region holding key.
	locate(ctx context.Context, key []byte) (*region, error)
	// invalidate drops a region from the cache: the next locate asks again.
	invalidate(r *region)
	// writePeers writes the rows of the region holding rows[0] to every
	// peer, without making them visible.
	writePeers(ctx context.Context, c *chunk, rows []kv) (*written, error)
	// ingest makes written SSTs visible at the region's leader.
	ingest(ctx context.Context, w *written) error
}

var _ regionOps = (*target)(nil)

// writeChunk writes the rows of c to the target, region by region, with
// retries (see writeRegion).
func (t *target) writeChunk(ctx context.Context, c *chunk, onIngest func(regionID uint64, rows []kv)) error {
	return writeChunk(ctx, t, &t.retryPolicy, t.log, c, onIngest)
}

func writeChunk(ctx context.Context, ops regionOps, p *retryPolicy, log hclog.Logger, c *chunk, onIngest func(regionID uint64, rows []kv)) error {
	rows := c.rows
	for len(rows) > 0 {
		n, reg, err := writeRegion(ctx, ops, p, log, c, rows)
		if err != nil {
			return err
		}
		if onIngest != nil {
			onIngest(reg.id, rows[:n])
		}
		rows = rows[n:]
	}
	return nil
}

// written is a region's SSTs, on every peer, waiting for their ingest.
type written struct {
	reg   *region
	n     int // rows[:n] are in them
	metas []*import_sstpb.SSTMeta
}

// writeRegion writes the rows of the region holding the first row to every
// peer and ingests them at the leader. The retry policy follows Lightning's
// (pingcap/tidb pkg/lightning/backend/local/region_job.go
// convertStageOnIngestError):
//   - ServerIsBusy (TiKV's write stall, src/import/ingest.rs
//     check_write_stall): the written SSTs stay valid, so only the ingest is
//     retried, with the same SSTs, after a long backoff that does not count
//     against the attempt budget; the wait is bounded by busyTimeout in all.
//   - Any other region error (NotLeader, EpochNotMatch, RegionNotFound,
//     KeyNotInRegion, StaleCommand "file ... does not exist"), a stale epoch
//     at Write (RequestTooOld/RequestTooNew) or an unreachable store: the
//     cached region is dropped and the rows are routed again from fresh PD
//     data and written again to every peer; these count against maxAttempts.
//   - Errors retrying cannot fix (a malformed stream, an API version TiKV
//     refuses, a full disk) end the restore.
func writeRegion(ctx context.Context, ops regionOps, p *retryPolicy, log hclog.Logger, c *chunk, rows []kv) (int, *region, error) {
	var w *written
	var busySince time.Time
	busyTries := 0
	for attempt := 1; ; {
		var err error
		if w == nil {
			w, err = ops.writePeers(ctx, c, rows)
		}
		if err == nil {
			if err = ops.ingest(ctx, w); err == nil {
				return w.n, w.reg, nil
			}
			var busy *busyError
			if errors.As(err, &busy) && ctx.Err() == nil {
				if busySince.IsZero() {
					busySince = time.Now()
				}
				if time.Since(busySince) >= p.busyTimeout {
					return 0, nil, fmt.Errorf("write to the target: %w (busy for %s)", err, time.Since(busySince).Round(time.Second))
				}
				busyTries++
				log.Debug("target busy; retrying the ingest", "region", w.reg.id, "try", busyTries, "error", err)
				if err := p.sleep(ctx, min(p.busyMinBackoff<<min(busyTries-1, 10), p.busyMaxBackoff)); err != nil {
					return 0, nil, err
				}
				continue
			}
		}
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		var pe *permanentError
		if errors.As(err, &pe) {
			return 0, nil, err
		}
		log.Debug("write to a region failed; refreshing it and writing again", "attempt", attempt, "error", err)
		if w != nil {
			ops.invalidate(w.reg)
			w = nil
		}
		if attempt >= p.maxAttempts {
			return 0, nil, fmt.Errorf("write to the target: %w (gave up after %d attempts)", err, attempt)
		}
		if err := p.backoff(ctx, attempt); err != nil {
			return 0, nil, err
		}
		attempt++
	}
}

// permanentError is an import error retrying does not fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// busyError is ServerIsBusy from an ingest.
type busyError struct{ err *regionError }

func (e *busyError) Error() string { return e.err.Error() }
func (e *busyError) Unwrap() error { return e.err }

// writePeers locates the region of rows[0] and writes the rows inside it to
// every peer's store (as Lightning does: each peer applies the ingest from
// its own copy; a follower without one panics at apply), all copies under
// one SST name.
func (t *target) writePeers(ctx context.Context, c *chunk, rows []kv) (*written, error) {
	reg, err := t.locate(ctx, c.key(&rows[0]))
	if err != nil {
		return nil, err
	}
	n := sort.Search(len(rows), func(i int) bool { return !keyspace.BeforeEnd(c.key(&rows[i]), reg.end) })
	rows = rows[:n]
	msgs := c.batches(rows)
	id := uuid.New()
	first, last := c.key(&rows[0]), c.key(&rows[len(rows)-1])
	w := &written{reg: reg, n: n}
	var peers []*metapb.Peer
	leader := -1
	for _, p := range reg.peers {
		isLeader := p.GetStoreId() == reg.leader.GetStoreId()
		if t.leaderOnly && !isLeader {
			continue
		}
		if isLeader {
			leader = len(peers)
		}
		peers = append(peers, p)
	}
	if leader < 0 {
		t.invalidate(reg)
		return nil, &regionError{region: reg.id, err: &errorpb.Error{Message: fmt.Sprintf("leader store %d is not a peer", reg.leader.GetStoreId())}}
	}
	metas, err := t.write(ctx, reg, peers, id, first, last, msgs)
	if err != nil {
		t.invalidate(reg)
		return nil, err
	}
	w.metas = metas[leader]
	return w, nil
}

// ingest ingests written SSTs at the region's leader.
func (t *target) ingest(ctx context.Context, w *written) error {
	reg := w.reg
	if t.beforeIngest != nil {
		t.beforeIngest(reg)
	}
	cc, err := t.conn(ctx, reg.leader.GetStoreId())
	if err != nil {
		return err
	}
	resp, err := import_sstpb.NewImportSSTClient(cc).MultiIngest(ctx, &import_sstpb.MultiIngestRequest{
		Context: &kvrpcpb.Context{RegionId: reg.id, RegionEpoch: reg.epoch, Peer: reg.leader},
		Ssts:    w.metas,
	})
	if err != nil {
		t.maybeDropConn(reg.leader.GetStoreId(), err)
		code := status.Code(err)
		err = fmt.Errorf("ingest at store %d: %w", reg.leader.GetStoreId(), err)
		if code == codes.Unknown {
			// TiKV's own refusal (e.g. IncompatibleApiVersion, sent as
			// make_rpc_error in src/import/mod.rs), not transport.
			return &permanentError{err}
		}
		return err
	}
	e := resp.GetError()
	switch {
	case e == nil:
		return nil
	case e.GetServerIsBusy() != nil:
		return &busyError{&regionError{region: reg.id, err: e}}
	case e.GetDiskFull() != nil:
		return &permanentError{&regionError{region: reg.id, err: e}}
	}
	return &regionError{region: reg.id, err: e}
}

// sstMeta is the head of a Write stream. TiKV's Write returns this meta
// with only cf_name changed (sst_importer.rs new_txn_writer), and every peer
// checks it when it applies the ingest (apply.rs check_sst_for_ingestion):
// its epoch must equal the region's, and both ends of its range —
// memcomparable-encoded user keys, no ts, inclusive — must lie in the region.
// An empty range fails every region that does not start at "". APIVersion
// V1 is the target's (the only one pitr supports); TiKV refuses a meta of
// another version with IncompatibleApiVersion. As Lightning's doWrite
// (pingcap/tidb pkg/lightning/backend/local/region_job.go).
func sstMeta(id uuid.UUID, reg *region, first, last []byte) *import_sstpb.SSTMeta {
	return &import_sstpb.SSTMeta{
		Uuid: id[:], RegionId: reg.id, RegionEpoch: reg.epoch,
		Range:      &import_sstpb.Range{Start: keyspace.EncodeBytes(first), End: keyspace.EncodeBytes(last)},
		ApiVersion: kvrpcpb.APIVersion_V1,
	}
}

// write streams msgs to the import service of every peer's store at once,
// marshalling each message once for all of them (as Lightning's doWrite
// does with grpc.PreparedMsg), and returns the SSTs each store built.
func (t *target) write(ctx context.Context, reg *region, peers []*metapb.Peer, id uuid.UUID, first, last []byte, msgs []*import_sstpb.WriteRequest) ([][]*import_sstpb.SSTMeta, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	meta := sstMeta(id, reg, first, last)
	streams := make([]import_sstpb.ImportSST_WriteClient, len(peers))
	for i, p := range peers {
		storeID := p.GetStoreId()
		cc, err := t.conn(ctx, storeID)
		if err != nil {
			return nil, err
		}
		ws, err := import_sstpb.NewImportSSTClient(cc).Write(wctx)
		if err != nil {
			t.maybeDropConn(storeID, err)
			return nil, fmt.Errorf("write to store %d: %w", storeID, err)
		}
		head := &import_sstpb.WriteRequest{
			Chunk:   &import_sstpb.WriteRequest_Meta{Meta: meta},
			Context: &kvrpcpb.Context{RegionId: reg.id, RegionEpoch: reg.epoch, Peer: p},
		}
		if err := ws.Send(head); err != nil {
			return nil, t.streamErr(ws, reg, storeID, err)
		}
		streams[i] = ws
	}
	for _, m := range msgs {
		var msg any = m
		if len(streams) > 1 {
			pm := &grpc.PreparedMsg{}
			if err := pm.Encode(streams[0], m); err != nil {
				return nil, fmt.Errorf("encode a write batch: %w", err)
			}
			msg = pm
		}
		for i, ws := range streams {
			if err := ws.SendMsg(msg); err != nil {
				return nil, t.streamErr(ws, reg, peers[i].GetStoreId(), err)
			}
		}
	}
	out := make([][]*import_sstpb.SSTMeta, len(streams))
	for i, ws := range streams {
		storeID := peers[i].GetStoreId()
		resp, err := ws.CloseAndRecv()
		if err != nil {
			return nil, t.writeErr(storeID, err)
		}
		if err := writeRespErr(reg, storeID, resp); err != nil {
			return nil, err
		}
		out[i] = resp.GetMetas()
	}
	return out, nil
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
	return t.writeErr(storeID, err)
}

// retryableWriteErrors are the TiKV errors of a Write stream that a retry
// with fresh region data can fix (TiKV sends every Write error as gRPC
// status UNKNOWN with the error's Debug text, src/import/mod.rs
// make_rpc_error, so the kind is only in the text; Lightning matches it the
// same way). RequestTooOld/RequestTooNew: the store has no peer of the
// region or another epoch (sst_service.rs check_local_region_stale);
// ResourceNotEnough: check_import_resources; Suspended: SuspendImportRPC.
var retryableWriteErrors = []string{"RequestTooOld", "RequestTooNew", "ResourceNotEnough", "Suspended"}

// writeErr classifies the error that ended a Write stream.
func (t *target) writeErr(storeID uint64, err error) error {
	t.maybeDropConn(storeID, err)
	werr := fmt.Errorf("write to store %d: %w", storeID, err)
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unknown {
		for _, kind := range retryableWriteErrors {
			if strings.HasPrefix(s.Message(), kind) {
				return werr
			}
		}
		// A malformed stream (keys out of order, InvalidChunk, BadFormat):
		// writing it again fails the same way.
		return &permanentError{werr}
	}
	return werr
}
