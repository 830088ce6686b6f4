// Package importer serves import_sstpb on a playground store: the bulk-load
// path (Write to every peer, then MultiIngest at the leader) that TiDB
// Lightning, IMPORT INTO and pitr restore use, plus SwitchMode/GetMode.
//
// It follows TiKV's sst_importer and raftstore apply (tikv/tikv
// src/import/sst_service.rs, src/import/ingest.rs,
// components/sst_importer/src/sst_writer.rs, components/raftstore/src/store/
// fsm/apply.rs), including what they reject:
//
//   - Write checks the meta's region against the store: no peer of it here →
//     RequestTooOld, a newer epoch than the store's → RequestTooNew, an older
//     one → RequestTooOld (check_local_region_stale). Each WriteBatch carries
//     one commit_ts and raw-key pairs; keys must be strictly ascending over
//     the whole stream in (key ASC, commit_ts DESC) order (one RocksDB
//     SstFileWriter per CF). Errors end the stream with gRPC status UNKNOWN
//     and TiKV's Debug text (make_rpc_error); WriteResponse.error is never
//     filled.
//   - Write answers with the client's SSTMeta, only cf_name changed, one per
//     non-empty CF: "default" when a value is longer than 255 bytes, "write"
//     when any pair was written (new_txn_writer, TxnSstWriter::finish). The
//     range is the client's: the playground never computes one.
//   - MultiIngest, at the leader: ServerIsBusy under write pressure in
//     normal mode (check_write_stall); IncompatibleApiVersion (gRPC status)
//     for a meta of another API version; the region checks of a command
//     (NotLeader, EpochNotMatch, ...); StaleCommand "The file which would be
//     ingested doest not exist." when the leader has no such SST
//     (importer.exist); then, as every peer applies the command,
//     check_sst_for_ingestion: the meta's region id, its epoch equal to the
//     region's (version and conf_ver), and both ends of its range — encoded
//     user keys, inclusive — inside the region's encoded bounds
//     (KeyNotInRegion); a failed check deletes the SST on every peer.
//
// Where the playground is stricter than TiKV, because TiKV would crash or
// silently corrupt data where a test should fail instead:
//
//   - A follower without its copy of an SST: TiKV panics applying the ingest
//     (apply.rs handle_ingest_sst → importer.validate fails → panic!). The
//     playground stores share one engine, so a leader-only ingest would
//     "work" here and hide the bug; it is refused and nothing is ingested
//     (unless Limits.LeaderOnlyIngest, for benchmarks only).
//   - An SST holding keys outside its declared range: TiKV trusts the meta
//     and ingests them into the wrong region; the playground refuses.
//   - One Write's SSTs (its default and write CF files) are ingested as a
//     unit: naming only one of them would, on TiKV, leave write records
//     whose values are missing.
//
// Ingested data produces no raft KV events, so CDC never sees it
// (TIKV-PROTOCOLS.md §3.4).
package importer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/metapb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// Defaults of Limits.
const (
	// DefaultBusyFiles is the write CF's level0-slowdown-writes-trigger of
	// TiKV (20): with that many L0 files, ingest_maybe_slowdown_writes says
	// an ingest would slow writes down.
	DefaultBusyFiles = 20
	// DefaultBusyWindow is how long an ingested SST counts as an L0 file
	// waiting for compaction.
	DefaultBusyWindow = 10 * time.Second
	// DefaultImportModeTimeout is TiKV's import.import-mode-timeout.
	DefaultImportModeTimeout = 10 * time.Minute
)

// shortValueMaxLen is TiKV's SHORT_VALUE_MAX_LEN (txn_types): longer values
// go to the default CF.
const shortValueMaxLen = 255

// Limits models a store's write pressure and import mode.
type Limits struct {
	// BusyFiles and BusyWindow model check_write_stall deterministically:
	// in normal mode an ingest is answered ServerIsBusy ("too many sst files
	// are ingesting") while the store has ingested at least BusyFiles SSTs
	// in the last BusyWindow, a stand-in for L0 files awaiting compaction.
	// Defaults DefaultBusyFiles and DefaultBusyWindow, which a restore at
	// full speed exceeds within seconds; BusyFiles < 0 disables the check.
	BusyFiles  int
	BusyWindow time.Duration
	// ImportModeTimeout returns a store to normal mode this long after the
	// last SwitchMode(Import) (import.import-mode-timeout; default 10 min).
	ImportModeTimeout time.Duration
	// LeaderOnlyIngest accepts ingests whose SSTs only the leader's store
	// holds. Real TiKV panics on such an ingest; this exists only so a
	// benchmark can measure restore without the per-peer copies.
	LeaderOnlyIngest bool
}

func (l *Limits) setDefaults() {
	if l.BusyFiles == 0 {
		l.BusyFiles = DefaultBusyFiles
	}
	if l.BusyWindow <= 0 {
		l.BusyWindow = DefaultBusyWindow
	}
	if l.ImportModeTimeout <= 0 {
		l.ImportModeTimeout = DefaultImportModeTimeout
	}
}

// Config configures one store's import service.
type Config struct {
	StoreID uint64
	Cluster *cluster.Cluster
	Engine  *mvcc.Engine
	Logger  hclog.Logger
	// SSTs is the cluster's SST directory, shared by every store's
	// service (nil: a private one).
	SSTs   *Registry
	Limits Limits
}

// fileID names an SST as TiKV's sst_meta_to_path does, without the CF:
// uuid, region id and epoch. A meta whose region or epoch differs from the
// one it was written with names a file that does not exist.
type fileID struct {
	uuid             string
	region           uint64
	confVer, version uint64
}

func idOf(m *import_sstpb.SSTMeta) fileID {
	return fileID{uuid: string(m.GetUuid()), region: m.GetRegionId(),
		confVer: m.GetRegionEpoch().GetConfVer(), version: m.GetRegionEpoch().GetVersion()}
}

// sst is what one Write stream built on one store: its write CF file and,
// when some value is long, its default CF file.
type sst struct {
	entries       []mvcc.IngestEntry // every version, in stream order, ingested as one command
	n             int
	hasDefault    bool
	first, last   []byte // raw keys
	nonTiDBKeySet bool   // some key is outside TiDB's 'm' and 't' ranges
}

func (f *sst) has(cf string) bool {
	switch cf {
	case "write":
		return f.n > 0
	case "default":
		return f.hasDefault
	}
	return false
}

// Registry holds the SSTs written to every store and not yet ingested. In
// TiKV each peer ingests its own copy when the leader's ingest command is
// applied; the playground's stores share one engine, so the leader's ingest
// is the only apply, and it frees every store's copy of the same SSTs.
type Registry struct {
	mu   sync.Mutex
	ssts map[fileID]map[uint64]*sst // file -> store -> sst
}

// NewRegistry returns an empty SST directory.
func NewRegistry() *Registry { return &Registry{ssts: map[fileID]map[uint64]*sst{}} }

func (r *Registry) put(id fileID, store uint64, f *sst) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.ssts[id]
	if m == nil {
		m = map[uint64]*sst{}
		r.ssts[id] = m
	}
	m[store] = f
}

func (r *Registry) get(id fileID, store uint64) (*sst, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.ssts[id][store]
	return f, ok
}

func (r *Registry) drop(id fileID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.ssts, id)
}

// Pending returns how many SSTs (counting each store's copy) wait for an
// ingest.
func (r *Registry) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.ssts {
		n += len(m)
	}
	return n
}

// Stats counts a store's import traffic.
type Stats struct {
	Writes  int64 // Write streams that built SSTs
	Ingests int64 // MultiIngest/Ingest calls that ingested
	Busy    int64 // ingests answered ServerIsBusy
}

// Add returns the sum of two Stats.
func (s Stats) Add(o Stats) Stats {
	return Stats{Writes: s.Writes + o.Writes, Ingests: s.Ingests + o.Ingests, Busy: s.Busy + o.Busy}
}

// Service implements import_sstpb.ImportSSTServer for one store.
type Service struct {
	import_sstpb.UnimplementedImportSSTServer
	cfg Config

	mu          sync.Mutex
	mode        import_sstpb.SwitchMode
	importUntil time.Time
	ingested    []ingestMark // recent ingests, oldest first

	writes, ingests, busy atomic.Int64
}

type ingestMark struct {
	at    time.Time
	files int
}

var _ import_sstpb.ImportSSTServer = (*Service)(nil)

// New returns the import service of a store.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.SSTs == nil {
		cfg.SSTs = NewRegistry()
	}
	cfg.Limits.setDefaults()
	return &Service{cfg: cfg}
}

// Register registers the service on a store's gRPC server.
func (s *Service) Register(g *grpc.Server) { import_sstpb.RegisterImportSSTServer(g, s) }

// Stats returns the store's import counters.
func (s *Service) Stats() Stats {
	return Stats{Writes: s.writes.Load(), Ingests: s.ingests.Load(), Busy: s.busy.Load()}
}

// modeLocked returns the current mode, falling back to Normal once the
// import mode timed out (TiKV's ImportModeSwitcher timer loop).
func (s *Service) modeLocked(now time.Time) import_sstpb.SwitchMode {
	if s.mode == import_sstpb.SwitchMode_Import && !now.Before(s.importUntil) {
		s.mode = import_sstpb.SwitchMode_Normal
		s.cfg.Logger.Info("import mode timed out; back to normal mode")
	}
	return s.mode
}

// SwitchMode switches the store's mode. Import lifts the write-stall check
// until ImportModeTimeout after the last switch, as TiKV's
// enter_import_mode resets its deadline on every call (ranges are ignored,
// as on a TiKV with one RocksDB).
func (s *Service) SwitchMode(_ context.Context, req *import_sstpb.SwitchModeRequest) (*import_sstpb.SwitchModeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.modeLocked(now)
	s.mode = req.GetMode()
	if s.mode == import_sstpb.SwitchMode_Import {
		s.importUntil = now.Add(s.cfg.Limits.ImportModeTimeout)
	}
	return &import_sstpb.SwitchModeResponse{}, nil
}

// GetMode returns the store's mode.
func (s *Service) GetMode(context.Context, *import_sstpb.GetModeRequest) (*import_sstpb.GetModeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &import_sstpb.GetModeResponse{Mode: s.modeLocked(time.Now())}, nil
}

// rpcErr is TiKV's make_rpc_error: status UNKNOWN with the error's Debug
// text, e.g. `RequestTooOld("region 7 is not found")`.
func rpcErr(kind, format string, args ...any) error {
	if format == "" {
		return status.Error(codes.Unknown, kind)
	}
	return status.Errorf(codes.Unknown, "%s(%q)", kind, fmt.Sprintf(format, args...))
}

// epochStale is raftstore's is_epoch_stale: a is older than b in either part.
func epochStale(a, b *metapb.RegionEpoch) bool {
	return a.GetVersion() < b.GetVersion() || a.GetConfVer() < b.GetConfVer()
}

// checkWriteRegion is the region check of a Write stream's meta
// (sst_service.rs impl_write: find_region_by_id, check_local_region_stale).
func (s *Service) checkWriteRegion(meta *import_sstpb.SSTMeta) error {
	id := meta.GetRegionId()
	r, err := s.cfg.Cluster.RegionByID(id)
	if err != nil || r.PeerOn(s.cfg.StoreID) == nil {
		return rpcErr("RequestTooOld", "region %d is not found", id)
	}
	local, req := &r.Epoch, meta.GetRegionEpoch()
	if epochStale(local, req) {
		return rpcErr("RequestTooNew", "request region %d is ahead of local region, local epoch %v, request epoch %v, please retry write later", id, local, req)
	}
	if epochStale(req, local) {
		return rpcErr("RequestTooOld", "request region %d is staler than local region, local epoch %v, request epoch %v", id, local, req)
	}
	return nil
}

// Write receives a meta and then batches of pairs, builds the SSTs on this
// store, and answers with the client's meta per non-empty CF.
func (s *Service) Write(stream import_sstpb.ImportSST_WriteServer) error {
	req, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return rpcErr("InvalidChunk", "")
	}
	if err != nil {
		return err
	}
	meta := req.GetMeta()
	if meta == nil {
		return rpcErr("InvalidChunk", "")
	}
	if err := s.checkWriteRegion(meta); err != nil {
		return err
	}
	if len(meta.GetUuid()) != 16 { // join_for_write: the uuid names the file
		return rpcErr("InvalidChunk", "")
	}
	f := &sst{}
	var prevTS uint64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		b := req.GetBatch()
		if b == nil {
			return rpcErr("InvalidChunk", "")
		}
		ts := b.GetCommitTs()
		if ts == 0 {
			return rpcErr("BadFormat", "invalid commit-ts 0")
		}
		for _, p := range b.GetPairs() {
			if len(p.Key) == 0 {
				// TiKV would write it; the playground's engine has no empty key.
				return rpcErr("BadFormat", "playground: empty key in write batch")
			}
			// One SstFileWriter per CF: keys (user key ASC, commit_ts DESC)
			// strictly ascending over the whole stream.
			if f.last != nil {
				c := bytes.Compare(p.Key, f.last)
				if c < 0 || c == 0 && ts >= prevTS {
					return rpcErr("Engine", "Corruption: Keys must be added in strict ascending order. key %q@%d after %q@%d", p.Key, ts, f.last, prevTS)
				}
			}
			// The decoded request owns fresh slices (gogo unmarshal
			// copies), so the entry can keep them without copying.
			e := mvcc.IngestEntry{Key: p.Key, StartTS: ts, CommitTS: ts, Delete: p.Op == import_sstpb.Pair_Delete}
			if !e.Delete {
				e.Value = p.Value
				if e.Value == nil {
					e.Value = []byte{}
				}
				if len(e.Value) > shortValueMaxLen {
					f.hasDefault = true
				}
			}
			if f.first == nil {
				f.first = e.Key
			}
			f.last, prevTS = e.Key, ts
			if k := e.Key[0]; k != 'm' && k != 't' {
				f.nonTiDBKeySet = true
			}
			f.entries = append(f.entries, e)
		}
	}
	f.n = len(f.entries)
	var metas []*import_sstpb.SSTMeta
	for _, cf := range []string{"default", "write"} {
		if f.has(cf) {
			m := *meta
			m.CfName = cf
			metas = append(metas, &m)
		}
	}
	if len(metas) > 0 {
		s.cfg.SSTs.put(idOf(meta), s.cfg.StoreID, f)
	}
	s.writes.Add(1)
	return stream.SendAndClose(&import_sstpb.WriteResponse{Metas: metas})
}

// MultiIngest makes SSTs written to this store visible in the region named by
// the request context, after the checks TiKV makes before and at apply.
func (s *Service) MultiIngest(_ context.Context, req *import_sstpb.MultiIngestRequest) (*import_sstpb.IngestResponse, error) {
	return s.ingest(req.GetContext(), req.GetSsts())
}

// Ingest is MultiIngest of one SST.
func (s *Service) Ingest(_ context.Context, req *import_sstpb.IngestRequest) (*import_sstpb.IngestResponse, error) {
	return s.ingest(req.GetContext(), []*import_sstpb.SSTMeta{req.GetSst()})
}

// applyError carries a region error out of a cluster.Apply callback.
type applyError struct{ e *errorpb.Error }

func (e *applyError) Error() string { return e.e.GetMessage() }

// writeStall is check_write_stall: under write pressure in normal mode the
// ingest is refused with ServerIsBusy.
func (s *Service) writeStall(now time.Time) *errorpb.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.cfg.Limits
	cut := now.Add(-lim.BusyWindow)
	i := 0
	for i < len(s.ingested) && !s.ingested[i].at.After(cut) {
		i++
	}
	s.ingested = s.ingested[i:]
	if lim.BusyFiles < 0 || s.modeLocked(now) != import_sstpb.SwitchMode_Normal {
		return nil
	}
	files := 0
	for _, m := range s.ingested {
		files += m.files
	}
	if files < lim.BusyFiles {
		return nil
	}
	const msg = "too many sst files are ingesting"
	return &errorpb.Error{Message: msg, ServerIsBusy: &errorpb.ServerIsBusy{Reason: msg}}
}

func (s *Service) markIngested(now time.Time, files int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ingested = append(s.ingested, ingestMark{at: now, files: files})
}

// apiCompatible is check_api_version for a V1 cluster: V1 (the unset
// default) is accepted, V1TTL never, V2 only when every key is a TiDB key.
func apiCompatible(m *import_sstpb.SSTMeta, f *sst) bool {
	switch m.GetApiVersion() {
	case kvrpcpb.APIVersion_V1:
		return true
	case kvrpcpb.APIVersion_V2:
		return f != nil && !f.nonTiDBKeySet
	}
	return false
}

// checkSST is check_sst_for_ingestion (raftstore apply.rs), run by every
// peer as it applies the ingest: the meta must name this region, with its
// exact epoch, and both ends of its range (encoded keys) must be inside it
// (check_key_in_region: start <= key < end).
func checkSST(m *import_sstpb.SSTMeta, r *cluster.Region) *errorpb.Error {
	if len(m.GetUuid()) != 16 {
		return &errorpb.Error{Message: fmt.Sprintf("invalid uuid %x", m.GetUuid())}
	}
	if cf := m.GetCfName(); cf != "default" && cf != "write" {
		return &errorpb.Error{Message: fmt.Sprintf("invalid cf name %s", cf)}
	}
	if m.GetRegionId() != r.ID {
		return &errorpb.Error{Message: fmt.Sprintf("region %d not found", m.GetRegionId()),
			RegionNotFound: &errorpb.RegionNotFound{RegionId: m.GetRegionId()}}
	}
	if ep := m.GetRegionEpoch(); ep.GetVersion() != r.Epoch.Version || ep.GetConfVer() != r.Epoch.ConfVer {
		return &errorpb.Error{Message: fmt.Sprintf("epoch not match: %v != %v", ep, &r.Epoch),
			EpochNotMatch: &errorpb.EpochNotMatch{CurrentRegions: []*metapb.Region{r.Meta()}}}
	}
	for _, k := range [][]byte{m.GetRange().GetStart(), m.GetRange().GetEnd()} {
		if !r.ContainsEncoded(k) {
			return &errorpb.Error{
				Message: fmt.Sprintf("key %x is not in region %d", k, r.ID),
				KeyNotInRegion: &errorpb.KeyNotInRegion{
					Key: k, RegionId: r.ID, StartKey: r.StartKey, EndKey: r.EndKey,
				},
			}
		}
	}
	return nil
}

func (s *Service) ingest(ctx *kvrpcpb.Context, metas []*import_sstpb.SSTMeta) (*import_sstpb.IngestResponse, error) {
	now := time.Now()
	if e := s.writeStall(now); e != nil {
		s.busy.Add(1)
		return &import_sstpb.IngestResponse{Error: e}, nil
	}
	for _, m := range metas {
		f, _ := s.cfg.SSTs.get(idOf(m), s.cfg.StoreID)
		if !apiCompatible(m, f) {
			return nil, rpcErr("IncompatibleApiVersion", "")
		}
	}
	// The SSTs of each Write, by file, with the CFs this ingest names.
	type unit struct {
		id  fileID
		cfs map[string]bool
	}
	var units []*unit
	byID := map[fileID]*unit{}
	for _, m := range metas {
		id := idOf(m)
		u := byID[id]
		if u == nil {
			u = &unit{id: id, cfs: map[string]bool{}}
			byID[id] = u
			units = append(units, u)
		}
		u.cfs[m.GetCfName()] = true
	}
	rerr, err := s.cfg.Cluster.Apply(s.cfg.StoreID, ctx, nil, func(r *cluster.Region) error {
		// importer.exist, after the leader and epoch check (ingest.rs).
		var files []*sst
		for _, m := range metas {
			f, ok := s.cfg.SSTs.get(idOf(m), s.cfg.StoreID)
			if !ok || !f.has(m.GetCfName()) {
				return &applyError{&errorpb.Error{Message: "The file which would be ingested doest not exist.",
					StaleCommand: &errorpb.StaleCommand{}}}
			}
		}
		// Every peer applies the command: check_sst_for_ingestion, which
		// deletes an invalid SST, and then its own copy of each SST.
		for _, m := range metas {
			if e := checkSST(m, r); e != nil {
				s.cfg.SSTs.drop(idOf(m))
				return &applyError{e}
			}
		}
		for _, u := range units {
			f, _ := s.cfg.SSTs.get(u.id, s.cfg.StoreID)
			for _, cf := range []string{"default", "write"} {
				if f.has(cf) != u.cfs[cf] {
					return fmt.Errorf("playground: SST %x is ingested without its %s CF file; ingest every SST one Write returned together", u.id.uuid, cf)
				}
			}
			for _, p := range r.Peers {
				if _, ok := s.cfg.SSTs.get(u.id, p.StoreId); !ok && !s.cfg.Limits.LeaderOnlyIngest {
					return fmt.Errorf("playground: store %d (peer %d of region %d) has no copy of SST %x: "+
						"a TiKV follower panics applying this ingest (apply.rs handle_ingest_sst); write every peer's copy first",
						p.StoreId, p.Id, r.ID, u.id.uuid)
				}
			}
			// TiKV trusts the declared range; keys outside it would land in
			// another region's range.
			for _, k := range [][]byte{f.first, f.last} {
				if !r.ContainsRaw(k) || !inRange(cluster.EncodeKey(k), metaRange(metas, u.id)) {
					return fmt.Errorf("playground: SST %x holds key %q outside its declared range or region %d", u.id.uuid, k, r.ID)
				}
			}
			files = append(files, f)
		}
		batches := make([][]mvcc.IngestEntry, 0, len(files))
		for _, f := range files {
			batches = append(batches, f.entries)
		}
		return s.cfg.Engine.IngestBatches(batches)
	})
	var ae *applyError
	switch {
	case rerr != nil:
		return &import_sstpb.IngestResponse{Error: rerr}, nil
	case errors.As(err, &ae):
		return &import_sstpb.IngestResponse{Error: ae.e}, nil
	case err != nil:
		return &import_sstpb.IngestResponse{Error: &errorpb.Error{Message: fmt.Sprintf("[region %d] ingest failed: %v", ctx.GetRegionId(), err)}}, nil
	}
	files := 0
	for _, u := range units {
		s.cfg.SSTs.drop(u.id)
		files += len(u.cfs)
	}
	s.markIngested(now, files)
	s.ingests.Add(1)
	return &import_sstpb.IngestResponse{}, nil
}

// metaRange returns the declared range of the file's metas (they share it:
// Write copies the client's meta).
func metaRange(metas []*import_sstpb.SSTMeta, id fileID) *import_sstpb.Range {
	for _, m := range metas {
		if idOf(m) == id {
			return m.GetRange()
		}
	}
	return nil
}

// inRange reports whether an encoded key lies in an inclusive range.
func inRange(k []byte, r *import_sstpb.Range) bool {
	return bytes.Compare(k, r.GetStart()) >= 0 && bytes.Compare(k, r.GetEnd()) <= 0
}
