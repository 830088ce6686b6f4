package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/pitr-io/pitr/flush"
	"github.com/pitr-io/pitr/logfile"
	"github.com/pitr-io/pitr/merge"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/storage"
)

// The merge of a compaction (step 2). Its CPU goes to decoding the inputs,
// the k-way merge and, most, zstd-encoding the outputs, so it is split by
// key into parts merged at once, each on its own goroutine and writing its
// own files:
//
//   - the parts are consecutive key ranges [split[i-1], split[i]) with
//     about equal bytes each, estimated from the inputs' key bounds and
//     sizes (each file's bytes taken as spread evenly between its min and
//     max key); a misestimate costs balance, never rows: every row lies
//     in exactly one part, and duplicates (equal key) in the same one;
//   - there are at most Concurrency parts, no more than the CPUs (a part
//     is CPU-bound), and only as many as keep every part about
//     FileTarget·5/4 bytes or more, so the outputs stay ≥ FileTarget
//     where the data allows;
//   - the files of the parts, in part order, are in key order and do not
//     overlap: the compacted meta lists them so.
//
// Each input is read once. A file of at most compactInMemory bytes is read
// whole while its size and sha256 are checked, and decoded from that copy
// by every part that needs it; an iterator would hold about as much (its
// current row group, for a small file the whole of it) for the length of
// the merge anyway. Larger files are checked by a streaming read and then
// read by row group, as a restore reads them.

// compactInMemory is the largest input kept in memory after its check.
const compactInMemory = logfile.DefaultRowGroupBytes

// compactPartSlack: a part gets at least FileTarget·compactPartSlack
// estimated bytes, so an underestimate still leaves it ≥ FileTarget.
const compactPartSlack = 1.25

// mergeInto checks inputs and merges their rows (sorted, duplicates
// dropped) into new files under compacted/data/, in key order.
func mergeInto(ctx context.Context, st storage.Storage, inputs []FileRef, maxTS uint64, o CompactOptions) ([]*pitrpb.DataFile, error) {
	bufs := make([]*bytes.Buffer, len(inputs))
	keep := func(i int) *bytes.Buffer {
		size := inputs[i].File.GetSize()
		if size > compactInMemory {
			return nil
		}
		b := bytes.NewBuffer(make([]byte, 0, size))
		bufs[i] = b
		return b
	}
	if err := checkEach(ctx, sources{log: st}, inputs, o.Concurrency, nil, keep); err != nil {
		return nil, err
	}
	readers := make([]*logfile.Reader, len(inputs))
	for i, f := range inputs {
		var rd *logfile.Reader
		var err error
		if b := bufs[i]; b != nil {
			rd, err = logfile.NewReader(bytes.NewReader(b.Bytes()), int64(b.Len()))
			if err != nil {
				err = dataError(f, err)
			}
		} else {
			rd, err = openFile(ctx, st, f)
		}
		if err != nil {
			return nil, err
		}
		readers[i] = rd
	}

	var stored int64
	for _, f := range inputs {
		stored += f.File.GetSize()
	}
	n := int(float64(stored) / (float64(o.FileTarget) * compactPartSlack))
	n = max(1, min(n, o.Concurrency, runtime.GOMAXPROCS(0)))
	line, splits := compactSplits(inputs, n)
	parts := make([][]*pitrpb.DataFile, len(splits)+1)
	g, gctx := errgroup.WithContext(ctx)
	for p := range parts {
		var lo, hi []byte
		if p > 0 {
			lo = splits[p-1]
		}
		if p < len(splits) {
			hi = splits[p]
		}
		g.Go(func() error {
			files, err := mergePart(gctx, st, inputs, readers, line, lo, hi, maxTS, len(parts), o)
			parts[p] = files
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return slices.Concat(parts...), nil
}

// mergePart merges the rows of [lo, hi) (nil: unbounded) of the inputs
// into files. Of n parts at once, it uploads its share of Concurrency/2
// files at a time.
func mergePart(ctx context.Context, st storage.Storage, inputs []FileRef, readers []*logfile.Reader, line keyLine, lo, hi []byte, maxTS uint64, n int, o CompactOptions) ([]*pitrpb.DataFile, error) {
	var its []logfile.Iterator
	var logical float64 // estimated, for the size of the part's last file
	for i, f := range inputs {
		if !overlaps(f.File, lo, hi) {
			continue
		}
		its = append(its, readers[i].Iter(lo, hi))
		from, to := 0.0, 1.0
		if lo != nil {
			from = line.fraction(f.File, lo)
		}
		if hi != nil {
			to = line.fraction(f.File, hi)
		}
		logical += max(to-from, 0) * float64(f.File.GetLogicalBytes())
	}
	src := merge.Merge(its...)
	files, err := flush.WriteFiles(ctx, st, src, flush.FileOptions{
		FileTarget:        o.FileTarget,
		UploadConcurrency: max(o.Concurrency/2/n, 1),
		// Row groups of at most an eighth of the target, as the agents'
		// and snapshots' files: a file is cut once its bytes written
		// reach the target, and a row group's bytes are written when it
		// ends, so 8 MiB row groups overshot a small target by up to
		// 8 MiB of rows.
		Writer: logfile.WriterOptions{RowGroupBytes: max(min(logfile.DefaultRowGroupBytes, o.FileTarget/8), 1)},
		Total:  int64(logical),
		Path:   func(id string) string { return logfile.CompactedDataPath(maxTS, id) },
	})
	if cerr := src.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write compacted files: %w", err)
	}
	return files, nil
}

// overlaps reports whether f's keys [MinKey, MaxKey] meet [lo, hi).
func overlaps(f *pitrpb.DataFile, lo, hi []byte) bool {
	return (lo == nil || bytes.Compare(f.GetMaxKey(), lo) >= 0) && (hi == nil || bytes.Compare(f.GetMinKey(), hi) < 0)
}

// keyLine maps keys between two bounds to numbers, in order: the 8 bytes
// after the bounds' common prefix, big-endian. It is an estimate of where
// a key lies, for splitting; keys that differ only further on map alike.
type keyLine struct{ prefix []byte }

func newKeyLine(a, b []byte) keyLine {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return keyLine{prefix: a[:n]}
}

func (l keyLine) pos(k []byte) float64 {
	var b [8]byte
	if len(k) > len(l.prefix) {
		copy(b[:], k[len(l.prefix):])
	}
	return float64(binary.BigEndian.Uint64(b[:]))
}

func (l keyLine) key(pos float64) []byte {
	u := uint64(math.MaxUint64)
	if pos < 0x1p64 {
		u = uint64(pos)
	}
	return binary.BigEndian.AppendUint64(bytes.Clone(l.prefix), u)
}

// below estimates the share of f's rows with keys before the position t
// on l: its bytes spread evenly over [pos(MinKey), pos(MaxKey)].
func (l keyLine) below(f *pitrpb.DataFile, t float64) float64 {
	a, b := l.pos(f.GetMinKey()), l.pos(f.GetMaxKey())
	switch {
	case t <= a:
		return 0
	case t > b:
		return 1
	}
	return (t - a) / (b - a)
}

// fraction is below for a key, exact at and outside f's bounds.
func (l keyLine) fraction(f *pitrpb.DataFile, k []byte) float64 {
	switch {
	case bytes.Compare(k, f.GetMinKey()) <= 0:
		return 0
	case bytes.Compare(k, f.GetMaxKey()) > 0:
		return 1
	}
	return l.below(f, l.pos(k))
}

// compactSplits returns up to n-1 ascending keys that cut the inputs' key
// space into n ranges of about equal stored bytes (see keyLine.below), and
// the line it estimated them on.
func compactSplits(inputs []FileRef, n int) (keyLine, [][]byte) {
	if len(inputs) == 0 {
		return keyLine{}, nil
	}
	lo, hi := inputs[0].File.GetMinKey(), inputs[0].File.GetMaxKey()
	var total float64
	for _, f := range inputs {
		lo, hi = minBytes(lo, f.File.GetMinKey()), maxBytes(hi, f.File.GetMaxKey())
		total += float64(f.File.GetSize())
	}
	l := newKeyLine(lo, hi)
	if n <= 1 || bytes.Equal(lo, hi) {
		return l, nil
	}
	cum := func(t float64) float64 {
		var s float64
		for _, f := range inputs {
			s += l.below(f.File, t) * float64(f.File.GetSize())
		}
		return s
	}
	var out [][]byte
	a := l.pos(lo)
	for j := 1; j < n; j++ {
		want := total * float64(j) / float64(n)
		b := l.pos(hi)
		for range 64 { // bisect: the smallest t with cum(t) >= want
			m := a + (b-a)/2
			if m <= a || m >= b {
				break
			}
			if cum(m) >= want {
				b = m
			} else {
				a = m
			}
		}
		k := l.key(b)
		if bytes.Compare(k, lo) <= 0 || bytes.Compare(k, hi) > 0 || len(out) > 0 && bytes.Compare(k, out[len(out)-1]) <= 0 {
			continue
		}
		out = append(out, k)
	}
	return l, out
}

func minBytes(a, b []byte) []byte {
	if bytes.Compare(a, b) <= 0 {
		return a
	}
	return b
}

func maxBytes(a, b []byte) []byte {
	if bytes.Compare(a, b) >= 0 {
		return a
	}
	return b
}
