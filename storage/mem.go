package storage

import (
	"net/url"
	"sync"

	"gocloud.dev/blob/memblob"
)

// openMem opens mem://[label][/prefix]: a fresh, empty in-memory store per
// call (the host is only a label; two Opens never share objects).
func openMem(u *url.URL, cfg openConfig) (Storage, error) {
	if err := newParams(u).done(); err != nil {
		return nil, err
	}
	prefix, err := urlPrefix(u)
	if err != nil {
		return nil, err
	}
	return &blobStorage{
		bucket: memblob.OpenBucket(nil),
		prefix: prefix,
		url:    redactParsedURL(u),
		red:    newRedactor(),
		cfg:    cfg,
		memMu:  &sync.Mutex{},
	}, nil
}
