package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/storage/storagetest"
)

// The storage section measures put/get throughput of one large object
// through the storage seam, for file:// and for MinIO over loopback, beside
// the physical limits measured in the same run:
//
//   - raw file write+fsync / read: os.File with the same bytes, the disk's
//     (and page cache's) limit for file://;
//   - HTTP sink PUT/GET: a do-nothing net/http server on 127.0.0.1, the
//     loopback HTTP limit;
//   - MinIO raw PUT/GET: one presigned request with the same bytes, what
//     MinIO itself can take from a single stream, without our layer, the
//     SDK's multipart upload or retries.
//
// Each figure is the best of benchRounds runs. PITR_BENCH_STORAGE_MIB sets
// the object size (default 256).
func init() {
	register(Section{Name: "storage", Run: runStorageBench})
}

const benchRounds = 3

func runStorageBench(ctx context.Context, env *Env) ([]Row, error) {
	size, err := sizeMiB("PITR_BENCH_STORAGE_MIB", 256)
	if err != nil {
		return nil, err
	}
	data := storagetest.NewPattern(1, size).Bytes(0, size)
	b := &storageBench{env: env, data: data}

	// file:// and its limits.
	rawPath := filepath.Join(env.Tmp, "raw.bin")
	b.measure("raw file write+fsync", "", func() error { return writeFileSync(rawPath, data) })
	b.measure("raw file read", "", func() error { return readFile(rawPath) })
	fs, err := storage.Open(ctx, "file://"+filepath.Join(env.Tmp, "filestore"))
	if err != nil {
		return nil, err
	}
	defer fs.Close()
	b.measure("file:// put", "raw file write+fsync", func() error {
		return fs.PutReader(ctx, "bench/object", bytes.NewReader(data), size)
	})
	b.measure("file:// get", "raw file read", func() error { return getAll(ctx, fs, "bench/object") })
	if err := os.Remove(rawPath); err != nil {
		return nil, err
	}
	if err := fs.Delete(ctx, "bench/object"); err != nil {
		return nil, err
	}

	// Loopback HTTP limit.
	sink, err := startSink(data)
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	b.measure("HTTP sink PUT", "", func() error { return httpPut(ctx, sink.url, data) })
	b.measure("HTTP sink GET", "", func() error { return httpGet(ctx, sink.url) })

	// MinIO.
	bin, err := storagetest.FindToolIn(filepath.Join(env.Root, ".tools"), "minio")
	if err != nil {
		return nil, fmt.Errorf("%w (run scripts/tools.sh)", err)
	}
	m, err := storagetest.LaunchMinIO(bin, filepath.Join(env.Tmp, "minio"))
	if err != nil {
		return nil, err
	}
	defer m.Stop()
	if err := m.EnsureBucket(ctx, "bench"); err != nil {
		return nil, err
	}
	presign := s3.NewPresignClient(m.S3Client())
	putReq, err := presign.PresignPutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("bench"), Key: aws.String("raw/object")})
	if err != nil {
		return nil, err
	}
	getReq, err := presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("bench"), Key: aws.String("raw/object")})
	if err != nil {
		return nil, err
	}
	b.measure("MinIO raw PUT (1 request)", "HTTP sink PUT", func() error { return httpPut(ctx, putReq.URL, data) })
	b.measure("MinIO raw GET (1 request)", "HTTP sink GET", func() error { return httpGet(ctx, getReq.URL) })
	s3s, err := storage.Open(ctx, m.URL("bench", "pitr"))
	if err != nil {
		return nil, err
	}
	defer s3s.Close()
	b.measure("s3:// put (MinIO)", "MinIO raw PUT (1 request)", func() error {
		return s3s.PutReader(ctx, "bench/object", bytes.NewReader(data), size)
	})
	b.measure("s3:// get (MinIO)", "MinIO raw GET (1 request)", func() error { return getAll(ctx, s3s, "bench/object") })
	if b.err != nil {
		return nil, b.err
	}
	env.Logf("object size %d MiB, best of %d rounds", size>>20, benchRounds)
	return b.rows(), nil
}

type storageBench struct {
	env   *Env
	data  []byte
	names []string
	best  map[string]float64
	base  map[string]string
	err   error
}

// measure runs fn benchRounds times and keeps the best MB/s.
func (b *storageBench) measure(name, baseline string, fn func() error) {
	if b.err != nil {
		return
	}
	if b.best == nil {
		b.best, b.base = map[string]float64{}, map[string]string{}
	}
	for i := 0; i < benchRounds; i++ {
		start := time.Now()
		if err := fn(); err != nil {
			b.err = fmt.Errorf("%s: %w", name, err)
			return
		}
		mbps := float64(len(b.data)) / 1e6 / time.Since(start).Seconds()
		b.env.Logf("%-28s round %d: %.0f MB/s", name, i+1, mbps)
		if mbps > b.best[name] {
			b.best[name] = mbps
		}
	}
	b.names = append(b.names, name)
	b.base[name] = baseline
}

func (b *storageBench) rows() []Row {
	rows := make([]Row, 0, len(b.names))
	for _, n := range b.names {
		r := Row{Name: n, Value: b.best[n], Unit: "MB/s", Baseline: b.base[n]}
		if bv := b.best[r.Baseline]; r.Baseline != "" && bv > 0 {
			r.Ratio = r.Value / bv
		}
		rows = append(rows, r)
	}
	return rows
}

func writeFileSync(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += 8 << 20 {
		end := min(off+8<<20, len(data))
		if _, err := f.Write(data[off:end]); err != nil {
			_ = f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func readFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, f)
	return errors.Join(err, f.Close())
}

func getAll(ctx context.Context, s storage.Storage, key string) error {
	rc, err := s.NewReader(ctx, key)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rc)
	return errors.Join(err, rc.Close())
}

func httpPut(ctx context.Context, url string, data []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(data))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("PUT: %s", resp.Status)
	}
	return nil
}

func httpGet(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	err = errors.Join(err, resp.Body.Close())
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET: %s", resp.Status)
	}
	return err
}

// sink is an HTTP server on 127.0.0.1 that discards PUT bodies and serves
// data on GET.
type sink struct {
	url string
	srv *http.Server
	ln  net.Listener
}

func startSink(data []byte) (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut {
				_, _ = io.Copy(io.Discard, r.Body)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data)
		}),
	}
	go func() { _ = srv.Serve(ln) }()
	return &sink{url: "http://" + ln.Addr().String() + "/object", srv: srv, ln: ln}, nil
}

func (s *sink) Close() error { return s.srv.Close() }
