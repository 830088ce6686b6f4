package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/pitr-io/pitr/storage"
)

// checkFiles reads every file whole and checks it against its meta entry:
// it exists (else ErrMissing), has the recorded size and sha256 (else
// ErrCorrupt). Of several bad files the first in the given order is
// reported. onBytes, when set, is called with the bytes read as they are.
func checkFiles(ctx context.Context, src sources, files []FileRef, concurrency int, onBytes func(int64)) error {
	return checkEach(ctx, src, files, concurrency, onBytes, nil)
}

// checkEach is checkFiles that also copies each file i whose keep(i) is
// not nil into it as it reads (one read serves the check and the caller).
func checkEach(ctx context.Context, src sources, files []FileRef, concurrency int, onBytes func(int64), keep func(i int) *bytes.Buffer) error {
	if concurrency < 1 {
		concurrency = 1
	}
	errs := make([]error, len(files))
	var firstBad atomic.Int64
	firstBad.Store(int64(len(files)))
	var next atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < min(concurrency, len(files)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(files)) || i > firstBad.Load() || ctx.Err() != nil {
					return
				}
				var w *bytes.Buffer
				if keep != nil {
					w = keep(int(i))
				}
				if err := checkFile(ctx, src.of(files[i]), files[i], onBytes, w); err != nil {
					errs[i] = err
					for {
						cur := firstBad.Load()
						if i >= cur || firstBad.CompareAndSwap(cur, i) {
							break
						}
					}
					if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMissing) {
						cancel() // storage trouble: stop early
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := firstErr(errs); err != nil {
		return err
	}
	return ctx.Err()
}

// hashBufSize is the read size while hashing a file.
const hashBufSize = 1 << 20

var hashBufs = sync.Pool{New: func() any { b := make([]byte, hashBufSize); return &b }}

func checkFile(ctx context.Context, src Source, f FileRef, onBytes func(int64), w *bytes.Buffer) error {
	path := f.Key()
	rc, err := src.NewReader(ctx, path)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%w: data file %s is missing (referenced by %s)", ErrMissing, path, f.Meta)
	} else if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer rc.Close()
	h := sha256.New()
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	var n int64
	for {
		m, err := rc.Read(*bp)
		if m > 0 {
			h.Write((*bp)[:m])
			if w != nil {
				w.Write((*bp)[:m])
			}
			n += int64(m)
			if onBytes != nil {
				onBytes(int64(m))
			}
		}
		if err == io.EOF {
			break
		}
		if errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("%w: data file %s is missing (referenced by %s)", ErrMissing, path, f.Meta)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if n > f.File.GetSize() {
			break // longer than recorded: corrupt, no need to read on
		}
	}
	if n != f.File.GetSize() {
		return fmt.Errorf("%w: data file %s has %d bytes, its meta %s says %d", ErrCorrupt, path, n, f.Meta, f.File.GetSize())
	}
	if sum := h.Sum(nil); !bytes.Equal(sum, f.File.GetSha256()) {
		return fmt.Errorf("%w: data file %s has sha256 %s, its meta %s says %s", ErrCorrupt, path,
			hex.EncodeToString(sum[:8]), f.Meta, hex.EncodeToString(f.File.GetSha256()[:min(8, len(f.File.GetSha256()))]))
	}
	return nil
}
