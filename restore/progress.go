package restore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pitr-io/pitr/checksum"
	"github.com/pitr-io/pitr/keyspace"
)

// The progress file (local, one per restore) lets a rerun after a crash or
// a kill skip the work already done. Format version 2, JSON:
//
//	{
//	  "version": 1,
//	  "storage": "s3://bucket/prefix",      // the backup (redacted URL)
//	  "task": "name",
//	  "restore_ts": 4626...,               // T
//	  "target_cluster_id": 7312...,        // the target cluster
//	  "started_unix_ms": 1767...,          // first write to the target
//	  "gc_ratio_threshold": {"1": "1.1"},   // store id -> its gc.ratio-threshold before the restore turned GC off (gc.go)
//	  "done": [{"start": "hex", "end": "hex"}, ...],  // ingested key ranges, sorted, merged; "" end = +inf
//	  "checksums": [{"start": "hex", "end": "hex", "crc64_xor": 123, "kvs": 4, "bytes": 56}, ...],
//	  "finished": false
//	}
//
// A range is recorded only after every version of it with commit_ts ≤ T
// is ingested. gc_ratio_threshold holds the values to set back while GC is
// held off on the target; an entry is written before its store is changed
// and removed once its old value is set back. Version 1 files (no
// gc_ratio_threshold) are read as well; version 2 is written, so a build
// that would not set GC back refuses the file. checksums (optional, so
// still version 2: a build without it ignores the field and only skips the
// check) holds the expected checksum of each key range a single-pass
// sweep read, what a read at T returns there; a rerun checks those ranges
// too after its writes. Writes are durable: temp
// file, fsync, rename, fsync dir. A file for another (storage, T, target)
// is refused, never reused.

const progressVersion = 2

type progressState struct {
	Version   int               `json:"version"`
	Storage   string            `json:"storage"`
	Task      string            `json:"task"`
	RestoreTS uint64            `json:"restore_ts"`
	ClusterID uint64            `json:"target_cluster_id"`
	StartedMS int64             `json:"started_unix_ms,omitempty"`
	GCRatio   map[uint64]string `json:"gc_ratio_threshold,omitempty"`
	Done      []doneRange       `json:"done"`
	Checksums []rangeSum        `json:"checksums,omitempty"`
	Finished  bool              `json:"finished"`
}

type rangeSum struct {
	Start    string `json:"start"`
	End      string `json:"end"`
	Crc64Xor uint64 `json:"crc64_xor"`
	Kvs      uint64 `json:"kvs"`
	Bytes    uint64 `json:"bytes"`
}

// expectedSum is a range's checksum as a read at T returns it.
type expectedSum struct {
	Range keyspace.Range
	Sum   checksum.Sum
}

type doneRange struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// progressSaveInterval bounds how often the file is rewritten while units
// finish; a kill loses at most this much recorded work.
const progressSaveInterval = 500 * time.Millisecond

type progress struct {
	path string

	mu       sync.Mutex
	st       progressState
	done     []keyspace.Range // decoded st.Done
	lastSave time.Time
	dirty    bool
}

// DefaultProgressPath is where the progress of a restore of storageURL to
// ts into the cluster clusterID is kept when no path is given: under the
// user's cache directory (or the current directory), named by a hash of
// the three.
func DefaultProgressPath(storageURL string, ts, clusterID uint64) string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = "."
	}
	h := sha256.Sum256([]byte(storageURL + "\x00" + strconv.FormatUint(ts, 10) + "\x00" + strconv.FormatUint(clusterID, 10)))
	return filepath.Join(dir, "pitr", "restore-"+hex.EncodeToString(h[:8])+".json")
}

// openProgress reads the progress file at path, or starts a new one (not
// written until the first save). A file for another restore is an error.
func openProgress(path string, want progressState) (*progress, error) {
	p := &progress{path: path, st: want}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		p.st.Version = progressVersion
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read progress file: %w", err)
	}
	var st progressState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("progress file %s is not readable (%v); remove it to start over", path, err)
	}
	if st.Version > progressVersion || st.Version <= 0 {
		return nil, fmt.Errorf("progress file %s has version %d; this build reads version %d", path, st.Version, progressVersion)
	}
	if st.Storage != want.Storage || st.RestoreTS != want.RestoreTS || st.ClusterID != want.ClusterID {
		return nil, fmt.Errorf("progress file %s belongs to another restore (%s to %d into cluster %d); pass another --progress-file",
			path, st.Storage, st.RestoreTS, st.ClusterID)
	}
	for _, d := range st.Done {
		s, err1 := hex.DecodeString(d.Start)
		e, err2 := hex.DecodeString(d.End)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("progress file %s: bad range %q..%q; remove it to start over", path, d.Start, d.End)
		}
		p.done = append(p.done, keyspace.Range{Start: s, End: e})
	}
	p.done = keyspace.Merge(p.done)
	for _, c := range st.Checksums {
		_, err1 := hex.DecodeString(c.Start)
		_, err2 := hex.DecodeString(c.End)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("progress file %s: bad checksum range %q..%q; remove it to start over", path, c.Start, c.End)
		}
	}
	st.Version = progressVersion
	p.st = st
	return p, nil
}

// gcRatio returns the recorded old gc.ratio-threshold of a store.
func (p *progress) gcRatio(storeID uint64) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.st.GCRatio[storeID]
	return v, ok
}

// gcRatios returns a copy of every recorded old gc.ratio-threshold.
func (p *progress) gcRatios() map[uint64]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[uint64]string, len(p.st.GCRatio))
	for k, v := range p.st.GCRatio {
		out[k] = v
	}
	return out
}

// recordGCRatio records, durably, a store's gc.ratio-threshold before the
// restore changes it.
func (p *progress) recordGCRatio(storeID uint64, v string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st.GCRatio == nil {
		p.st.GCRatio = map[uint64]string{}
	}
	p.st.GCRatio[storeID] = v
	return p.saveLocked()
}

// forgetGCRatios removes, durably, the stores whose value was set back.
func (p *progress) forgetGCRatios(storeIDs ...uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(storeIDs) == 0 {
		return nil
	}
	for _, id := range storeIDs {
		delete(p.st.GCRatio, id)
	}
	return p.saveLocked()
}

// recordSum records a range's expected checksum (saved with the next
// save), replacing one recorded for the same range.
func (p *progress) recordSum(r keyspace.Range, s checksum.Sum) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := rangeSum{Start: hex.EncodeToString(r.Start), End: hex.EncodeToString(r.End), Crc64Xor: s.Crc64Xor, Kvs: s.TotalKvs, Bytes: s.TotalBytes}
	for i, o := range p.st.Checksums {
		if o.Start == rs.Start && o.End == rs.End {
			p.st.Checksums[i] = rs
			p.dirty = true
			return nil
		}
	}
	p.st.Checksums = append(p.st.Checksums, rs)
	p.dirty = true
	return nil
}

// sums returns the recorded expected checksums, in key order.
func (p *progress) sums() []expectedSum {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []expectedSum
	for _, rs := range p.st.Checksums {
		s, err1 := hex.DecodeString(rs.Start)
		e, err2 := hex.DecodeString(rs.End)
		if err1 != nil || err2 != nil {
			continue // checked on open
		}
		out = append(out, expectedSum{Range: keyspace.Range{Start: s, End: e}, Sum: checksum.Sum{Crc64Xor: rs.Crc64Xor, TotalKvs: rs.Kvs, TotalBytes: rs.Bytes}})
	}
	slices.SortFunc(out, func(a, b expectedSum) int { return bytes.Compare(a.Range.Start, b.Range.Start) })
	return out
}

// started reports whether an earlier run already wrote to the target.
func (p *progress) started() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.StartedMS != 0
}

func (p *progress) finished() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.Finished
}

// isDone reports whether the whole unit is recorded as done.
func (p *progress) isDone(u keyspace.Range) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearchFunc(p.done, u.Start, func(r keyspace.Range, k []byte) int {
		if bytes.Compare(r.Start, k) > 0 {
			return 1
		}
		return -1
	})
	return i > 0 && p.done[i-1].Contains(u.Start) && keyspace.CompareEnds(u.End, p.done[i-1].End) <= 0
}

// markStarted records, durably, that writing begins.
func (p *progress) markStarted() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st.StartedMS == 0 {
		p.st.StartedMS = time.Now().UnixMilli()
	}
	return p.saveLocked()
}

// markDone records units as done; the file is rewritten at most every
// progressSaveInterval (flush writes the rest).
func (p *progress) markDone(units ...keyspace.Range) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = keyspace.Merge(append(p.done, units...))
	p.dirty = true
	if time.Since(p.lastSave) < progressSaveInterval {
		return nil
	}
	return p.saveLocked()
}

// flush writes pending changes.
func (p *progress) flush(finished bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if finished {
		p.st.Finished = true
		p.dirty = true
	}
	if !p.dirty {
		return nil
	}
	return p.saveLocked()
}

func (p *progress) saveLocked() error {
	p.st.Done = p.st.Done[:0]
	for _, r := range p.done {
		p.st.Done = append(p.st.Done, doneRange{Start: hex.EncodeToString(r.Start), End: hex.EncodeToString(r.End)})
	}
	b, err := json.MarshalIndent(&p.st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p.path, append(b, '\n')); err != nil {
		return fmt.Errorf("save progress file: %w", err)
	}
	p.lastSave, p.dirty = time.Now(), false
	return nil
}

// writeFileAtomic writes b to path durably: temp file, fsync, rename,
// fsync of the directory.
func writeFileAtomic(path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return err
	}
	return d.Close()
}
