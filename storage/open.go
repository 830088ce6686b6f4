package storage

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"
)

type openConfig struct {
	partSize    int64
	concurrency int
	logger      hclog.Logger
}

const (
	defaultPartSize    = 8 << 20
	defaultConcurrency = 4
	minS3PartSize      = 5 << 20
)

// Open opens the storage at rawURL. See the package documentation for the
// URL forms and the credentials each scheme reads. Errors never contain
// credentials.
func Open(ctx context.Context, rawURL string, opts ...Option) (Storage, error) {
	cfg := openConfig{partSize: defaultPartSize, concurrency: defaultConcurrency}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.logger == nil {
		cfg.logger = hclog.NewNullLogger()
	}
	if cfg.concurrency < 1 {
		cfg.concurrency = 1
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the whole URL, secrets included.
		return nil, fmt.Errorf("open storage %s: malformed URL", RedactURL(rawURL))
	}
	redURL := redactParsedURL(u)
	var s Storage
	switch u.Scheme {
	case "file":
		s, err = openFile(u, cfg)
	case "mem":
		s, err = openMem(u, cfg)
	case "s3":
		s, err = openS3(ctx, u, cfg)
	case "gs":
		s, err = openGCS(ctx, u, cfg)
	case "azblob":
		s, err = openAzure(ctx, u, cfg)
	case "":
		return nil, fmt.Errorf("open storage %s: missing scheme (want s3://, gs://, azblob://, file:// or mem://)", redURL)
	default:
		return nil, fmt.Errorf("open storage %s: unsupported scheme %q", redURL, u.Scheme)
	}
	if err != nil {
		return nil, fmt.Errorf("open storage %s: %w", redURL, err)
	}
	cfg.logger.Debug("opened storage", "url", s.URL())
	return s, nil
}

// params consumes the URL query: get returns a parameter and marks it as
// known, and done rejects the unknown rest (by name only, since values may
// be secrets).
type params struct {
	q    url.Values
	seen map[string]bool
}

func newParams(u *url.URL) *params {
	return &params{q: u.Query(), seen: map[string]bool{}}
}

func (p *params) get(name string) string {
	p.seen[name] = true
	return p.q.Get(name)
}

func (p *params) done() error {
	var unknown []string
	for k := range p.q {
		if !p.seen[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown URL parameter(s) %s", strings.Join(unknown, ", "))
	}
	return nil
}

// urlPrefix turns the URL path into a key prefix ("" or "a/b/").
func urlPrefix(u *url.URL) (string, error) {
	p := strings.Trim(u.Path, "/")
	if p == "" {
		return "", nil
	}
	if err := checkKey(p, false); err != nil {
		return "", fmt.Errorf("bad prefix in URL path: %v", err)
	}
	return p + "/", nil
}
