package restore

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/storage"
)

// Result is what a restore did.
type Result struct {
	RestoreTS uint64
	// BaseTS is the backup ts of the base snapshot written first (0: the
	// log alone was the base).
	BaseTS uint64
	// Files read, and their size in storage.
	Files     int
	FileBytes int64
	// Rows and Bytes (keys + values) written into the target.
	Rows, Bytes int64
	// Regions is the number of distinct target regions written.
	Regions int
	// Units done in this run, and skipped because an earlier run did them.
	Units, UnitsSkipped int
	// Chunks is the number of Write+MultiIngest rounds.
	Chunks   int64
	Duration time.Duration
	// ChecksumRanges counts the key ranges whose target checksum matched
	// the backup's; ChecksumSkipped the ranges not checksummed: sweeps
	// that took several passes, and ranges an earlier run finished
	// without recording their expected checksum.
	ChecksumRanges, ChecksumSkipped int
	// AlreadyDone: the progress file said the restore had finished; nothing
	// was written.
	AlreadyDone bool
}

// MBps is the restore throughput in MB/s of keys and values written.
func (r *Result) MBps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Duration.Seconds()
}

// Summary is the one-paragraph report printed at the end of a restore.
func (r *Result) Summary() string {
	if r.AlreadyDone {
		return fmt.Sprintf("restore to %s had already finished (per the progress file); nothing written", keyspace.Format(r.RestoreTS))
	}
	s := fmt.Sprintf("restored to %s: %d rows, %s of keys and values, from %d files (%s) into %d regions in %s (%.1f MB/s)",
		keyspace.Format(r.RestoreTS), r.Rows, storage.FormatBytes(r.Bytes), r.Files, storage.FormatBytes(r.FileBytes), r.Regions,
		r.Duration.Round(time.Millisecond), r.MBps())
	if r.UnitsSkipped > 0 {
		s += fmt.Sprintf("; resumed: %d of %d key ranges were already done", r.UnitsSkipped, r.UnitsSkipped+r.Units)
	}
	if r.ChecksumRanges > 0 || r.ChecksumSkipped > 0 {
		s += fmt.Sprintf("; checksum: %d ranges match", r.ChecksumRanges)
		if r.ChecksumSkipped > 0 {
			s += fmt.Sprintf(", %d not checksummed", r.ChecksumSkipped)
		}
	}
	return s
}

// meter counts the work of a running restore and draws the progress bar.
type meter struct {
	phase       atomic.Value // string
	total       atomic.Int64 // bytes expected in the current phase
	done        atomic.Int64 // bytes done in the current phase
	rows, bytes atomic.Int64 // written
	chunks      atomic.Int64
	start       time.Time
	phaseStart  atomic.Int64 // unix nanos

	regionsMu sync.Mutex
	regions   map[uint64]bool
}

func newMeter() *meter {
	m := &meter{start: time.Now(), regions: map[uint64]bool{}}
	m.setPhase("", 0)
	return m
}

func (m *meter) setPhase(name string, total int64) {
	m.phase.Store(name)
	m.total.Store(total)
	m.done.Store(0)
	m.phaseStart.Store(time.Now().UnixNano())
}

func (m *meter) wrote(regionID uint64, rows, bytes int64) {
	m.rows.Add(rows)
	m.bytes.Add(bytes)
	m.chunks.Add(1)
	m.regionsMu.Lock()
	m.regions[regionID] = true
	m.regionsMu.Unlock()
}

func (m *meter) regionCount() int {
	m.regionsMu.Lock()
	defer m.regionsMu.Unlock()
	return len(m.regions)
}

// line renders the bar: phase, percentage of the phase, bytes, rows
// written, write rate, ETA.
func (m *meter) line() string {
	const width = 24
	total, done := m.total.Load(), m.done.Load()
	frac := 0.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	fill := int(frac * width)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	if fill < width && fill > 0 {
		bar = bar[:fill-1] + ">" + bar[fill:]
	}
	el := time.Since(time.Unix(0, m.phaseStart.Load())).Seconds()
	eta := "--"
	if frac > 0.01 && el > 1 {
		eta = (time.Duration(el*(1-frac)/frac) * time.Second).Round(time.Second).String()
	}
	phase, _ := m.phase.Load().(string)
	rate := float64(m.bytes.Load()) / 1e6 / max(time.Since(m.start).Seconds(), 1e-3)
	if phase == "verify" {
		rate = float64(done) / 1e6 / max(el, 1e-3)
	}
	return fmt.Sprintf("%-7s [%s] %3.0f%%  %s of %s  %d rows / %s written  %.1f MB/s  ETA %s",
		phase, bar, 100*frac, storage.FormatBytes(done), storage.FormatBytes(total), m.rows.Load(), storage.FormatBytes(m.bytes.Load()), rate, eta)
}

// draw redraws the bar on w until ctx ends: in place every 500 ms on a
// terminal, one line every 10 s otherwise.
func (m *meter) draw(ctx context.Context, w io.Writer) {
	tty := isTerminal(w)
	every := 10 * time.Second
	if tty {
		every = 500 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintf(w, "\r%s\n", m.line())
			}
			return
		case <-tick.C:
			if tty {
				fmt.Fprintf(w, "\r%s", m.line())
			} else {
				fmt.Fprintln(w, m.line())
			}
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
