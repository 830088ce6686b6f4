package flush

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pitr-io/pitr/logfile"
)

// The spill run format is specified in doc.go.

const (
	runMagic       = "PITRRUN1"
	runFieldsLen   = 33               // keyLen, valueLen, oldLen, commitTS, startTS, op, flags
	runHeaderLen   = runFieldsLen + 4 // + CRC of the fields, checked before allocating
	runRecordExtra = runHeaderLen + 4
	runTrailerLen  = 16
	runEnd         = 0xFFFFFFFF
	runSuffix      = ".spill"

	flagValue    = 1 << 0
	flagHasOld   = 1 << 1
	flagOldValue = 1 << 2

	maxRecord = 1 << 31 // bytes of key, value and old value of one row

	runWriteBuffer = 1 << 20
	runReadBuffer  = 256 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrSpillCorrupt: a local spill run does not decode (torn, bit-flipped,
// truncated: a local disk fault). Every later Flush fails the same way, so
// the caller must treat it as fatal for this Flusher: Close it (which
// deletes the runs) and capture again from the last stored checkpoint.
var ErrSpillCorrupt = errors.New("flush: corrupt spill run")

// recordSize is the exact number of bytes r takes in a spill run.
func recordSize(r *logfile.Row) int64 {
	return int64(runRecordExtra + len(r.Key) + len(r.Value) + len(r.OldValue))
}

// runSize is the exact size of a run whose records total recs bytes.
func runSize(recs int64) int64 { return int64(len(runMagic)) + recs + runTrailerLen }

// run is one spill run on disk.
type run struct {
	path    string
	size    int64 // bytes on disk (reserved from the spill budget)
	rows    int64
	logical int64
}

// writeRun writes the sorted rows to path. On error the file is removed.
func writeRun(path string, rows []*logfile.Row) (err error) {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := fd.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	return encodeRun(fd, rows)
}

// encodeRun writes a run of the sorted rows to dst.
func encodeRun(dst io.Writer, rows []*logfile.Row) error {
	w := bufio.NewWriterSize(dst, runWriteBuffer)
	if _, err := w.WriteString(runMagic); err != nil {
		return err
	}
	var hdr [runHeaderLen]byte
	var sum [4]byte
	for _, r := range rows {
		binary.LittleEndian.PutUint32(hdr[0:], uint32(len(r.Key)))
		binary.LittleEndian.PutUint32(hdr[4:], uint32(len(r.Value)))
		binary.LittleEndian.PutUint32(hdr[8:], uint32(len(r.OldValue)))
		binary.LittleEndian.PutUint64(hdr[12:], r.CommitTS)
		binary.LittleEndian.PutUint64(hdr[20:], r.StartTS)
		binary.LittleEndian.PutUint32(hdr[28:], uint32(r.Op))
		var flags byte
		if r.Value != nil {
			flags |= flagValue
		}
		if r.HasOldValue {
			flags |= flagHasOld
		}
		if r.OldValue != nil {
			flags |= flagOldValue
		}
		hdr[32] = flags
		binary.LittleEndian.PutUint32(hdr[runFieldsLen:], crc32.Checksum(hdr[:runFieldsLen], castagnoli))
		crc := crc32.Update(0, castagnoli, hdr[:])
		crc = crc32.Update(crc, castagnoli, r.Key)
		crc = crc32.Update(crc, castagnoli, r.Value)
		crc = crc32.Update(crc, castagnoli, r.OldValue)
		binary.LittleEndian.PutUint32(sum[:], crc)
		w.Write(hdr[:]) // bufio.Writer keeps the first error; Flush reports it
		w.Write(r.Key)
		w.Write(r.Value)
		w.Write(r.OldValue)
		w.Write(sum[:])
	}
	var tr [runTrailerLen]byte
	binary.LittleEndian.PutUint32(tr[0:], runEnd)
	binary.LittleEndian.PutUint64(tr[4:], uint64(len(rows)))
	binary.LittleEndian.PutUint32(tr[12:], crc32.Checksum(tr[:12], castagnoli))
	w.Write(tr[:])
	return w.Flush()
}

// runIter reads a spill run back. Every Row it returns is freshly allocated
// and stays valid after Next.
type runIter struct {
	path string
	c    io.Closer
	r    *bufio.Reader
	row  *logfile.Row
	rows uint64
	err  error
	done bool
}

var _ logfile.Iterator = (*runIter)(nil)

func openRun(path string) (*runIter, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrSpillCorrupt)
	}
	it, err := newRunIter(path, fd)
	if err != nil {
		_ = fd.Close()
		return nil, err
	}
	it.c = fd
	return it, nil
}

// newRunIter reads a run from r; name is for errors.
func newRunIter(name string, r io.Reader) (*runIter, error) {
	it := &runIter{path: name, r: bufio.NewReaderSize(r, runReadBuffer)}
	var magic [len(runMagic)]byte
	if _, err := io.ReadFull(it.r, magic[:]); err != nil || string(magic[:]) != runMagic {
		return nil, fmt.Errorf("%s: bad magic: %w", name, ErrSpillCorrupt)
	}
	return it, nil
}

func (it *runIter) fail(format string, args ...any) bool {
	it.err = fmt.Errorf("%s: %s: %w", it.path, fmt.Sprintf(format, args...), ErrSpillCorrupt)
	it.row = nil
	return false
}

func (it *runIter) Next() bool {
	if it.err != nil || it.done {
		return false
	}
	var hdr [runHeaderLen]byte
	if _, err := io.ReadFull(it.r, hdr[:4]); err != nil {
		return it.fail("record %d: %v", it.rows, err)
	}
	keyLen := binary.LittleEndian.Uint32(hdr[0:])
	if keyLen == runEnd {
		var tr [runTrailerLen]byte
		copy(tr[:4], hdr[:4])
		if _, err := io.ReadFull(it.r, tr[4:]); err != nil {
			return it.fail("trailer: %v", err)
		}
		if crc32.Checksum(tr[:12], castagnoli) != binary.LittleEndian.Uint32(tr[12:]) {
			return it.fail("trailer checksum mismatch")
		}
		if n := binary.LittleEndian.Uint64(tr[4:]); n != it.rows {
			return it.fail("trailer says %d rows, read %d", n, it.rows)
		}
		if _, err := it.r.ReadByte(); err != io.EOF {
			return it.fail("bytes after the trailer")
		}
		it.done, it.row = true, nil
		return false
	}
	if _, err := io.ReadFull(it.r, hdr[4:]); err != nil {
		return it.fail("record %d: %v", it.rows, err)
	}
	if crc32.Checksum(hdr[:runFieldsLen], castagnoli) != binary.LittleEndian.Uint32(hdr[runFieldsLen:]) {
		return it.fail("record %d: header checksum mismatch", it.rows)
	}
	valueLen := binary.LittleEndian.Uint32(hdr[4:])
	oldLen := binary.LittleEndian.Uint32(hdr[8:])
	total := uint64(keyLen) + uint64(valueLen) + uint64(oldLen)
	if total > maxRecord {
		return it.fail("record %d: %d bytes", it.rows, total)
	}
	buf := make([]byte, total+4)
	if _, err := io.ReadFull(it.r, buf); err != nil {
		return it.fail("record %d: %v", it.rows, err)
	}
	crc := crc32.Update(0, castagnoli, hdr[:])
	crc = crc32.Update(crc, castagnoli, buf[:total])
	if crc != binary.LittleEndian.Uint32(buf[total:]) {
		return it.fail("record %d: checksum mismatch", it.rows)
	}
	flags := hdr[32]
	switch {
	case flags&^(flagValue|flagHasOld|flagOldValue) != 0:
		return it.fail("record %d: unknown flags %#x", it.rows, flags)
	case valueLen > 0 && flags&flagValue == 0, oldLen > 0 && flags&flagOldValue == 0:
		return it.fail("record %d: bytes of a nil value", it.rows)
	}
	row := &logfile.Row{
		CommitTS:    binary.LittleEndian.Uint64(hdr[12:]),
		StartTS:     binary.LittleEndian.Uint64(hdr[20:]),
		Op:          logfile.Op(int32(binary.LittleEndian.Uint32(hdr[28:]))),
		HasOldValue: flags&flagHasOld != 0,
	}
	k, v := uint64(keyLen), uint64(keyLen)+uint64(valueLen)
	row.Key = buf[:k:k]
	if flags&flagValue != 0 {
		row.Value = buf[k:v:v]
	}
	if flags&flagOldValue != 0 {
		row.OldValue = buf[v:total:total]
	}
	it.row = row
	it.rows++
	return true
}

func (it *runIter) Row() *logfile.Row { return it.row }
func (it *runIter) Err() error        { return it.err }

func (it *runIter) Close() error {
	if it.c == nil {
		return nil
	}
	err := it.c.Close()
	it.c = nil
	return err
}

// runPath names the seq-th run in dir.
func runPath(dir string, seq uint64) string {
	return filepath.Join(dir, fmt.Sprintf("run-%016x%s", seq, runSuffix))
}

// removeRuns deletes every spill run in dir (left by an earlier process, or
// at Close).
func removeRuns(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), "run-") && strings.HasSuffix(e.Name(), runSuffix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
