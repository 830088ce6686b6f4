package storage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"

	"cloud.google.com/go/storage"
	"gocloud.dev/blob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/gcp"
)

// gcsHosts are the hosts the GCS client talks to; an endpoint override
// redirects them.
var gcsHosts = map[string]bool{"storage.googleapis.com": true, "www.googleapis.com": true}

// openGCS opens gs://bucket[/prefix][?endpoint=http://host:port].
//
// With endpoint (an emulator such as fake-gcs-server), requests go there
// unauthenticated. Otherwise STORAGE_EMULATOR_HOST=host:port does the same
// (gocloud honours it), and without either, Application Default
// Credentials (GOOGLE_APPLICATION_CREDENTIALS, metadata server) are used.
func openGCS(ctx context.Context, u *url.URL, cfg openConfig) (Storage, error) {
	if u.Host == "" {
		return nil, errors.New("missing bucket name (gs://BUCKET/prefix)")
	}
	p := newParams(u)
	endpoint := p.get("endpoint")
	if err := p.done(); err != nil {
		return nil, err
	}
	prefix, err := urlPrefix(u)
	if err != nil {
		return nil, err
	}
	red := newRedactor()
	var client *gcp.HTTPClient
	switch {
	case endpoint != "":
		eu, err := url.Parse(endpoint)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, errors.New("endpoint must be an http:// or https:// URL")
		}
		client = &gcp.HTTPClient{Client: http.Client{Transport: &redirectTransport{
			scheme: eu.Scheme, host: eu.Host, base: http.DefaultTransport,
		}}}
	case os.Getenv("STORAGE_EMULATOR_HOST") != "":
		client = gcp.NewAnonymousHTTPClient(gcp.DefaultTransport())
	default:
		creds, err := gcp.DefaultCredentials(ctx)
		if err != nil {
			return nil, errors.New(red.redact(fmt.Sprintf("GCS credentials: %v", err)))
		}
		client, err = gcp.NewHTTPClient(gcp.DefaultTransport(), gcp.CredentialsTokenSource(creds))
		if err != nil {
			return nil, errors.New(red.redact(fmt.Sprintf("GCS client: %v", err)))
		}
	}
	bucket, err := gcsblob.OpenBucket(ctx, client, u.Host, nil)
	if err != nil {
		return nil, errors.New(red.redact(err.Error()))
	}
	return &blobStorage{
		bucket:      bucket,
		prefix:      prefix,
		url:         redactParsedURL(u),
		red:         red,
		cfg:         cfg,
		conditional: gcsDoesNotExist,
		ifMatch:     gcsGenerationMatch,
		version:     gcsVersion,
	}, nil
}

// gcsDoesNotExist makes the write conditional on ifGenerationMatch=0.
func gcsDoesNotExist(asFunc func(any) bool) error {
	var obj **storage.ObjectHandle
	if !asFunc(&obj) {
		return errors.New("gcs: conditional write: object handle not reachable")
	}
	*obj = (*obj).If(storage.Conditions{DoesNotExist: true})
	return nil
}

// redirectTransport sends requests for the GCS hosts to an emulator.
type redirectTransport struct {
	scheme, host string
	base         http.RoundTripper
}

func (t *redirectTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if gcsHosts[req.URL.Host] {
		req = req.Clone(req.Context())
		req.URL.Scheme = t.scheme
		req.URL.Host = t.host
		req.Host = t.host
	}
	return t.base.RoundTrip(req)
}

// gcsVersion is an object's generation.
func gcsVersion(a *blob.Attributes) (Version, error) {
	var oa storage.ObjectAttrs
	if !a.As(&oa) {
		return NoVersion, errors.New("gcs: object attributes not reachable")
	}
	return Version(strconv.FormatInt(oa.Generation, 10)), nil
}

// gcsGenerationMatch makes the write conditional on ifGenerationMatch=v
// (0, DoesNotExist, for NoVersion); a mismatch is 412.
func gcsGenerationMatch(v Version) func(asFunc func(any) bool) error {
	if v == NoVersion {
		return gcsDoesNotExist
	}
	return func(asFunc func(any) bool) error {
		gen, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || gen <= 0 {
			return fmt.Errorf("gcs: conditional write: bad generation %q", v)
		}
		var obj **storage.ObjectHandle
		if !asFunc(&obj) {
			return errors.New("gcs: conditional write: object handle not reachable")
		}
		*obj = (*obj).If(storage.Conditions{GenerationMatch: gen})
		return nil
	}
}
