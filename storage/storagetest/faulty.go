package storagetest

import (
	"context"
	"io"
	"sync"

	"github.com/pitr-io/pitr/storage"
)

// Fault operation names for Fault.Op.
const (
	OpPut        = "put"       // Put and PutReader
	OpGet        = "get"       // Get
	OpRead       = "read"      // opening GetRange / NewReader
	OpReadBody   = "read_body" // reading the body of a GetRange / NewReader
	OpList       = "list"
	OpDelete     = "delete"
	OpExists     = "exists"
	OpStat       = "stat"
	OpCreate     = "create"       // CreateIfAbsent
	OpGetVersion = "get_version"  // GetVersion
	OpPutIfMatch = "put_if_match" // PutIfMatch
)

// Fault is one injected failure.
type Fault struct {
	Op  string // one of the Op constants
	Key string // only this key (the prefix for OpList); "" = any
	// Times is how many matching calls fail; < 0 means all of them.
	Times int
	Err   error
	// After delays the failure: OpPut consumes After bytes of the source
	// first, OpReadBody delivers After bytes, OpList delivers After
	// objects.
	After int64
	// Commit performs the operation and then returns Err, like a response
	// lost on the way back (OpPut, OpDelete, OpCreate).
	Commit bool
}

// Faulty wraps a Storage and injects Faults, for testing what sits on top
// of storage (retries, flush, restore).
type Faulty struct {
	s storage.Storage

	mu     sync.Mutex
	faults []*Fault
	calls  map[string]int
}

var _ storage.Storage = (*Faulty)(nil)

// NewFaulty wraps s.
func NewFaulty(s storage.Storage) *Faulty {
	return &Faulty{s: s, calls: map[string]int{}}
}

// Inject adds a fault; faults are matched in the order they were added.
func (f *Faulty) Inject(fault Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc := fault
	f.faults = append(f.faults, &fc)
}

// Calls returns how many times op was called.
func (f *Faulty) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// take counts the call and returns the fault to apply, if any.
func (f *Faulty) take(op, key string) *Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	for _, ft := range f.faults {
		if ft.Op != op || (ft.Key != "" && ft.Key != key) || ft.Times == 0 {
			continue
		}
		if ft.Times > 0 {
			ft.Times--
		}
		c := *ft
		return &c
	}
	return nil
}

func (f *Faulty) URL() string  { return f.s.URL() }
func (f *Faulty) Close() error { return f.s.Close() }

func (f *Faulty) Put(ctx context.Context, key string, data []byte) error {
	if ft := f.take(OpPut, key); ft != nil {
		if ft.Commit {
			if err := f.s.Put(ctx, key, data); err != nil {
				return err
			}
		}
		return ft.Err
	}
	return f.s.Put(ctx, key, data)
}

func (f *Faulty) PutReader(ctx context.Context, key string, r io.Reader, size int64) error {
	if ft := f.take(OpPut, key); ft != nil {
		if ft.Commit {
			if err := f.s.PutReader(ctx, key, r, size); err != nil {
				return err
			}
			return ft.Err
		}
		if _, err := io.CopyN(io.Discard, r, ft.After); err != nil && err != io.EOF {
			return err
		}
		return ft.Err
	}
	return f.s.PutReader(ctx, key, r, size)
}

func (f *Faulty) Get(ctx context.Context, key string) ([]byte, error) {
	if ft := f.take(OpGet, key); ft != nil {
		return nil, ft.Err
	}
	return f.s.Get(ctx, key)
}

func (f *Faulty) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if ft := f.take(OpRead, key); ft != nil {
		return nil, ft.Err
	}
	rc, err := f.s.GetRange(ctx, key, off, length)
	return f.body(key, rc, err)
}

func (f *Faulty) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	if ft := f.take(OpRead, key); ft != nil {
		return nil, ft.Err
	}
	rc, err := f.s.NewReader(ctx, key)
	return f.body(key, rc, err)
}

func (f *Faulty) body(key string, rc io.ReadCloser, err error) (io.ReadCloser, error) {
	if err != nil {
		return nil, err
	}
	if ft := f.take(OpReadBody, key); ft != nil {
		return &faultyBody{rc: rc, left: ft.After, err: ft.Err}, nil
	}
	return rc, nil
}

type faultyBody struct {
	rc   io.ReadCloser
	left int64
	err  error
}

func (b *faultyBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *faultyBody) Close() error { return b.rc.Close() }

func (f *Faulty) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	ft := f.take(OpList, prefix)
	if ft == nil {
		return f.s.List(ctx, prefix, fn)
	}
	n := int64(0)
	err := f.s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		if n >= ft.After {
			return ft.Err
		}
		n++
		return fn(oi)
	})
	if err == nil && n < ft.After+1 {
		return ft.Err // fewer objects than After: fail at the end
	}
	return err
}

func (f *Faulty) Delete(ctx context.Context, key string) error {
	if ft := f.take(OpDelete, key); ft != nil {
		if ft.Commit {
			if err := f.s.Delete(ctx, key); err != nil {
				return err
			}
		}
		return ft.Err
	}
	return f.s.Delete(ctx, key)
}

func (f *Faulty) Exists(ctx context.Context, key string) (bool, error) {
	if ft := f.take(OpExists, key); ft != nil {
		return false, ft.Err
	}
	return f.s.Exists(ctx, key)
}

func (f *Faulty) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if ft := f.take(OpStat, key); ft != nil {
		return storage.ObjectInfo{}, ft.Err
	}
	return f.s.Stat(ctx, key)
}

func (f *Faulty) CreateIfAbsent(ctx context.Context, key string, data []byte) error {
	if ft := f.take(OpCreate, key); ft != nil {
		if ft.Commit {
			if err := f.s.CreateIfAbsent(ctx, key, data); err != nil {
				return err
			}
		}
		return ft.Err
	}
	return f.s.CreateIfAbsent(ctx, key, data)
}

func (f *Faulty) GetVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if ft := f.take(OpGetVersion, key); ft != nil {
		return nil, storage.NoVersion, ft.Err
	}
	return f.s.GetVersion(ctx, key)
}

func (f *Faulty) PutIfMatch(ctx context.Context, key string, data []byte, v storage.Version) error {
	if ft := f.take(OpPutIfMatch, key); ft != nil {
		if ft.Commit {
			if err := f.s.PutIfMatch(ctx, key, data, v); err != nil {
				return err
			}
		}
		return ft.Err
	}
	return f.s.PutIfMatch(ctx, key, data, v)
}
