package flush

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/merge"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// flushGen writes g's rows as data files, then the meta. g belongs to the
// caller; its rows and runs are read, not consumed.
func (f *Flusher) flushGen(ctx context.Context, g *gen, flushTS uint64, regions []*pitrpb.RegionCoverage) (*pitrpb.Meta, error) {
	var its []logfile.Iterator
	closeAll := func() {
		for _, it := range its {
			_ = it.Close() // read-only inputs: nothing to lose
		}
	}
	if len(g.chunks) > 0 {
		its = append(its, merge.Slice(sortChunks(g.chunks)))
	}
	for _, r := range g.runs {
		it, err := openRun(r.path)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("open spill run: %w", err)
		}
		its = append(its, it)
	}
	var files []*pitrpb.DataFile
	if len(its) > 0 {
		// Merge also drops duplicates (equal key and commit_ts) within and
		// across inputs: readers tolerate them (I5), but they cost space.
		src := merge.Merge(its...)
		var err error
		files, err = f.writeFiles(ctx, flushTS, src, g.logical)
		if cerr := src.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close spill runs: %w", cerr)
		}
		if err != nil {
			return nil, err
		}
	}
	meta := &pitrpb.Meta{StoreId: f.cfg.StoreID, FlushTs: flushTS, Task: f.cfg.Task, Files: files}
	path := logfile.MetaPath(flushTS, f.cfg.StoreID)
	step := f.chain.Next(meta, path, regions, f.cfg.KeyframeEvery)
	b, err := logfile.EncodeMeta(meta)
	if err != nil {
		f.chain.Reset()
		return nil, fmt.Errorf("encode meta: %w", err)
	}
	if err := f.cfg.Storage.PutReader(ctx, path, bytes.NewReader(b), int64(len(b))); err != nil {
		// The meta may have landed all the same: nothing may continue it.
		f.chain.Reset()
		f.m.uploadErrors.Inc()
		return nil, fmt.Errorf("upload meta: %w", err)
	}
	f.chain.Commit(path, step)
	return meta, nil
}

// fileUpload is one data file being written and streamed to storage.
type fileUpload struct {
	path string
	w    *logfile.Writer
	pw   *io.PipeWriter
	out  countingWriter // what w has written to pw: exact, unlike w.Size()
	df   *pitrpb.DataFile
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// errShortUpload: PutReader returned before reading the whole file.
var errShortUpload = errors.New("upload ended before the file was complete")

// writerOpts are the data file writer options: a row group is at most an
// eighth of FileTarget, so that a file overshoots the target by little.
func (f *Flusher) writerOpts() logfile.WriterOptions {
	o := f.cfg.Writer
	if o.RowGroupBytes <= 0 {
		o.RowGroupBytes = logfile.DefaultRowGroupBytes
	}
	o.RowGroupBytes = max(min(o.RowGroupBytes, f.cfg.FileTarget/8), 1)
	return o
}

// writeFiles writes the sorted rows of src (about total logical bytes) as
// the flush's data files (WriteFiles).
func (f *Flusher) writeFiles(ctx context.Context, flushTS uint64, src logfile.Iterator, total int64) ([]*pitrpb.DataFile, error) {
	return WriteFiles(ctx, f.cfg.Storage, src, FileOptions{
		FileTarget:        f.cfg.FileTarget,
		UploadConcurrency: f.cfg.UploadConcurrency,
		Writer:            f.writerOpts(),
		Total:             total,
		Path:              func(id string) string { return logfile.DataPath(f.cfg.StoreID, flushTS, id) },
		OnUploadError:     f.m.uploadErrors.Inc,
	})
}

// FileOptions configure WriteFiles.
type FileOptions struct {
	// FileTarget: a file is cut once its bytes written reach it.
	FileTarget int64
	// UploadConcurrency bounds the files being uploaded at once (≥ 1).
	UploadConcurrency int
	Writer            logfile.WriterOptions
	// Total is about how many logical bytes src holds (0: unknown), so the
	// last file is not a sliver.
	Total int64
	// Path names a file from a random id.
	Path func(id string) string
	// OnUploadError, when set, is called for every failed upload.
	OnUploadError func()
}

// WriteFiles writes the sorted rows of src as data files of at least
// FileTarget bytes (the last one may be smaller), each streamed to up
// through a pipe while it is written. At most UploadConcurrency files are
// in flight. It returns once every upload it started has ended, with the
// files in key order, or the first error (the others follow from it).
// Files stored before an error are orphans no meta references (I5).
func WriteFiles(ctx context.Context, up Uploader, src logfile.Iterator, o FileOptions) ([]*pitrpb.DataFile, error) {
	total := o.Total
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	fail := func(err error) {
		once.Do(func() { first = err; cancel(err) })
	}
	sem := make(chan struct{}, max(o.UploadConcurrency, 1))
	var uploads []*fileUpload

	start := func() (*fileUpload, error) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		id, err := newID()
		if err != nil {
			<-sem
			return nil, err
		}
		pr, pw := io.Pipe()
		u := &fileUpload{path: o.Path(id), pw: pw}
		u.out.w = pw
		uploads = append(uploads, u)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := up.PutReader(ctx, u.path, pr, -1)
			if err != nil {
				if o.OnUploadError != nil {
					o.OnUploadError()
				}
				fail(fmt.Errorf("upload %s: %w", u.path, err))
				pr.CloseWithError(err)
				return
			}
			pr.CloseWithError(errShortUpload) // harmless after EOF
		}()
		// The writer writes the Parquet magic at once: the upload must run.
		if u.w, err = logfile.NewWriter(&u.out, o.Writer); err != nil {
			err = fmt.Errorf("new data file writer: %w", err)
			fail(err)
			pw.CloseWithError(err)
			return nil, err
		}
		return u, nil
	}
	finish := func(u *fileUpload) error {
		st, err := u.w.Close()
		if err != nil {
			return fmt.Errorf("write %s: %w", u.path, err)
		}
		_ = u.pw.Close() // always nil; the upload sees EOF
		u.df = st.DataFile(u.path)
		return nil
	}
	// produce writes the files. On error it reports the cause (fail) before
	// closing the current pipe, so the cause wins over the upload's echo of it.
	produce := func() error {
		var cur *fileUpload
		abort := func(err error) error {
			fail(err)
			if cur != nil {
				cur.pw.CloseWithError(err)
			}
			return err
		}
		var done, inFile int64 // logical bytes written: in all, in the current file
		var lastKey []byte
		cutDue := false // the current file is full: cut it at the next key
		for src.Next() {
			r := src.Row()
			// A key's versions stay in one file, so the files of one
			// write do not overlap (a cut between two versions of a key
			// would make both files hold it).
			if cutDue && !bytes.Equal(r.Key, lastKey) {
				if err := finish(cur); err != nil {
					return abort(err)
				}
				cur, inFile, cutDue = nil, 0, false
			}
			lastKey = append(lastKey[:0], r.Key...)
			done += r.LogicalSize()
			inFile += r.LogicalSize()
			if cur == nil {
				u, err := start()
				if err != nil {
					return abort(err)
				}
				cur = u
			}
			if err := cur.w.Write(r); err != nil {
				return abort(fmt.Errorf("write %s: %w", cur.path, err))
			}
			// Cut once the bytes already written reach the target (they
			// only grow at Close), so every file but the last is at least
			// FileTarget. The overshoot is at most about one row group.
			// A file is not cut when what is left, at this file's ratio of
			// stored to logical bytes, would make a tail file under half
			// the target: the tail joins this file instead, so every file
			// of a flush but the last is ≥ FileTarget and the last is not
			// a sliver.
			if !cutDue && cur.out.n >= o.FileTarget {
				left := float64(total-done) * float64(cur.out.n) / float64(max(inFile, 1))
				cutDue = left >= float64(o.FileTarget)/2 || total <= done
			}
		}
		if err := src.Err(); err != nil {
			return abort(fmt.Errorf("read buffered rows: %w", err))
		}
		if cur != nil {
			if err := finish(cur); err != nil {
				return abort(err)
			}
		}
		return nil
	}
	_ = produce()
	wg.Wait()
	if first != nil {
		return nil, first
	}
	files := make([]*pitrpb.DataFile, 0, len(uploads))
	for _, u := range uploads {
		files = append(files, u.df)
	}
	return files, nil
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random file id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
