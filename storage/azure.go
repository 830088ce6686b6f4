package storage

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob/azureblob"
)

// openAzure opens azblob://container[/prefix] with these query parameters:
//
//	endpoint         service URL, e.g. http://127.0.0.1:10000/devstoreaccount1 (Azurite)
//	storage_account  account name (default env AZURE_STORAGE_ACCOUNT)
//	account_key      shared key    (default env AZURE_STORAGE_KEY)
//	domain, protocol, localemu, cdn   as gocloud's azureblob (and its
//	                 AZURE_STORAGE_DOMAIN/_PROTOCOL/_IS_LOCAL_EMULATOR/_IS_CDN env)
//
// Without a shared key, gocloud's default client is used: env
// AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN, or azidentity's
// default credential.
func openAzure(ctx context.Context, u *url.URL, cfg openConfig) (Storage, error) {
	if u.Host == "" {
		return nil, errors.New("missing container name (azblob://CONTAINER/prefix)")
	}
	p := newParams(u)
	endpoint := p.get("endpoint")
	svcOpts := azureblob.NewDefaultServiceURLOptions()
	if v := p.get("storage_account"); v != "" {
		svcOpts.AccountName = v
	}
	key := p.get("account_key")
	if key == "" {
		key = os.Getenv("AZURE_STORAGE_KEY")
	}
	if v := p.get("domain"); v != "" {
		svcOpts.StorageDomain = v
	}
	if v := p.get("protocol"); v != "" {
		svcOpts.Protocol = v
	}
	for name, dst := range map[string]*bool{"localemu": &svcOpts.IsLocalEmulator, "cdn": &svcOpts.IsCDN} {
		if v := p.get(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%s: want true or false", name)
			}
			*dst = b
		}
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	prefix, err := urlPrefix(u)
	if err != nil {
		return nil, err
	}
	red := newRedactor(key, svcOpts.SASToken)

	svcURL := strings.TrimSuffix(endpoint, "/")
	if svcURL == "" {
		s, err := azureblob.NewServiceURL(svcOpts)
		if err != nil {
			return nil, errors.New(red.redact(err.Error()))
		}
		svcURL = string(s)
	} else if eu, err := url.Parse(svcURL); err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
		return nil, errors.New("endpoint must be an http:// or https:// URL")
	}

	var client *container.Client
	if key != "" {
		if svcOpts.AccountName == "" {
			return nil, errors.New("a shared key needs an account name (storage_account or AZURE_STORAGE_ACCOUNT)")
		}
		cred, err := azblob.NewSharedKeyCredential(svcOpts.AccountName, key)
		if err != nil {
			return nil, errors.New(red.redact(fmt.Sprintf("azure shared key: %v", err)))
		}
		containerURL, err := url.JoinPath(svcURL, u.Host)
		if err != nil {
			return nil, errors.New(red.redact(err.Error()))
		}
		client, err = container.NewClientWithSharedKeyCredential(containerURL, cred, &container.ClientOptions{
			ClientOptions: azcore.ClientOptions{
				// WithRetry is the one retry policy.
				Retry: policy.RetryOptions{MaxRetries: -1},
			},
		})
		if err != nil {
			return nil, errors.New(red.redact(fmt.Sprintf("azure client: %v", err)))
		}
	} else {
		client, err = azureblob.NewDefaultClient(azureblob.ServiceURL(svcURL), azureblob.ContainerName(u.Host))
		if err != nil {
			return nil, errors.New(red.redact(fmt.Sprintf("azure client: %v", err)))
		}
	}
	bucket, err := azureblob.OpenBucket(ctx, client, nil)
	if err != nil {
		return nil, errors.New(red.redact(err.Error()))
	}
	return &blobStorage{
		bucket:      bucket,
		prefix:      prefix,
		url:         redactParsedURL(u),
		red:         red,
		cfg:         cfg,
		conditional: azureIfNoneMatch,
		ifMatch:     azureIfMatch,
		version:     etagVersion,
	}, nil
}

// azureIfNoneMatch makes the commit of the block list conditional on
// If-None-Match: *.
func azureIfNoneMatch(asFunc func(any) bool) error {
	var opts *azblob.UploadStreamOptions
	if !asFunc(&opts) {
		return errors.New("azure: conditional write: upload options not reachable")
	}
	if opts.AccessConditions == nil {
		opts.AccessConditions = &blob.AccessConditions{}
	}
	if opts.AccessConditions.ModifiedAccessConditions == nil {
		opts.AccessConditions.ModifiedAccessConditions = &blob.ModifiedAccessConditions{}
	}
	any := azcore.ETagAny
	opts.AccessConditions.ModifiedAccessConditions.IfNoneMatch = &any
	return nil
}

// azureIfMatch makes the commit of the block list conditional on
// If-Match: <etag> (If-None-Match: * for NoVersion); a mismatch is 412
// ConditionNotMet.
func azureIfMatch(v Version) func(asFunc func(any) bool) error {
	if v == NoVersion {
		return azureIfNoneMatch
	}
	return func(asFunc func(any) bool) error {
		var opts *azblob.UploadStreamOptions
		if !asFunc(&opts) {
			return errors.New("azure: conditional write: upload options not reachable")
		}
		if opts.AccessConditions == nil {
			opts.AccessConditions = &blob.AccessConditions{}
		}
		if opts.AccessConditions.ModifiedAccessConditions == nil {
			opts.AccessConditions.ModifiedAccessConditions = &blob.ModifiedAccessConditions{}
		}
		etag := azcore.ETag(v)
		opts.AccessConditions.ModifiedAccessConditions.IfMatch = &etag
		return nil
	}
}
