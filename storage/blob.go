package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"gocloud.dev/blob"
)

// blobStorage implements Storage on a gocloud.dev/blob bucket (mem, s3, gs,
// azblob). The file backend has its own implementation (file.go).
type blobStorage struct {
	bucket *blob.Bucket
	prefix string // "" or "a/b/"
	url    string // redacted
	red    *redactor
	cfg    openConfig

	// conditional, if set, makes a write fail when the object exists
	// (If-None-Match: * or the backend's equivalent), through the driver's
	// BeforeWrite As hook.
	conditional func(asFunc func(any) bool) error
	// ifMatch, if set, returns the BeforeWrite hook that makes a write
	// fail unless the object is at version v (v == NoVersion: absent).
	ifMatch func(v Version) func(asFunc func(any) bool) error
	// version returns the Version of an object from its attributes.
	version func(a *blob.Attributes) (Version, error)
	// conditionalPartSize forces single-request uploads for conditional
	// writes (S3 conditions apply to PutObject, not to parts).
	conditionalSinglePart bool
	// memMu, for the mem backend, serialises writes so that CreateIfAbsent's
	// check-then-write is exact.
	memMu *sync.Mutex

	closers []func() error
}

var _ Storage = (*blobStorage)(nil)

func (s *blobStorage) wrap(op, key string, err error, conditional bool) error {
	if err == nil {
		return nil
	}
	var oe *opError
	if errors.As(err, &oe) {
		return err
	}
	return &opError{op: op, key: key, kind: classify(err, conditional), err: err, red: s.red}
}

func (s *blobStorage) fail(op, key string, kind error) error {
	return &opError{op: op, key: key, kind: kind, red: s.red}
}

func (s *blobStorage) check(op, key string) error {
	return keyError(op, key, checkKey(key, false), s.red)
}

func keyError(op, key string, err error, red *redactor) error {
	if err == nil {
		return nil
	}
	return &opError{op: op, kind: ErrInvalidKey, err: err, red: red}
}

func (s *blobStorage) lockMem() func() {
	if s.memMu == nil {
		return func() {}
	}
	s.memMu.Lock()
	return s.memMu.Unlock
}

func (s *blobStorage) URL() string { return s.url }

func (s *blobStorage) Close() error {
	err := s.bucket.Close()
	for _, c := range s.closers {
		err = errors.Join(err, c())
	}
	return err
}

func (s *blobStorage) Put(ctx context.Context, key string, data []byte) error {
	if err := s.check("put", key); err != nil {
		return err
	}
	defer s.lockMem()()
	return s.write(ctx, "put", key, bytes.NewReader(data), int64(len(data)), nil)
}

func (s *blobStorage) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := s.check("put", key); err != nil {
		return err
	}
	defer s.lockMem()()
	return s.write(ctx, "put", key, r, size, nil)
}

// write streams r to key.
//
// Atomicity: any failure of the source (a read error, fewer or more bytes
// than size) cancels the upload's context inside Read, before the driver
// sees the error, so that no driver commits what it has (memblob and
// gcsblob would, on Close with a live context). bucket.Upload rather than
// Writer.Write keeps s3blob and azureblob on their Uploader path, whose
// error handling is free of the data race their pipe path has on failure.
func (s *blobStorage) write(ctx context.Context, op, key string, r io.Reader, size int64, cond func(asFunc func(any) bool) error) error {
	conditional := cond != nil
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	partSize := s.cfg.partSize
	opts := &blob.WriterOptions{
		ContentType:                 "application/octet-stream",
		DisableContentTypeDetection: true,
		MaxConcurrency:              s.cfg.concurrency,
	}
	if conditional {
		opts.BeforeWrite = cond
		if s.conditionalSinglePart && size >= partSize {
			partSize = size + 1
		}
	}
	opts.BufferSize = int(partSize)
	src := r
	if size >= 0 {
		src = &exactReader{r: r, left: size}
	}
	ar := &abortReader{r: src, cancel: cancel}
	err := s.bucket.Upload(ctx, s.prefix+key, ar, opts)
	if ar.err != nil {
		return s.wrap(op, key, ar.err, conditional)
	}
	return s.wrap(op, key, err, conditional)
}

// abortReader cancels the upload as soon as its source fails, and keeps the
// source's error (the upload itself then fails with "context canceled").
type abortReader struct {
	r      io.Reader
	cancel context.CancelFunc
	err    error
}

func (a *abortReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err != nil && err != io.EOF {
		a.err = err
		a.cancel()
	}
	return n, err
}

// exactReader passes through exactly left bytes and fails if r has fewer or
// more.
type exactReader struct {
	r    io.Reader
	left int64
}

var errTooLong = errors.New("reader yields more bytes than the declared size")

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left == 0 {
		var one [1]byte
		n, err := io.ReadFull(e.r, one[:])
		if n > 0 {
			return 0, errTooLong
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return 0, io.EOF
		}
		return 0, err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("reader ended %d bytes before the declared size: %w", e.left, io.ErrUnexpectedEOF)
	}
	if err == io.EOF {
		err = nil // the next call checks for excess bytes
	}
	return n, err
}

func (s *blobStorage) Get(ctx context.Context, key string) ([]byte, error) {
	rc, err := s.getRange(ctx, "get", key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := bytes.NewBuffer(make([]byte, 0, rc.size()))
	if _, err := buf.ReadFrom(rc); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (s *blobStorage) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.getRange(ctx, "read", key, 0, -1)
	if err != nil {
		return nil, err
	}
	return rc, nil
}

func (s *blobStorage) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	rc, err := s.getRange(ctx, "read", key, off, length)
	if err != nil {
		return nil, err
	}
	return rc, nil
}

type sizedReadCloser interface {
	io.ReadCloser
	size() int64
}

func (s *blobStorage) getRange(ctx context.Context, op, key string, off, length int64) (sizedReadCloser, error) {
	if err := s.check(op, key); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, s.fail(op, key, ErrInvalidRange)
	}
	if length == 0 {
		info, err := s.Stat(ctx, key)
		if err != nil {
			return nil, err
		}
		if off > info.Size {
			return nil, s.fail(op, key, ErrInvalidRange)
		}
		return emptyReader{}, nil
	}
	r, err := s.bucket.NewRangeReader(ctx, s.prefix+key, off, length, nil)
	if err != nil {
		if classify(err, false) == ErrInvalidRange {
			// Services answer 416 for off >= size (also for 0 on an empty
			// object); tell off == size (empty, like reading at EOF) from
			// off > size.
			info, serr := s.Stat(ctx, key)
			if serr != nil {
				return nil, serr
			}
			switch {
			case off == info.Size:
				return emptyReader{}, nil
			case off > info.Size:
				return nil, s.fail(op, key, ErrInvalidRange)
			}
		}
		return nil, s.wrap(op, key, err, false)
	}
	if off > r.Size() {
		_ = r.Close()
		return nil, s.fail(op, key, ErrInvalidRange)
	}
	return &blobReader{r: r, s: s, key: key}, nil
}

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyReader) Close() error             { return nil }
func (emptyReader) size() int64              { return 0 }

// blobReader classifies errors that happen mid-stream, so that a retrying
// caller can tell a reset connection from a bug.
type blobReader struct {
	r   *blob.Reader
	s   *blobStorage
	key string
}

func (b *blobReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = b.s.wrap("read", b.key, err, false)
	}
	return n, err
}

func (b *blobReader) Close() error { return b.s.wrap("close reader", b.key, b.r.Close(), false) }
func (b *blobReader) size() int64  { return b.r.Size() }

func (s *blobStorage) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := keyError("list", prefix, checkKey(prefix, true), s.red); err != nil {
		return err
	}
	it := s.bucket.List(&blob.ListOptions{Prefix: s.prefix + prefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return s.wrap("list", prefix, err, false)
		}
		if obj.IsDir || !strings.HasPrefix(obj.Key, s.prefix) {
			continue
		}
		if err := fn(ObjectInfo{Key: obj.Key[len(s.prefix):], Size: obj.Size, ModTime: obj.ModTime}); err != nil {
			return err
		}
	}
}

func (s *blobStorage) Delete(ctx context.Context, key string) error {
	if err := s.check("delete", key); err != nil {
		return err
	}
	defer s.lockMem()()
	// The gocloud drivers check existence first, so a missing object is
	// NotFound on every backend (S3's DeleteObject alone would succeed).
	return s.wrap("delete", key, s.bucket.Delete(ctx, s.prefix+key), false)
}

func (s *blobStorage) Exists(ctx context.Context, key string) (bool, error) {
	if err := s.check("exists", key); err != nil {
		return false, err
	}
	ok, err := s.bucket.Exists(ctx, s.prefix+key)
	return ok, s.wrap("exists", key, err, false)
}

func (s *blobStorage) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := s.check("stat", key); err != nil {
		return ObjectInfo{}, err
	}
	a, err := s.bucket.Attributes(ctx, s.prefix+key)
	if err != nil {
		return ObjectInfo{}, s.wrap("stat", key, err, false)
	}
	return ObjectInfo{Key: key, Size: a.Size, ModTime: a.ModTime}, nil
}

func (s *blobStorage) CreateIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := s.check("create", key); err != nil {
		return err
	}
	defer s.lockMem()()
	// The cheap check first: it answers the common "already there" case
	// without an upload, and narrows the race on backends without
	// conditional writes to the check-then-put window.
	ok, err := s.bucket.Exists(ctx, s.prefix+key)
	if err != nil {
		return s.wrap("create", key, err, false)
	}
	if ok {
		return s.fail("create", key, ErrAlreadyExists)
	}
	if s.conditional == nil { // mem: exact under memMu
		return s.write(ctx, "create", key, bytes.NewReader(data), int64(len(data)), nil)
	}
	return s.write(ctx, "create", key, bytes.NewReader(data), int64(len(data)), s.conditional)
}

func (s *blobStorage) GetVersion(ctx context.Context, key string) ([]byte, Version, error) {
	if err := s.check("get", key); err != nil {
		return nil, NoVersion, err
	}
	defer s.lockMem()()
	if s.ifMatch == nil { // mem: under memMu, the content is the version
		data, err := s.Get(ctx, key)
		if err != nil {
			return nil, NoVersion, err
		}
		return data, contentVersion(data), nil
	}
	// The attributes first: if the object is replaced between the two
	// calls, the token is the older one and a PutIfMatch with it fails.
	a, err := s.bucket.Attributes(ctx, s.prefix+key)
	if err != nil {
		return nil, NoVersion, s.wrap("get", key, err, false)
	}
	v, err := s.version(a)
	if err != nil {
		return nil, NoVersion, s.wrap("get", key, err, false)
	}
	if v == NoVersion {
		return nil, NoVersion, s.wrap("get", key, errors.New("the store returned no version token"), false)
	}
	data, err := s.Get(ctx, key)
	return data, v, err
}

func (s *blobStorage) PutIfMatch(ctx context.Context, key string, newData []byte, v Version) error {
	if err := s.check("put-if-match", key); err != nil {
		return err
	}
	defer s.lockMem()()
	if s.ifMatch == nil { // mem: compare and write under memMu
		cur := NoVersion
		data, err := s.Get(ctx, key)
		switch {
		case err == nil:
			cur = contentVersion(data)
		case !errors.Is(err, ErrNotFound):
			return err
		}
		if cur != v {
			return s.fail("put-if-match", key, ErrConflict)
		}
		return s.write(ctx, "put-if-match", key, bytes.NewReader(newData), int64(len(newData)), nil)
	}
	err := s.write(ctx, "put-if-match", key, bytes.NewReader(newData), int64(len(newData)), s.ifMatch(v))
	var oe *opError
	if errors.As(err, &oe) && (oe.kind == ErrAlreadyExists || oe.kind == ErrNotFound) {
		// A failed precondition, or (S3, If-Match) no object at all.
		oe.kind = ErrConflict
	}
	return err
}

// etagVersion is the version of s3 and azblob objects: the ETag.
func etagVersion(a *blob.Attributes) (Version, error) { return Version(a.ETag), nil }

// contentVersion is the version of mem and file objects: a hash of the
// content. Two versions with equal content share a token, which is safe:
// whatever a caller decided on one holds for the other.
func contentVersion(data []byte) Version {
	h := sha256.Sum256(data)
	return Version("sha256:" + hex.EncodeToString(h[:]))
}
