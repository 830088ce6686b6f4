// Package importer serves import_sstpb on a playground store: the bulk-load
// path (Write, then MultiIngest at the leader) that TiDB Lightning, IMPORT
// INTO and pitr restore use, plus SwitchMode/GetMode.
//
// As in TiKV, Write builds SSTs on the store it is sent to: each WriteBatch
// carries one commit_ts and raw-key pairs, which become committed versions
// (start_ts = commit_ts, as TiKV's import writer does). MultiIngest, sent to
// the region's leader with the region's epoch, makes the SSTs visible. The
// SSTs must have been written to that store. Ingested data produces no raft
// KV events, so CDC never sees it (TIKV-PROTOCOLS.md §3.4).
package importer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// Config configures one store's import service.
type Config struct {
	StoreID uint64
	Cluster *cluster.Cluster
	Engine  *mvcc.Engine
	Logger  hclog.Logger
	// SSTs is the cluster's SST directory, shared by every store's
	// service (nil: a private one).
	SSTs *Registry
}

// Registry holds the SSTs written to every store and not yet ingested. In
// TiKV each peer ingests its own copy when the leader's ingest command is
// applied; the playground's stores share one engine, so the leader's ingest
// is the only apply, and it frees every store's copy of the same SSTs.
type Registry struct {
	mu   sync.Mutex
	ssts map[string]map[uint64]*sst // uuid -> store -> sst
}

// NewRegistry returns an empty SST directory.
func NewRegistry() *Registry { return &Registry{ssts: map[string]map[uint64]*sst{}} }

func (r *Registry) put(uuid string, store uint64, f *sst) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.ssts[uuid]
	if m == nil {
		m = map[uint64]*sst{}
		r.ssts[uuid] = m
	}
	m[store] = f
}

func (r *Registry) get(uuid string, store uint64) (*sst, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.ssts[uuid][store]
	return f, ok
}

func (r *Registry) drop(uuid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.ssts, uuid)
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

// Service implements import_sstpb.ImportSSTServer for one store.
type Service struct {
	import_sstpb.UnimplementedImportSSTServer
	cfg Config

	mu   sync.Mutex
	mode import_sstpb.SwitchMode
}

var _ import_sstpb.ImportSSTServer = (*Service)(nil)

type sst struct {
	meta    *import_sstpb.SSTMeta
	batches [][]mvcc.IngestEntry // one per WriteBatch, ingested as one command
	n       int
}

// New returns the import service of a store.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.SSTs == nil {
		cfg.SSTs = NewRegistry()
	}
	return &Service{cfg: cfg}
}

// Register registers the service on a store's gRPC server.
func (s *Service) Register(g *grpc.Server) { import_sstpb.RegisterImportSSTServer(g, s) }

// SwitchMode records the mode; the playground has no compaction to tune, so
// import mode changes nothing else.
func (s *Service) SwitchMode(_ context.Context, req *import_sstpb.SwitchModeRequest) (*import_sstpb.SwitchModeResponse, error) {
	s.mu.Lock()
	s.mode = req.GetMode()
	s.mu.Unlock()
	return &import_sstpb.SwitchModeResponse{}, nil
}

// GetMode returns the mode last switched to.
func (s *Service) GetMode(context.Context, *import_sstpb.GetModeRequest) (*import_sstpb.GetModeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &import_sstpb.GetModeResponse{Mode: s.mode}, nil
}

// Write receives a meta and then batches of pairs, and answers with the
// metas of the SSTs it built (one per stream here).
func (s *Service) Write(stream import_sstpb.ImportSST_WriteServer) error {
	var meta *import_sstpb.SSTMeta
	var batches [][]mvcc.IngestEntry
	n := 0
	var minKey, maxKey []byte
	var total uint64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch c := req.GetChunk().(type) {
		case *import_sstpb.WriteRequest_Meta:
			if meta != nil {
				return stream.SendAndClose(writeErr("meta sent twice on one write stream"))
			}
			meta = c.Meta
		case *import_sstpb.WriteRequest_Batch:
			if meta == nil {
				return stream.SendAndClose(writeErr("batch before meta on write stream"))
			}
			ts := c.Batch.GetCommitTs()
			if ts == 0 {
				return stream.SendAndClose(writeErr("write batch without commit_ts"))
			}
			entries := make([]mvcc.IngestEntry, 0, len(c.Batch.GetPairs()))
			for _, p := range c.Batch.GetPairs() {
				if len(p.Key) == 0 {
					return stream.SendAndClose(writeErr("empty key in write batch"))
				}
				// The decoded request owns fresh slices (gogo unmarshal
				// copies), so the entry can keep them without copying.
				e := mvcc.IngestEntry{
					Key:      p.Key,
					StartTS:  ts,
					CommitTS: ts,
					Delete:   p.Op == import_sstpb.Pair_Delete,
				}
				if !e.Delete {
					e.Value = p.Value
					if e.Value == nil {
						e.Value = []byte{}
					}
				}
				entries = append(entries, e)
				total += uint64(len(p.Key) + len(p.Value))
				if minKey == nil || bytes.Compare(p.Key, minKey) < 0 {
					minKey = e.Key
				}
				if maxKey == nil || bytes.Compare(p.Key, maxKey) > 0 {
					maxKey = e.Key
				}
			}
			batches = append(batches, entries)
			n += len(entries)
		}
	}
	if meta == nil {
		return stream.SendAndClose(writeErr("write stream without meta"))
	}
	// As TiKV does, the SST is named by the uuid the client gave in the
	// meta, so the copies a client writes to every peer share it and the
	// leader's ingest names all of them.
	id := meta.GetUuid()
	if len(id) == 0 {
		u := uuid.New()
		id = u[:]
	}
	out := &import_sstpb.SSTMeta{
		Uuid:        id,
		Range:       &import_sstpb.Range{Start: minKey, End: maxKey},
		Length:      total,
		CfName:      "write",
		RegionId:    meta.GetRegionId(),
		RegionEpoch: meta.GetRegionEpoch(),
		TotalKvs:    uint64(n),
		TotalBytes:  total,
	}
	s.cfg.SSTs.put(string(id), s.cfg.StoreID, &sst{meta: out, batches: batches, n: n})
	return stream.SendAndClose(&import_sstpb.WriteResponse{Metas: []*import_sstpb.SSTMeta{out}})
}

func writeErr(msg string) *import_sstpb.WriteResponse {
	return &import_sstpb.WriteResponse{Error: &import_sstpb.Error{Message: msg}}
}

// MultiIngest makes SSTs written to this store visible in the region named by
// the request context, after the same checks raftstore applies to a command.
func (s *Service) MultiIngest(_ context.Context, req *import_sstpb.MultiIngestRequest) (*import_sstpb.IngestResponse, error) {
	return s.ingest(req.GetContext(), req.GetSsts())
}

// Ingest is MultiIngest of one SST.
func (s *Service) Ingest(_ context.Context, req *import_sstpb.IngestRequest) (*import_sstpb.IngestResponse, error) {
	return s.ingest(req.GetContext(), []*import_sstpb.SSTMeta{req.GetSst()})
}

func (s *Service) ingest(ctx *kvrpcpb.Context, metas []*import_sstpb.SSTMeta) (*import_sstpb.IngestResponse, error) {
	var files []*sst
	var keys [][]byte
	for _, m := range metas {
		f, ok := s.cfg.SSTs.get(string(m.GetUuid()), s.cfg.StoreID)
		if !ok {
			return &import_sstpb.IngestResponse{Error: &errorpb.Error{
				Message: fmt.Sprintf("sst %x not found on store %d", m.GetUuid(), s.cfg.StoreID),
			}}, nil
		}
		files = append(files, f)
		if f.n > 0 {
			keys = append(keys, f.meta.Range.Start, f.meta.Range.End)
		}
	}
	rerr, err := s.cfg.Cluster.Apply(s.cfg.StoreID, ctx, keys, func(*cluster.Region) error {
		for _, f := range files {
			if err := s.cfg.Engine.IngestBatches(f.batches); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return &import_sstpb.IngestResponse{Error: &errorpb.Error{Message: fmt.Sprintf("ingest: %v", err)}}, nil
	}
	if rerr != nil {
		return &import_sstpb.IngestResponse{Error: rerr}, nil
	}
	for _, m := range metas {
		s.cfg.SSTs.drop(string(m.GetUuid()))
	}
	return &import_sstpb.IngestResponse{}, nil
}
