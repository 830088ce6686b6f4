package restore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pitr-io/pitr/logfile"
)

// sources are the storages a plan's files are read from: the task root,
// and the base snapshot's storage when it has one of its own (--snapshot).
type sources struct {
	log, base Source
}

// of returns the storage holding f.
func (s sources) of(f FileRef) Source {
	if f.Base && s.base != nil {
		return s.base
	}
	return s.log
}

// objectReaderAt serves a data file's reads with ranged GETs: the reader
// fetches the footer once and each row group it needs with one read.
type objectReaderAt struct {
	ctx  context.Context
	src  Source
	key  string
	size int64
}

func (o *objectReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	rc, err := o.src.GetRange(o.ctx, o.key, off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.ReadFull(rc, p)
}

// openFile opens a data file for range reads. A data file that turns out
// corrupt is ErrCorrupt (and logfile.ErrCorrupt).
func openFile(ctx context.Context, src Source, f FileRef) (*logfile.Reader, error) {
	rd, err := logfile.NewReader(&objectReaderAt{ctx: ctx, src: src, key: f.Key(), size: f.File.GetSize()}, f.File.GetSize())
	if err != nil {
		return nil, dataError(f, err)
	}
	return rd, nil
}

// dataError maps an error reading a data file to the restore sentinels.
func dataError(f FileRef, err error) error {
	switch {
	case errors.Is(err, logfile.ErrFormat):
		return fmt.Errorf("%w: data file %s: %w (upgrade pitr to read it)", ErrFormat, f.Key(), err)
	case errors.Is(err, logfile.ErrCorrupt):
		return fmt.Errorf("%w: data file %s: %w", ErrCorrupt, f.Key(), err)
	}
	return fmt.Errorf("read data file %s: %w", f.Key(), err)
}

// iterMemory estimates what one open iterator of rd holds: about two
// encoded row groups (the group being decoded and its decompressed pages)
// plus the decoded batch.
func iterMemory(rd *logfile.Reader, size int64) int64 {
	groups := int64(max(rd.NumRowGroups(), 1))
	return 2*(size/groups) + 2<<20
}
