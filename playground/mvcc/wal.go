package mvcc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Persistence: a write-ahead log of batches plus a checkpoint file; see
// doc.go for the byte layout.

const (
	checkpointName  = "mvcc.checkpoint"
	checkpointMagic = "PITRMVC2"
	// checkpointMagicV1 is format version 1: no applied index.
	checkpointMagicV1 = "PITRMVC1"
	walPrefix         = "wal-"
	walSuffix         = ".log"
	frameHeaderLen    = 8
	maxFrameLen       = 1 << 30
	ckptBatchMods     = 1024
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func walName(seg uint64) string { return fmt.Sprintf("%s%020d%s", walPrefix, seg, walSuffix) }

func appendFrame(b, payload []byte) []byte {
	var h [frameHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[4:8], crc32.Checksum(payload, crcTable))
	b = append(b, h[:]...)
	return append(b, payload...)
}

// errTorn reports a frame cut short or failing its checksum.
var errTorn = errors.New("torn frame")

// readFrame reads one frame; io.EOF at a clean end.
func readFrame(r *bufio.Reader) ([]byte, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, errTorn
	}
	n := binary.LittleEndian.Uint32(h[0:4])
	if n > maxFrameLen {
		return nil, errTorn
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, errTorn
	}
	if crc32.Checksum(p, crcTable) != binary.LittleEndian.Uint32(h[4:8]) {
		return nil, errTorn
	}
	return p, nil
}

// wal is the open log. All fields are guarded by the engine's write lock,
// except that the syncer may call f.Sync concurrently (safe on *os.File).
type wal struct {
	dir   string
	seg   uint64
	f     *os.File
	size  int64 // bytes in segments since the last checkpoint
	dirty bool
	buf   []byte
}

func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, walPrefix) || !strings.HasSuffix(name, walSuffix) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, walPrefix), walSuffix), 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, n)
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i] < segs[j] })
	return segs, nil
}

// errWALGap reports a missing log segment between the checkpoint and a
// later segment: replaying past it would skip batches.
var errWALGap = errors.New("wal segment missing")

// recover loads dir into v: the checkpoint, then every WAL segment from the
// checkpoint's first segment on. It truncates a torn tail of the last
// segment and returns the next segment number, the persisted max_ts and
// the applied index (the checkpoint's plus one per replayed batch).
//
// The segments from the checkpoint's first one on must be contiguous: a
// gap (a copy of the directory that took an old checkpoint and missed a
// segment deleted since) is an error, never a silent skip.
func recoverDir(dir string, v *view, logger hclog.Logger) (nextSeg, maxTS, applied uint64, err error) {
	firstSeg, maxTS, applied, err := loadCheckpoint(filepath.Join(dir, checkpointName), v)
	if err != nil {
		return 0, 0, 0, err
	}
	segs, err := listSegments(dir)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("list wal: %w", err)
	}
	nextSeg = firstSeg
	for i, seg := range segs {
		path := filepath.Join(dir, walName(seg))
		if seg < firstSeg {
			// Covered by the checkpoint; left over from a crash before cleanup.
			if err := os.Remove(path); err != nil {
				return 0, 0, 0, fmt.Errorf("remove old wal: %w", err)
			}
			continue
		}
		if seg != nextSeg {
			return 0, 0, 0, fmt.Errorf("replay: next segment is %s, found %s: %w", walName(nextSeg), walName(seg), errWALGap)
		}
		last := i == len(segs)-1
		n, err := replaySegment(path, v, last, logger)
		if err != nil {
			return 0, 0, 0, err
		}
		applied += n
		nextSeg = seg + 1
	}
	return nextSeg, maxTS, applied, nil
}

// replaySegment applies the batches of one segment and returns how many.
func replaySegment(path string, v *view, last bool, logger hclog.Logger) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open wal: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var good int64
	var n uint64
	for {
		p, err := readFrame(r)
		if err == io.EOF {
			return n, nil
		}
		if err == nil {
			var mods []Modify
			mods, err = decodeBatch(p)
			if err == nil {
				for i := range mods {
					v.apply(&mods[i])
				}
				good += int64(frameHeaderLen + len(p))
				n++
				continue
			}
		}
		if !last {
			return 0, fmt.Errorf("replay %s at offset %d: %w", filepath.Base(path), good, err)
		}
		logger.Warn("truncating torn wal tail", "file", filepath.Base(path), "offset", good, "error", err)
		if err := os.Truncate(path, good); err != nil {
			return 0, fmt.Errorf("truncate torn wal: %w", err)
		}
		return n, nil
	}
}

func openSegment(dir string, seg uint64) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, walName(seg)), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create wal segment: %w", err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// append writes one batch as one frame with one write call, so that a
// killed process loses at most a torn tail that recovery cuts off.
func (w *wal) append(mods []Modify) error {
	w.buf = w.buf[:0]
	w.buf = append(w.buf, make([]byte, frameHeaderLen)...)
	w.buf = encodeBatch(w.buf, mods)
	p := w.buf[frameHeaderLen:]
	binary.LittleEndian.PutUint32(w.buf[0:4], uint32(len(p)))
	binary.LittleEndian.PutUint32(w.buf[4:8], crc32.Checksum(p, crcTable))
	if _, err := w.f.Write(w.buf); err != nil {
		return err
	}
	w.size += int64(len(w.buf))
	w.dirty = true
	if cap(w.buf) > 4<<20 {
		w.buf = nil
	}
	return nil
}

// rotate syncs and closes the current segment and opens the next one. It
// returns the number of the new segment.
func (w *wal) rotate() (uint64, error) {
	if err := w.f.Sync(); err != nil {
		return 0, fmt.Errorf("sync wal: %w", err)
	}
	if err := w.f.Close(); err != nil {
		return 0, fmt.Errorf("close wal: %w", err)
	}
	f, err := openSegment(w.dir, w.seg+1)
	if err != nil {
		return 0, err
	}
	w.f, w.seg, w.size, w.dirty = f, w.seg+1, 0, false
	return w.seg, nil
}

// loadCheckpoint reads the checkpoint into v; a missing file is an empty
// store whose log starts at segment 0. Format version 1 has no applied
// index (0).
func loadCheckpoint(path string, v *view) (firstSeg, maxTS, applied uint64, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, 0, nil
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("open checkpoint: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var h [len(checkpointMagic) + 16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, 0, fmt.Errorf("read checkpoint header: %w", errCorrupt)
	}
	switch string(h[:len(checkpointMagic)]) {
	case checkpointMagic:
		var a [8]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return 0, 0, 0, fmt.Errorf("read checkpoint header: %w", errCorrupt)
		}
		applied = binary.LittleEndian.Uint64(a[:])
	case checkpointMagicV1:
	default:
		return 0, 0, 0, fmt.Errorf("checkpoint magic: %w", errCorrupt)
	}
	firstSeg = binary.LittleEndian.Uint64(h[len(checkpointMagic):])
	maxTS = binary.LittleEndian.Uint64(h[len(checkpointMagic)+8:])
	for {
		p, err := readFrame(r)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("read checkpoint: %w", errCorrupt)
		}
		if len(p) == 0 {
			return firstSeg, maxTS, applied, nil
		}
		mods, err := decodeBatch(p)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("read checkpoint: %w", err)
		}
		for i := range mods {
			v.apply(&mods[i])
		}
	}
}

// writeCheckpoint writes the full state of v (a frozen clone) to dir,
// durably: temp file, fsync, rename, fsync dir.
func writeCheckpoint(dir string, v *view, firstSeg, maxTS, applied uint64) error {
	path := filepath.Join(dir, checkpointName)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create checkpoint: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	var h [len(checkpointMagic) + 24]byte
	copy(h[:], checkpointMagic)
	binary.LittleEndian.PutUint64(h[len(checkpointMagic):], firstSeg)
	binary.LittleEndian.PutUint64(h[len(checkpointMagic)+8:], maxTS)
	binary.LittleEndian.PutUint64(h[len(checkpointMagic)+16:], applied)
	_, werr := bw.Write(h[:])
	var mods []Modify
	var frame, payload []byte
	flush := func() {
		if werr != nil || len(mods) == 0 {
			return
		}
		payload = encodeBatch(payload[:0], mods)
		frame = appendFrame(frame[:0], payload)
		_, werr = bw.Write(frame)
		mods = mods[:0]
	}
	add := func(m Modify) {
		mods = append(mods, m)
		if len(mods) >= ckptBatchMods {
			flush()
		}
	}
	v.locks.Ascend(func(it lockItem) bool {
		add(Modify{CF: CFLock, Key: it.key, Lock: it.lock})
		return werr == nil
	})
	v.data.Ascend(func(it verItem) bool {
		add(Modify{CF: CFDefault, Key: it.key, TS: it.ts, Value: it.val})
		return werr == nil
	})
	v.writes.Ascend(func(it verItem) bool {
		add(Modify{CF: CFWrite, Key: it.key, TS: it.ts, Write: it.w})
		return werr == nil
	})
	flush()
	if werr == nil {
		_, werr = bw.Write(appendFrame(nil, nil))
	}
	if werr == nil {
		werr = bw.Flush()
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write checkpoint: %w", werr)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install checkpoint: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir: %w", err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if serr != nil {
		return fmt.Errorf("sync dir: %w", serr)
	}
	return cerr
}
