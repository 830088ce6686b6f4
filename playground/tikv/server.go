// Package tikv is one playground store's gRPC server: the tikvpb.Tikv
// service (unary KV RPCs and the BatchCommands stream client-go uses by
// default) plus the gRPC health service, over the shared mvcc engine.
//
// Every request is checked against the region book the way raftstore checks
// a command (store, region, epoch, leader, keys in range) and runs under the
// cluster's apply lock, so topology changes never interleave with it. Region
// errors and key errors are shaped as TiKV shapes them (src/server/service/
// kv.rs and src/storage/errors.rs).
package tikv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // the fallback codec
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// Config configures one store's server.
type Config struct {
	StoreID uint64
	// Addr is the listen address: "127.0.0.1:0" the first time, the same
	// address again on restart.
	Addr string
	// StatusAddr is the status HTTP API's listen address (TiKV's
	// status-addr), "127.0.0.1:0" or the previous one on restart.
	StatusAddr string
	Cluster    *cluster.Cluster
	Engine     *mvcc.Engine
	Logger     hclog.Logger
	// TLS, when set, is the server side of the store's security config:
	// both the gRPC server and the status server serve TLS with it and
	// require a client certificate it verifies, as TiKV does once
	// security.ca-path, cert-path and key-path are set
	// (components/security/src/lib.rs bind() for gRPC; the status server
	// in components/server/src/status_server/mod.rs verifies the peer
	// too). Nil serves plaintext.
	TLS *tls.Config
	// Register adds extra services (cdcpb ChangeData, import_sstpb) to the
	// store's gRPC server before it serves.
	Register []func(*grpc.Server)
}

// Server is a running store.
type Server struct {
	tikvpb.UnimplementedTikvServer

	cfg    Config
	log    hclog.Logger
	grpc   *grpc.Server
	health *health.Server
	ln     net.Listener
	addr   string
	status *statusServer

	stopped  atomic.Bool
	serveErr chan error
	stopOnce sync.Once

	feedbackSeq atomic.Uint64
}

var _ tikvpb.TikvServer = (*Server)(nil)

// Start listens on cfg.Addr, records the address in the cluster and serves.
func Start(cfg Config) (*Server, error) {
	if cfg.Cluster == nil || cfg.Engine == nil {
		return nil, errors.New("tikv: Cluster and Engine are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.StatusAddr == "" {
		cfg.StatusAddr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	status, err := startStatus(cfg.StatusAddr, cfg.TLS, cfg.Logger.Named("status"))
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("status server: %w", err)
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		ln:       ln,
		addr:     ln.Addr().String(),
		status:   status,
		health:   health.NewServer(),
		serveErr: make(chan error, 1),
	}
	opts := []grpc.ServerOption{
		// Stop must not return while a handler may still touch the engine.
		grpc.WaitForHandlers(true),
		// TiKV limits neither direction (src/server/server.rs:
		// max_receive_message_len(-1), max_send_message_len(-1)): a client
		// must cope with a message as big as a row plus its old value
		// (CDC EventFeed, TIKV-PROTOCOLS §8.11). MaxInt32 is grpc-go's
		// "no limit".
		grpc.MaxRecvMsgSize(math.MaxInt32),
		grpc.MaxSendMsgSize(math.MaxInt32),
		// Accept client pings as often as client-go and TiCDC send them (every
		// 10 s); MinTime 0 would mean grpc-go's default of 5 minutes.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		grpc.ForceServerCodec(gogoCodec{fallback: encoding.GetCodec("proto")}),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	s.grpc = grpc.NewServer(opts...)
	tikvpb.RegisterTikvServer(s.grpc, s)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	for _, reg := range cfg.Register {
		reg(s.grpc)
	}
	if err := cfg.Cluster.SetStoreAddr(cfg.StoreID, s.addr); err != nil {
		ln.Close()
		status.close()
		return nil, fmt.Errorf("record store address: %w", err)
	}
	if err := cfg.Cluster.SetStoreStatusAddr(cfg.StoreID, status.addr()); err != nil {
		ln.Close()
		status.close()
		return nil, fmt.Errorf("record store status address: %w", err)
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go func() { s.serveErr <- s.grpc.Serve(ln) }()
	s.log.Info("store serving", "store", cfg.StoreID, "addr", s.addr, "status_addr", status.addr(), "tls", cfg.TLS != nil)
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.addr }

// StatusAddr returns the address the status HTTP API listens on.
func (s *Server) StatusAddr() string { return s.status.addr() }

// GCRatioThreshold returns the store's current gc.ratio-threshold (see
// GCEnabled).
func (s *Server) GCRatioThreshold() float64 { return s.status.ratioThreshold() }

// StoreID returns the store's id.
func (s *Server) StoreID() uint64 { return s.cfg.StoreID }

// Stop stops the server hard, like a killed process: the listener and every
// connection and stream close at once. When Stop returns, no request of this
// server touches the engine any more.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.stopped.Store(true)
		s.health.Shutdown()
		s.grpc.Stop()
		<-s.serveErr
		s.status.close()
		s.log.Info("store stopped", "store", s.cfg.StoreID)
	})
}

// apply runs fn as a data command of the region named by ctx, after the
// raftstore-like checks. A stopped server answers with a region error, as
// a closing TiKV does.
func (s *Server) apply(ctx *kvrpcpb.Context, keys [][]byte, fn func(r *cluster.Region) error) (regionErr errorpbError, err error) {
	if s.stopped.Load() {
		return closingError(), nil
	}
	return s.cfg.Cluster.Apply(s.cfg.StoreID, ctx, keys, fn)
}

// GetHealthFeedback answers client-go's health feedback probe.
func (s *Server) GetHealthFeedback(ctx context.Context, req *kvrpcpb.GetHealthFeedbackRequest) (*kvrpcpb.GetHealthFeedbackResponse, error) {
	return &kvrpcpb.GetHealthFeedbackResponse{HealthFeedback: s.healthFeedback()}, nil
}

func (s *Server) healthFeedback() *kvrpcpb.HealthFeedback {
	return &kvrpcpb.HealthFeedback{StoreId: s.cfg.StoreID, FeedbackSeqNo: s.feedbackSeq.Add(1), SlowScore: 1}
}

// GetStoreSafeTS answers client-go's safe-ts poll; the playground serves no
// stale reads, so it reports 0 (unknown).
func (s *Server) GetStoreSafeTS(ctx context.Context, req *kvrpcpb.StoreSafeTSRequest) (*kvrpcpb.StoreSafeTSResponse, error) {
	return &kvrpcpb.StoreSafeTSResponse{}, nil
}

// gogoCodec marshals kvproto (gogo-generated) messages with their own code:
// the default codec wraps them for the protobuf v2 runtime first, which
// costs as much again per message (an import Write stream carries about one
// message per version). Other messages (grpc health) use the default codec.
// Same wire format, same content type.
type gogoCodec struct{ fallback encoding.Codec }

type gogoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

func (c gogoCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(gogoMessage); ok {
		return m.Marshal()
	}
	return c.fallback.Marshal(v)
}

func (c gogoCodec) Unmarshal(data []byte, v any) error {
	if m, ok := v.(gogoMessage); ok {
		return m.Unmarshal(data)
	}
	return c.fallback.Unmarshal(data, v)
}

func (gogoCodec) Name() string { return "proto" }
