package pd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/pdpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/pitr-io/pitr/playground/certs"
	"github.com/pitr-io/pitr/playground/cluster"
)

// DefaultGCLifeTime is TiDB's default tidb_gc_life_time.
const DefaultGCLifeTime = 10 * time.Minute

// etcdReadyTimeout bounds how long Start waits for the embedded etcd.
const etcdReadyTimeout = 30 * time.Second

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("pd server is closed")

// Config configures a Server.
type Config struct {
	// Dir is the data directory; the embedded etcd lives under Dir/pd. Empty
	// means a temporary directory removed on Close.
	Dir string
	// ClientAddr is the host:port of the PD client URL (also the etcd client
	// URL). Port 0 picks a free port. Empty means "127.0.0.1:0".
	ClientAddr string
	// Cluster is the region book PD reports. Required.
	Cluster *cluster.Cluster
	// Logger receives the server's logs (nil = discard).
	Logger hclog.Logger
	// GCLifeTime is how far behind the given "now" AdvanceGC keeps the GC
	// safepoint (0 = DefaultGCLifeTime).
	GCLifeTime time.Duration
	// BalanceInterval, when positive, runs PD's schedulers every interval:
	// balance-leader moves leaders and the merge checker merges adjacent
	// regions, each honouring its pause and the schedule config (see
	// schedule.go). Off by default, so tests control the topology.
	BalanceInterval time.Duration
	// LeadersUnknownFor models a PD that restarted: for this long after
	// Start, regions are reported without a leader until a topology change
	// names them (a leader's heartbeat), as real PD loads regions from
	// storage with no leader (pkg/storage/endpoint/meta.go LoadRegions:
	// core.NewRegionInfo(region, nil)) and learns leaders from region
	// heartbeats (TiKV pd-heartbeat-tick-interval, 60s). 0: leaders are
	// known at once (a freshly bootstrapped cluster).
	LeadersUnknownFor time.Duration
	// TLS, when set, is PD's security config (security.cacert-path,
	// cert-path, key-path; only CA, Cert and Key are used): the client
	// URL, which carries pdpb gRPC, etcd and the HTTP API, and the peer
	// URL serve https and require a client certificate signed by the CA,
	// as PD does (pkg/utils/grpcutil ToTLSConfig, and the embedded etcd's
	// ClientTLSInfo/PeerTLSInfo with ClientCertAuth in server/config).
	// PD's own etcd client presents PD's certificate. Nil serves
	// plaintext.
	TLS *certs.Paths
}

// Server is a running playground PD.
type Server struct {
	cfg       Config
	log       hclog.Logger
	cluster   *cluster.Cluster
	clusterID uint64
	root      string // "/pd/<cluster_id>"
	dir       string
	ownDir    bool

	etcd     *embed.Etcd
	cli      *clientv3.Client
	addr     string
	peerURL  string
	memberID uint64

	tso *tsoAllocator

	// gcMu serialises safepoint read-modify-writes (PD's serviceSafePointLock).
	gcMu sync.Mutex
	// skew is added to the wall clock used for safepoint TTLs, so tests can
	// move time forward.
	skew atomic.Int64

	// sched is PD's scheduling state (schedulers' pauses, schedule config),
	// served on the HTTP API and used by the balancer.
	sched *schedule
	// bg owns the balancer goroutine; balancerRounds counts its rounds.
	bg             sync.WaitGroup
	balancerRounds atomic.Int64
	// opMu serialises balancer rounds with pauses and config changes.
	opMu sync.Mutex

	downMu    sync.Mutex
	downSince map[uint64]time.Time // store id -> when PD saw it go down
	unwatch   func()

	// Leaders after a restart: unknown until leadersAt, except for the
	// regions a topology change reported since (heard). Guarded by downMu.
	leadersAt time.Time
	heard     map[uint64]bool

	scans atomic.Uint64 // ScanRegions and BatchScanRegions calls

	minRes minResolved // stores' min resolved ts (recovery.go)

	closing   chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Start starts the embedded etcd with the PD service on its client URL and
// returns once both are ready.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("pd: Config.Cluster is required")
	}
	if cfg.Cluster.ID() == 0 {
		return nil, errors.New("pd: cluster id must not be 0")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.GCLifeTime <= 0 {
		cfg.GCLifeTime = DefaultGCLifeTime
	}
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = "127.0.0.1:0"
	}
	host, portStr, err := net.SplitHostPort(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("pd: client addr %q: %w", cfg.ClientAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("pd: client addr %q: bad port", cfg.ClientAddr)
	}

	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.Named("pd"),
		cluster:   cfg.Cluster,
		clusterID: cfg.Cluster.ID(),
		dir:       cfg.Dir,
		downSince: map[uint64]time.Time{},
		heard:     map[uint64]bool{},
		closing:   make(chan struct{}),
	}
	if cfg.LeadersUnknownFor > 0 {
		s.leadersAt = time.Now().Add(cfg.LeadersUnknownFor)
	}
	s.root = fmt.Sprintf("/pd/%d", s.clusterID)
	s.sched = newSchedule(time.Now())
	s.tso = newTSOAllocator(s.saveTSOLimit)
	if s.dir == "" {
		d, err := os.MkdirTemp("", "pitr-pd-*")
		if err != nil {
			return nil, fmt.Errorf("pd: temp dir: %w", err)
		}
		s.dir, s.ownDir = d, true
	}
	fail := func(err error) (*Server, error) {
		s.shutdown()
		return nil, err
	}

	// Free ports are picked by binding and releasing them, so another process
	// may grab one in between; retry a few times when that happens.
	for attempt := 0; ; attempt++ {
		clientPort := port
		if clientPort == 0 {
			if clientPort, err = freePort(host); err != nil {
				return fail(err)
			}
		}
		peerPort, perr := freePort(host)
		if perr != nil {
			return fail(perr)
		}
		err = s.startEtcd(ctx, host, clientPort, peerPort)
		if err == nil {
			break
		}
		if attempt >= 4 || !errors.Is(err, syscall.EADDRINUSE) {
			return fail(err)
		}
		s.log.Debug("port taken, retrying", "error", err)
	}

	ccfg := clientv3.Config{
		Endpoints:   []string{s.URL()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if cfg.TLS != nil {
		if ccfg.TLS, err = s.tlsInfo(false).ClientConfig(); err != nil {
			return fail(fmt.Errorf("pd: etcd client tls: %w", err))
		}
	}
	s.cli, err = clientv3.New(ccfg)
	if err != nil {
		return fail(fmt.Errorf("pd: etcd client: %w", err))
	}
	if err := s.initTSO(ctx); err != nil {
		return fail(err)
	}

	// Stores that are already down when PD starts count as down from now.
	for _, st := range s.cluster.Stores() {
		if !st.Up {
			s.downSince[st.ID] = s.wallNow()
		}
	}
	s.unwatch = s.cluster.Watch(s.onTopology)
	if cfg.BalanceInterval > 0 {
		s.bg.Add(1)
		go s.runBalancer(cfg.BalanceInterval)
	}

	s.log.Info("pd started", "addr", s.addr, "cluster_id", s.clusterID, "dir", s.dir, "tls", cfg.TLS != nil)
	return s, nil
}

func (s *Server) startEtcd(ctx context.Context, host string, clientPort, peerPort int) error {
	clientURL := url.URL{Scheme: s.scheme(), Host: net.JoinHostPort(host, strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: s.scheme(), Host: net.JoinHostPort(host, strconv.Itoa(peerPort))}

	ec := embed.NewConfig()
	if s.cfg.TLS != nil {
		// An https client URL makes etcd serve gRPC (ours and its own),
		// HTTP and the UserHandlers on one TLS listener, requiring client
		// certificates (embed/serve.go, the secure branch).
		ec.ClientTLSInfo = s.tlsInfo(true)
		ec.PeerTLSInfo = s.tlsInfo(true)
	}
	ec.Name = "pd"
	ec.Dir = filepath.Join(s.dir, "pd")
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.InitialClusterToken = "pitr-playground-pd"
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"
	ec.Logger = "zap"
	ec.LogLevel = "error"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger(s.cfg.Logger.Named("etcd")))
	ec.ServiceRegister = func(gs *grpc.Server) {
		// etcd already registers grpc.health.v1.Health (SERVING for ""),
		// which is what PD serves too; registering it again would panic.
		pdpb.RegisterPDServer(gs, &grpcService{s: s})
	}
	// PD serves its HTTP API on the client URL too (tikv/pd server.go hands
	// its API handlers to the embedded etcd as UserHandlers).
	ec.UserHandlers = map[string]http.Handler{APIPrefix: s.apiHandler()}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("pd: start etcd: %w", err)
	}
	timer := time.NewTimer(etcdReadyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("pd: etcd: %w", err)
	case <-timer.C:
		e.Close()
		return errors.New("pd: etcd did not become ready in time")
	case <-ctx.Done():
		e.Close()
		return ctx.Err()
	}
	s.etcd = e
	s.addr = clientURL.Host
	s.peerURL = peerURL.String()
	s.memberID = uint64(e.Server.ID())
	return nil
}

// etcdLogger routes etcd's zap logs at error level and above to hclog.
func etcdLogger(l hclog.Logger) *zap.Logger {
	w := l.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error})
	enc := zapcore.NewConsoleEncoder(zapcore.EncoderConfig{
		MessageKey:     "msg",
		LevelKey:       "",
		TimeKey:        "",
		NameKey:        "logger",
		EncodeDuration: zapcore.StringDurationEncoder,
	})
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), zapcore.ErrorLevel))
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pd: pick free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pd: pick free port: %w", err)
	}
	return port, nil
}

// Addr returns the host:port of the PD client URL, which also serves etcd.
func (s *Server) Addr() string { return s.addr }

// URL returns the PD client URL as PD reports it: https:// when TLS is on.
func (s *Server) URL() string { return s.scheme() + "://" + s.addr }

func (s *Server) scheme() string {
	if s.cfg.TLS != nil {
		return "https"
	}
	return "http"
}

// tlsInfo is the etcd form of cfg.TLS; server adds the requirement of a
// verified client certificate.
func (s *Server) tlsInfo(server bool) transport.TLSInfo {
	return transport.TLSInfo{
		CertFile:       s.cfg.TLS.Cert,
		KeyFile:        s.cfg.TLS.Key,
		TrustedCAFile:  s.cfg.TLS.CA,
		ClientCertAuth: server,
	}
}

// Etcd returns a client of the embedded etcd. It is owned by the Server and
// closed by Close.
func (s *Server) Etcd() *clientv3.Client { return s.cli }

// ClusterID returns the PD cluster id (the region book's id).
func (s *Server) ClusterID() uint64 { return s.clusterID }

// Close stops the PD service and the embedded etcd, and removes the data
// directory when Start created it.
func (s *Server) Close() error {
	s.shutdown()
	return s.closeErr
}

func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.bg.Wait()
		if s.unwatch != nil {
			s.unwatch()
		}
		var errs []error
		if s.cli != nil {
			if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("close etcd client: %w", err))
			}
		}
		if s.etcd != nil {
			s.etcd.Close()
		}
		if s.ownDir {
			if err := os.RemoveAll(s.dir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", s.dir, err))
			}
		}
		s.closeErr = errors.Join(errs...)
		s.log.Info("pd stopped", "addr", s.addr)
	})
}

func (s *Server) isClosed() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// onTopology records when stores go down, for down_peers. It runs under the
// cluster's write lock and must not call back into the cluster.
func (s *Server) onTopology(ev cluster.Event) {
	s.sched.onTopology(ev, s.wallNow())
	switch ev.Kind {
	case cluster.EventStoreDown:
		s.downMu.Lock()
		s.downSince[ev.StoreID] = s.wallNow()
		s.downMu.Unlock()
	case cluster.EventStoreUp:
		s.downMu.Lock()
		delete(s.downSince, ev.StoreID)
		s.downMu.Unlock()
	default:
		// A leader change, split, merge or conf change makes the leader
		// heartbeat the region at once (raftstore heartbeat_pd on role
		// change and after admin commands).
		s.downMu.Lock()
		for _, r := range ev.New {
			s.heard[r.ID] = true
		}
		s.downMu.Unlock()
	}
}

// leaderKnown reports whether PD has heard from the region's leader since
// it started (always true once LeadersUnknownFor has passed).
func (s *Server) leaderKnown(regionID uint64) bool {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	if s.leadersAt.IsZero() {
		return true
	}
	if !time.Now().Before(s.leadersAt) {
		s.leadersAt, s.heard = time.Time{}, map[uint64]bool{}
		return true
	}
	return s.heard[regionID]
}

// RegionScans returns how many ScanRegions and BatchScanRegions requests
// the server answered.
func (s *Server) RegionScans() uint64 { return s.scans.Load() }

// wallNow is the wall clock of safepoint TTLs and down-peer durations.
func (s *Server) wallNow() time.Time {
	return time.Now().Add(time.Duration(s.skew.Load()))
}
