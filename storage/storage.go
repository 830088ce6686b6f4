package storage

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Storage is the seam between pitr and an object store. Every backend
// (s3, gs, azblob, file, mem) and every wrapper (retry, rate limit, metrics)
// implements it, and every implementation passes storagetest.Run.
//
// Keys are relative to the root given by the URL passed to Open, use "/" as
// separator and must satisfy ValidateKey. All methods are safe for
// concurrent use.
type Storage interface {
	// Put stores data under key, replacing any previous object. It is
	// atomic: a reader sees either the whole new object or the old state.
	Put(ctx context.Context, key string, data []byte) error

	// PutReader stores the size bytes read from r under key, streaming large
	// objects in parts. It is atomic like Put: if r fails, yields a number of
	// bytes other than size, or ctx is cancelled, nothing becomes visible.
	// size < 0 means "unknown", in which case no length check is done.
	PutReader(ctx context.Context, key string, r io.Reader, size int64) error

	// Get returns the whole object.
	Get(ctx context.Context, key string) ([]byte, error)

	// GetRange returns a reader for length bytes starting at off. length < 0
	// reads to the end; a range past the end is truncated at the end. off ==
	// size yields an empty reader; off > size or off < 0 is ErrInvalidRange.
	GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)

	// NewReader returns a reader for the whole object.
	NewReader(ctx context.Context, key string) (io.ReadCloser, error)

	// List calls fn for every object whose key starts with prefix, in
	// lexical (byte-wise) key order. If fn returns an error, List stops and
	// returns that error unchanged.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object. Deleting a missing object is ErrNotFound.
	Delete(ctx context.Context, key string) error

	// Exists reports whether the object exists.
	Exists(ctx context.Context, key string) (bool, error)

	// Stat returns the object's size and modification time.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// CreateIfAbsent stores data under key only if no object exists there,
	// and returns ErrAlreadyExists otherwise. Of several concurrent callers
	// exactly one wins, with the per-backend caveats in the package doc.
	CreateIfAbsent(ctx context.Context, key string, data []byte) error

	// GetVersion returns the whole object and a token for the version
	// read, for a later PutIfMatch. The token may be older than the data
	// (never newer): a PutIfMatch with it then fails and the caller reads
	// again, so a decision taken on the data is never written over a
	// version the caller did not see.
	GetVersion(ctx context.Context, key string) ([]byte, Version, error)

	// PutIfMatch stores data under key only if the object is still at
	// version v (v == NoVersion: only if no object exists), as one atomic
	// conditional request the server checks (If-Match / generation match,
	// see the package doc). Otherwise it returns ErrConflict and leaves the
	// object as it is.
	PutIfMatch(ctx context.Context, key string, data []byte, v Version) error

	// URL returns the storage URL with every credential redacted. It is safe
	// to log and to show to users.
	URL() string

	// Close releases the backend's resources.
	Close() error
}

// Version identifies one stored version of an object: an ETag (s3,
// azblob, mem), a generation (gs), a content hash (file). It is opaque and
// only meaningful to the backend that returned it.
type Version string

// NoVersion is the version of an object that does not exist.
const NoVersion Version = ""

// ObjectInfo describes one object.
type ObjectInfo struct {
	Key     string // relative to the storage root
	Size    int64
	ModTime time.Time
}

// Sentinel errors. Every error a backend returns for these conditions
// matches them with errors.Is, whatever wrapping the caller adds.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("storage: object not found")
	// ErrAlreadyExists: CreateIfAbsent found an object at the key.
	ErrAlreadyExists = errors.New("storage: object already exists")
	// ErrConflict: PutIfMatch found the object at another version than
	// the one given (changed, created or deleted since it was read).
	ErrConflict = errors.New("storage: object changed since it was read")
	// ErrPermission: the credentials are missing, wrong or not allowed to do
	// this. Retrying does not help.
	ErrPermission = errors.New("storage: permission denied")
	// ErrInvalidKey: the key breaks the rules of ValidateKey.
	ErrInvalidKey = errors.New("storage: invalid key")
	// ErrInvalidRange: GetRange was asked for an offset past the end of the
	// object or a negative offset.
	ErrInvalidRange = errors.New("storage: invalid range")
	// ErrTransient marks failures that may go away when the operation is
	// repeated: server errors (5xx), throttling (429, SlowDown), timeouts,
	// refused or reset connections. WithRetry retries exactly these (see
	// IsTransient).
	ErrTransient = errors.New("storage: transient failure")
)

// Option configures Open.
type Option func(*openConfig)

// PartSize sets the part (S3), block (Azure) or chunk (GCS) size used for
// streaming uploads. Memory per upload is about PartSize * Concurrency.
// Default 8 MiB; S3 requires at least 5 MiB.
func PartSize(n int64) Option { return func(c *openConfig) { c.partSize = n } }

// Concurrency sets how many parts of one upload are in flight at once
// (S3, Azure). Default 4.
func Concurrency(n int) Option { return func(c *openConfig) { c.concurrency = n } }

// Logger sets the logger backends use; it defaults to hclog's null logger.
func Logger(l hclog.Logger) Option { return func(c *openConfig) { c.logger = l } }
