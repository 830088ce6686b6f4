package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// fileTmpDir holds in-flight writes of the file backend, on the same file
// system as the objects so that rename is atomic. List never shows it.
const fileTmpDir = ".pitr-tmp"

// fileStorage is the file:// backend. It does not use gocloud's fileblob,
// which (v0.38.0) does not fsync, lists in directory-walk order rather
// than key order ("a/b" before "a-c"), and has no create-if-absent.
//
// Layout: the object "a/b/c" is the file ROOT/a/b/c. Writes go to
// ROOT/.pitr-tmp/<random>, are fsynced, renamed (Put) or hard-linked
// (CreateIfAbsent) into place, and the directory is fsynced. An object key
// cannot also be a "directory" of other keys ("a" and "a/b"): the second
// write fails.
type fileStorage struct {
	root string
	tmp  string
	url  string
	red  *redactor
}

var _ Storage = (*fileStorage)(nil)

// openFile opens file:///abs/path or file://./rel/path, creating the
// directory if needed.
func openFile(u *url.URL, cfg openConfig) (Storage, error) {
	if err := newParams(u).done(); err != nil {
		return nil, err
	}
	var root string
	switch u.Host {
	case "", "localhost":
		root = u.Path
	case ".":
		root = "." + u.Path
	default:
		return nil, fmt.Errorf("file URL host must be empty, localhost or \".\", got %q", u.Host)
	}
	if root == "" || root == "/" {
		return nil, errors.New("file URL needs a directory (file:///path/to/dir)")
	}
	root, err := filepath.Abs(filepath.FromSlash(root))
	if err != nil {
		return nil, err
	}
	s := &fileStorage{root: root, tmp: filepath.Join(root, fileTmpDir), url: redactParsedURL(u), red: newRedactor()}
	if err := mkdirAllSync(s.tmp); err != nil {
		return nil, fmt.Errorf("create %s: %w", s.tmp, err)
	}
	return s, nil
}

func (s *fileStorage) URL() string  { return s.url }
func (s *fileStorage) Close() error { return nil }

func (s *fileStorage) path(key string) string { return filepath.Join(s.root, filepath.FromSlash(key)) }

func (s *fileStorage) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var oe *opError
	if errors.As(err, &oe) {
		return err
	}
	var kind error
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		kind = ErrNotFound
	case errors.Is(err, fs.ErrPermission):
		kind = ErrPermission
	case errors.Is(err, fs.ErrExist):
		kind = ErrAlreadyExists
	}
	return &opError{op: op, key: key, kind: kind, err: err, red: s.red}
}

func (s *fileStorage) Put(ctx context.Context, key string, data []byte) error {
	return s.PutReader(ctx, key, bytes.NewReader(data), int64(len(data)))
}

func (s *fileStorage) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := keyError("put", key, checkKey(key, false), s.red); err != nil {
		return err
	}
	return s.wrap("put", key, s.write(ctx, key, r, size, false))
}

func (s *fileStorage) CreateIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := keyError("create", key, checkKey(key, false), s.red); err != nil {
		return err
	}
	if _, err := os.Stat(s.path(key)); err == nil {
		return &opError{op: "create", key: key, kind: ErrAlreadyExists, red: s.red}
	}
	return s.wrap("create", key, s.write(ctx, key, bytes.NewReader(data), int64(len(data)), true))
}

// write copies r to a temp file, fsyncs it and moves it into place:
// rename for Put, link (which fails if the target exists) for
// CreateIfAbsent.
func (s *fileStorage) write(ctx context.Context, key string, r io.Reader, size int64, exclusive bool) (err error) {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(s.tmp, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		_ = os.Remove(tmp) // gone already after a rename
	}()
	src := r
	if size >= 0 {
		src = &exactReader{r: r, left: size}
	}
	if _, err := io.Copy(f, ctxReader{ctx: ctx, r: src}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	err = f.Close()
	f = nil
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dst := s.path(key)
	dir := filepath.Dir(dst)
	// A concurrent Delete may remove a directory it emptied between our
	// MkdirAll and the rename; try again a few times.
	for attempt := 0; ; attempt++ {
		if err = mkdirAllSync(dir); err == nil {
			if exclusive {
				err = os.Link(tmp, dst)
			} else {
				err = os.Rename(tmp, dst)
			}
		}
		if err == nil || !errors.Is(err, fs.ErrNotExist) || attempt == 3 {
			break
		}
	}
	if err != nil {
		var le *os.LinkError
		if exclusive && errors.As(err, &le) && errors.Is(err, fs.ErrExist) {
			return &opError{op: "create", key: key, kind: ErrAlreadyExists, red: s.red}
		}
		if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) || errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("key conflicts with an existing object or directory: %w", err)
		}
		return err
	}
	return syncDir(dir)
}

// ctxReader stops a copy when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

// mkdirAllSync is os.MkdirAll that also fsyncs the parent of every
// directory it creates, so the new path survives a crash.
func mkdirAllSync(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllSync(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func (s *fileStorage) Get(ctx context.Context, key string) ([]byte, error) {
	if err := keyError("get", key, checkKey(key, false), s.red); err != nil {
		return nil, err
	}
	f, fi, err := s.open(key)
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	defer f.Close()
	buf := bytes.NewBuffer(make([]byte, 0, fi.Size()))
	if _, err := buf.ReadFrom(ctxReader{ctx: ctx, r: f}); err != nil {
		return nil, s.wrap("get", key, err)
	}
	return buf.Bytes(), nil
}

// open opens a regular file; directories count as missing.
func (s *fileStorage) open(key string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func (s *fileStorage) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.GetRange(ctx, key, 0, -1)
}

func (s *fileStorage) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := keyError("read", key, checkKey(key, false), s.red); err != nil {
		return nil, err
	}
	f, fi, err := s.open(key)
	if err != nil {
		return nil, s.wrap("read", key, err)
	}
	if off < 0 || off > fi.Size() {
		_ = f.Close()
		return nil, &opError{op: "read", key: key, kind: ErrInvalidRange, red: s.red}
	}
	if length < 0 || off+length > fi.Size() {
		length = fi.Size() - off
	}
	return &fileReader{r: io.NewSectionReader(f, off, length), f: f}, nil
}

type fileReader struct {
	r *io.SectionReader
	f *os.File
}

func (r *fileReader) Read(p []byte) (int, error) { return r.r.Read(p) }
func (r *fileReader) Close() error               { return r.f.Close() }

func (s *fileStorage) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := keyError("stat", key, checkKey(key, false), s.red); err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(s.path(key))
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		return ObjectInfo{}, s.wrap("stat", key, err)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

func (s *fileStorage) Exists(ctx context.Context, key string) (bool, error) {
	_, err := s.Stat(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *fileStorage) Delete(ctx context.Context, key string) error {
	if err := keyError("delete", key, checkKey(key, false), s.red); err != nil {
		return err
	}
	p := s.path(key)
	fi, err := os.Lstat(p)
	if err == nil && fi.IsDir() {
		err = fs.ErrNotExist
	}
	if err == nil {
		err = os.Remove(p)
	}
	if err != nil {
		return s.wrap("delete", key, err)
	}
	// Remove directories this delete emptied, so they do not pile up.
	// Failing (not empty, raced with a Put) is fine.
	dir := filepath.Dir(p)
	for dir != s.root && strings.HasPrefix(dir, s.root) && os.Remove(dir) == nil {
		dir = filepath.Dir(dir)
	}
	if err := syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return s.wrap("delete", key, err)
	}
	return nil
}

// List walks the tree in key order: within a directory, entries are sorted
// by name, with "/" appended to directory names, because every key below
// directory d starts with "d/".
func (s *fileStorage) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := keyError("list", prefix, checkKey(prefix, true), s.red); err != nil {
		return err
	}
	// Start at the deepest directory the prefix names completely.
	start := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = prefix[:i+1]
	}
	err := s.listDir(ctx, start, prefix, fn)
	var abort *listAbort
	if errors.As(err, &abort) {
		return abort.err
	}
	if err != nil {
		return s.wrap("list", prefix, err)
	}
	return nil
}

// listAbort carries the callback's error out of the walk unchanged.
type listAbort struct{ err error }

func (l *listAbort) Error() string { return "list aborted by callback" }

// listDir lists dir (a key prefix ending in "/" or "").
func (s *fileStorage) listDir(ctx context.Context, dir, prefix string, fn func(ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(s.path(strings.TrimSuffix(dir, "/")))
	if dir == "" {
		entries, err = os.ReadDir(s.root)
	}
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil // nothing under this prefix (or it was deleted meanwhile)
	}
	if err != nil {
		return err
	}
	type entry struct {
		sortKey string
		e       fs.DirEntry
	}
	list := make([]entry, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if dir == "" && name == fileTmpDir {
			continue
		}
		sk := dir + name
		if e.IsDir() {
			sk += "/"
		} else if !e.Type().IsRegular() {
			continue
		}
		// Keep entries that can contain or be keys with this prefix.
		if !strings.HasPrefix(sk, prefix) && !(e.IsDir() && strings.HasPrefix(prefix, sk)) {
			continue
		}
		list = append(list, entry{sk, e})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].sortKey < list[j].sortKey })
	for _, en := range list {
		if en.e.IsDir() {
			if err := s.listDir(ctx, en.sortKey, prefix, fn); err != nil {
				return err
			}
			continue
		}
		fi, err := en.e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		if err != nil {
			return err
		}
		if err := fn(ObjectInfo{Key: en.sortKey, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return &listAbort{err: err}
		}
	}
	return nil
}

// GetVersion reads the object; its version is a hash of its content.
func (s *fileStorage) GetVersion(ctx context.Context, key string) ([]byte, Version, error) {
	data, err := s.Get(ctx, key)
	if err != nil {
		return nil, NoVersion, err
	}
	return data, contentVersion(data), nil
}

// PutIfMatch holds an exclusive flock(2) on a per-key lock file in
// .pitr-tmp/ (so it is exact across processes and goroutines, on a local
// file system), compares the content's hash with v and renames the new
// content into place. A plain Put does not take the lock: conditional
// writers exclude each other, not unconditional ones.
func (s *fileStorage) PutIfMatch(ctx context.Context, key string, data []byte, v Version) error {
	if err := keyError("put-if-match", key, checkKey(key, false), s.red); err != nil {
		return err
	}
	h := sha256.Sum256([]byte(key))
	lock, err := os.OpenFile(filepath.Join(s.tmp, "lock-"+hex.EncodeToString(h[:16])), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return s.wrap("put-if-match", key, err)
	}
	defer lock.Close() // releases the flock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return s.wrap("put-if-match", key, fmt.Errorf("lock: %w", err))
	}
	cur := NoVersion
	old, err := s.Get(ctx, key)
	switch {
	case err == nil:
		cur = contentVersion(old)
	case !errors.Is(err, ErrNotFound):
		return err
	}
	if cur != v {
		return &opError{op: "put-if-match", key: key, kind: ErrConflict, red: s.red}
	}
	return s.wrap("put-if-match", key, s.write(ctx, key, bytes.NewReader(data), int64(len(data)), false))
}
