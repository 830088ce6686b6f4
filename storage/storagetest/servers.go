package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
)

// Environment variables the helpers read.
const (
	// EnvRequireBackends, when "1", turns a missing server binary from a
	// skip into a failure. A non-empty CI does the same.
	EnvRequireBackends = "PITR_REQUIRE_BACKENDS"
	// EnvToolsDir overrides <module root>/.tools as the place to look for
	// bin/minio, bin/fake-gcs-server and node_modules/.bin/azurite-blob.
	EnvToolsDir = "PITR_TOOLS_DIR"
)

// serverStartTimeout bounds how long a server may take to become ready.
const serverStartTimeout = 60 * time.Second

// RequireBackends reports whether missing backends must fail the test
// (CI non-empty or PITR_REQUIRE_BACKENDS=1).
func RequireBackends() bool {
	return os.Getenv("CI") != "" || os.Getenv(EnvRequireBackends) == "1"
}

// ToolsDir returns $PITR_TOOLS_DIR or <module root>/.tools, where the module
// root is the nearest directory above the working directory with a go.mod.
func ToolsDir() string {
	if d := os.Getenv(EnvToolsDir); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return ".tools"
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".tools")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ".tools"
		}
		dir = parent
	}
}

// FindTool looks for an executable in ToolsDir()/bin,
// ToolsDir()/node_modules/.bin and then $PATH.
func FindTool(name string) (string, error) {
	return FindToolIn(ToolsDir(), name)
}

// FindToolIn is FindTool with an explicit tools directory.
func FindToolIn(tools, name string) (string, error) {
	for _, p := range []string{filepath.Join(tools, "bin", name), filepath.Join(tools, "node_modules", ".bin", name)} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in %s/{bin,node_modules/.bin} or $PATH; run scripts/tools.sh", name, tools)
}

// needTool returns the tool's path, or skips the test (fails it when
// RequireBackends).
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := FindTool(name)
	if err != nil {
		if RequireBackends() {
			t.Fatalf("backend required (CI or %s=1): %v", EnvRequireBackends, err)
		}
		t.Skipf("skipping: %v", err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// process is a child server process with its output in a log file.
type process struct {
	name     string
	cmd      *exec.Cmd
	logPath  string
	logStart int64 // size of the (appended) log when this process started
	done     chan struct{}
	err      error
}

// errPortInUse: the server could not bind its port (another process took
// it between FreePort and the server's bind; outgoing connections use the
// same port range). Callers pick a new port and try again.
var errPortInUse = errors.New("port already in use")

// startAttempts bounds the retries after errPortInUse.
const startAttempts = 5

func startProcess(name, logPath string, env []string, bin string, args ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	var logStart int64
	if fi, err := logf.Stat(); err == nil {
		logStart = fi.Size()
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group, so a terminal's ^C goes to the test, which then
	// stops the server itself; and killed with the test binary if that
	// dies without running its cleanups (a panic, a timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, logStart: logStart, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the exit.
func (p *process) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop asks politely, then kills after a grace period.
func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// logTail returns the end of what this process logged.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if int64(len(b)) >= p.logStart {
		b = b[p.logStart:]
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// waitReady polls probe until it succeeds, the process exits or the
// deadline passes.
func (p *process) waitReady(probe func() error) error {
	deadline := time.Now().Add(serverStartTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = probe(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("%s not ready after %v: %v\n--- log ---\n%s", p.name, serverStartTimeout, last, p.logTail())
		}
		select {
		case <-p.done:
			log := p.logTail()
			if strings.Contains(log, "already in use") || strings.Contains(log, "EADDRINUSE") {
				return fmt.Errorf("%s: %w", p.name, errPortInUse)
			}
			return fmt.Errorf("%s exited during startup: %v\n--- log ---\n%s", p.name, p.err, log)
		case <-tick.C:
		}
	}
}

func httpProbe(url string, okStatus func(int) bool) func() error {
	client := &http.Client{Timeout: 2 * time.Second}
	return func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if !okStatus(resp.StatusCode) {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

var prefixSeq atomic.Int64

// uniquePrefix returns a fresh key prefix, so tests can share one bucket.
func uniquePrefix() string {
	return fmt.Sprintf("t%04d", prefixSeq.Add(1))
}

// ---------------------------------------------------------------- MinIO

// MinIO is a MinIO server on 127.0.0.1.
type MinIO struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Dir       string // holds data/ (kept across restarts) and minio.log

	bin     string
	port    int
	console int
	mu      sync.Mutex
	proc    *process
	buckets sync.Map
}

// StartMinIO starts MinIO on a free loopback port with a fresh data
// directory, and stops it in t.Cleanup. A missing binary skips the test
// (fails it under RequireBackends).
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	m, err := LaunchMinIO(needTool(t, "minio"), t.TempDir())
	require.NoError(t, err)
	t.Cleanup(m.Stop)
	return m
}

// LaunchMinIO starts the MinIO binary bin with data under dir and waits
// until it serves requests. The caller must Stop it.
func LaunchMinIO(bin, dir string) (*MinIO, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		console, err := FreePort()
		if err != nil {
			return nil, err
		}
		m := &MinIO{
			Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
			AccessKey: "pitr-test-access",
			SecretKey: "pitr-test-secret-" + strconv.FormatInt(time.Now().UnixNano(), 36),
			Dir:       dir,
			bin:       bin,
			port:      port,
			console:   console,
		}
		err = m.start()
		if errors.Is(err, errPortInUse) && attempt < startAttempts {
			continue
		}
		return m, err
	}
}

// Restart starts the server again on the same port and data directory
// (after Kill or Stop) and waits until it serves requests. It is a no-op
// while the server runs.
func (m *MinIO) Restart() error {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		// The port must stay the same; whoever holds it briefly (an
		// outgoing connection) will let go.
		if err = m.start(); !errors.Is(err, errPortInUse) {
			return err
		}
		waitPortFree(m.port, 5*time.Second)
	}
	return err
}

// waitPortFree polls until port can be bound on 127.0.0.1, or the timeout
// passes.
func waitPortFree(port int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			_ = l.Close()
			return
		}
		<-tick.C
	}
}

func (m *MinIO) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil && !m.proc.exited() {
		return nil
	}
	p, err := startProcess("minio", filepath.Join(m.Dir, "minio.log"),
		[]string{
			"MINIO_ROOT_USER=" + m.AccessKey,
			"MINIO_ROOT_PASSWORD=" + m.SecretKey,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"MINIO_CI_CD=1",
		},
		m.bin, "server", "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", m.port),
		"--console-address", fmt.Sprintf("127.0.0.1:%d", m.console), filepath.Join(m.Dir, "data"))
	if err != nil {
		return err
	}
	m.proc = p
	health := httpProbe(m.Endpoint+"/minio/health/ready", func(c int) bool { return c == 200 })
	client := m.S3Client()
	return p.waitReady(func() error {
		if err := health(); err != nil {
			return err
		}
		// "ready" can come before the object layer answers requests
		// (503 ServiceUnavailable right after a restart under load).
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		return err
	})
}

// Kill SIGKILLs the server and waits until it is gone.
func (m *MinIO) Kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		m.proc.kill()
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after a grace period).
func (m *MinIO) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		m.proc.stop()
	}
}

// S3Client returns an SDK client for direct (non-pitr) access.
func (m *MinIO) S3Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(m.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(m.AccessKey, m.SecretKey, ""),
	})
}

// EnsureBucket creates a bucket unless this helper already did.
func (m *MinIO) EnsureBucket(ctx context.Context, bucket string) error {
	if _, ok := m.buckets.Load(bucket); ok {
		return nil
	}
	if _, err := m.S3Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	m.buckets.Store(bucket, true)
	return nil
}

// CreateBucket is EnsureBucket for tests.
func (m *MinIO) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, m.EnsureBucket(ctx, bucket))
}

// URL returns the s3:// URL of bucket/prefix, credentials included.
func (m *MinIO) URL(bucket, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", m.Endpoint)
	q.Set("region", "us-east-1")
	q.Set("use_path_style", "true")
	q.Set("access_key", m.AccessKey)
	q.Set("secret_key", m.SecretKey)
	return "s3://" + bucket + "/" + prefix + "?" + q.Encode()
}

// NewStorage opens a Storage on a fresh prefix of the bucket "pitr-test".
func (m *MinIO) NewStorage(t testing.TB, opts ...storage.Option) storage.Storage {
	t.Helper()
	m.CreateBucket(t, "pitr-test")
	return openForTest(t, m.URL("pitr-test", uniquePrefix()), opts...)
}

func openForTest(t testing.TB, rawURL string, opts ...storage.Option) storage.Storage {
	t.Helper()
	s, err := storage.Open(context.Background(), rawURL, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// ---------------------------------------------------------------- Azurite

// AzuriteAccount and AzuriteKey are Azurite's well-known development
// credentials (public, documented by Microsoft).
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Azurite is an Azurite blob server on 127.0.0.1, stopped by t.Cleanup.
type Azurite struct {
	Endpoint string // service URL: http://127.0.0.1:PORT/devstoreaccount1
	proc     *process
	conts    sync.Map
}

// StartAzurite starts azurite-blob on a free loopback port.
func StartAzurite(t testing.TB) *Azurite {
	t.Helper()
	bin := needTool(t, "azurite-blob")
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		require.NoError(t, err)
		a := &Azurite{Endpoint: fmt.Sprintf("http://127.0.0.1:%d/%s", port, AzuriteAccount)}
		a.proc, err = startProcess("azurite", filepath.Join(dir, "azurite.log"), nil, bin,
			"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port), "--location", dir,
			"--skipApiVersionCheck", "--loose", "--silent",
			// Azurite phones home by default; tests talk to loopback only.
			"--disableTelemetry")
		require.NoError(t, err)
		t.Cleanup(a.proc.stop)
		// Any HTTP answer means it listens; Azurite answers 400 to a bare GET.
		err = a.proc.waitReady(httpProbe(fmt.Sprintf("http://127.0.0.1:%d/", port), func(int) bool { return true }))
		if errors.Is(err, errPortInUse) && attempt < startAttempts {
			continue
		}
		require.NoError(t, err)
		return a
	}
}

// CreateContainer creates a container (once).
func (a *Azurite) CreateContainer(t testing.TB, name string) {
	t.Helper()
	if _, loaded := a.conts.LoadOrStore(name, true); loaded {
		return
	}
	cred, err := azblob.NewSharedKeyCredential(AzuriteAccount, AzuriteKey)
	require.NoError(t, err)
	c, err := container.NewClientWithSharedKeyCredential(a.Endpoint+"/"+name, cred, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.Create(ctx, nil)
	require.NoError(t, err, "create container %s", name)
}

// URL returns the azblob:// URL of container/prefix, credentials included.
func (a *Azurite) URL(cont, prefix string) string {
	q := url.Values{}
	q.Set("endpoint", a.Endpoint)
	q.Set("storage_account", AzuriteAccount)
	q.Set("account_key", AzuriteKey)
	return "azblob://" + cont + "/" + prefix + "?" + q.Encode()
}

// NewStorage opens a Storage on a fresh prefix of the container "pitr-test".
func (a *Azurite) NewStorage(t testing.TB, opts ...storage.Option) storage.Storage {
	t.Helper()
	a.CreateContainer(t, "pitr-test")
	return openForTest(t, a.URL("pitr-test", uniquePrefix()), opts...)
}

// ---------------------------------------------------------------- fake-gcs-server

// FakeGCS is a fake-gcs-server on 127.0.0.1, stopped by t.Cleanup.
type FakeGCS struct {
	Endpoint string // http://127.0.0.1:PORT
	proc     *process
	buckets  sync.Map
}

// StartFakeGCS starts fake-gcs-server (in-memory backend) on a free
// loopback port.
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	bin := needTool(t, "fake-gcs-server")
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		require.NoError(t, err)
		f := &FakeGCS{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port)}
		f.proc, err = startProcess("fake-gcs-server", filepath.Join(dir, "fake-gcs.log"), nil, bin,
			"-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port),
			"-backend", "memory", "-external-url", f.Endpoint, "-public-host", fmt.Sprintf("127.0.0.1:%d", port),
			"-log-level", "warn")
		require.NoError(t, err)
		t.Cleanup(f.proc.stop)
		err = f.proc.waitReady(httpProbe(f.Endpoint+"/storage/v1/b", func(c int) bool { return c == 200 }))
		if errors.Is(err, errPortInUse) && attempt < startAttempts {
			continue
		}
		require.NoError(t, err)
		return f
	}
}

// CreateBucket creates a bucket (once).
func (f *FakeGCS) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if _, loaded := f.buckets.LoadOrStore(name, true); loaded {
		return
	}
	body := fmt.Sprintf(`{"name":%q}`, name)
	resp, err := http.Post(f.Endpoint+"/storage/v1/b?project=pitr-test", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var msg bytes.Buffer
	_, _ = msg.ReadFrom(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, "create bucket: %s", msg.String())
}

// URL returns the gs:// URL of bucket/prefix with the endpoint override.
func (f *FakeGCS) URL(bucket, prefix string) string {
	return "gs://" + bucket + "/" + prefix + "?endpoint=" + url.QueryEscape(f.Endpoint)
}

// NewStorage opens a Storage on a fresh prefix of the bucket "pitr-test".
func (f *FakeGCS) NewStorage(t testing.TB, opts ...storage.Option) storage.Storage {
	t.Helper()
	f.CreateBucket(t, "pitr-test")
	return openForTest(t, f.URL("pitr-test", uniquePrefix()), opts...)
}
