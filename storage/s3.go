package storage

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	s3manager "github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"gocloud.dev/blob/s3blob"
)

// openS3 opens s3://bucket[/prefix]?endpoint=&region=&use_path_style=&access_key=&secret_key=&session_token=
func openS3(ctx context.Context, u *url.URL, cfg openConfig) (Storage, error) {
	if u.Host == "" {
		return nil, errors.New("missing bucket name (s3://BUCKET/prefix)")
	}
	if cfg.partSize < minS3PartSize {
		return nil, fmt.Errorf("part size %d is below S3's minimum of %d", cfg.partSize, minS3PartSize)
	}
	p := newParams(u)
	endpoint := p.get("endpoint")
	region := p.get("region")
	pathStyle := false
	if v := p.get("use_path_style"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("use_path_style: want true or false")
		}
		pathStyle = b
	}
	ak, sk, token := p.get("access_key"), p.get("secret_key"), p.get("session_token")
	if err := p.done(); err != nil {
		return nil, err
	}
	if (ak == "") != (sk == "") {
		return nil, errors.New("access_key and secret_key must be given together")
	}
	if endpoint != "" {
		eu, err := url.Parse(endpoint)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, errors.New("endpoint must be an http:// or https:// URL")
		}
	}
	prefix, err := urlPrefix(u)
	if err != nil {
		return nil, err
	}

	var loadOpts []func(*config.LoadOptions) error
	if region != "" {
		loadOpts = append(loadOpts, config.WithRegion(region))
	}
	if ak != "" {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(ak, sk, token)))
	}
	red := newRedactor(sk, token)
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, errors.New(red.redact(fmt.Sprintf("load AWS config: %v", err)))
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		// WithRetry is the one retry policy; SDK retries would multiply it.
		o.RetryMaxAttempts = 1
	})
	bucket, err := s3blob.OpenBucketV2(ctx, client, u.Host, nil)
	if err != nil {
		return nil, errors.New(red.redact(err.Error()))
	}
	return &blobStorage{
		bucket:                bucket,
		prefix:                prefix,
		url:                   redactParsedURL(u),
		red:                   red,
		cfg:                   cfg,
		conditional:           s3IfNoneMatch,
		ifMatch:               s3IfMatch,
		version:               etagVersion,
		conditionalSinglePart: true,
	}, nil
}

// s3IfNoneMatch adds "If-None-Match: *" to the upload's requests. Conditional
// writes are supported by AWS S3 (since 2024-08) and MinIO; the SDK version
// pinned here predates the PutObjectInput.IfNoneMatch field, so the header
// is added as middleware. blobStorage.write keeps conditional uploads to a
// single PutObject.
func s3IfNoneMatch(asFunc func(any) bool) error {
	var up *s3manager.Uploader
	if !asFunc(&up) {
		return errors.New("s3: conditional write: uploader not reachable")
	}
	up.ClientOptions = append(up.ClientOptions, func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, smithyhttp.AddHeaderValue("If-None-Match", "*"))
	})
	return nil
}

// s3IfMatch makes the upload a PutObject with "If-Match: <etag>" (or
// "If-None-Match: *" for NoVersion): AWS S3 supports conditional PUTs with
// If-Match since 2024-11, MinIO since 2024. As for s3IfNoneMatch, the
// pinned SDK (service/s3 v1.53.1) has no PutObjectInput.IfMatch field, so
// the header is added as middleware. A mismatch is 412 PreconditionFailed;
// If-Match on a missing object is 404 NoSuchKey; both are ErrConflict.
func s3IfMatch(v Version) func(asFunc func(any) bool) error {
	if v == NoVersion {
		return s3IfNoneMatch
	}
	return func(asFunc func(any) bool) error {
		var up *s3manager.Uploader
		if !asFunc(&up) {
			return errors.New("s3: conditional write: uploader not reachable")
		}
		up.ClientOptions = append(up.ClientOptions, func(o *s3.Options) {
			o.APIOptions = append(o.APIOptions, smithyhttp.AddHeaderValue("If-Match", string(v)))
		})
		return nil
	}
}
