package pd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

const (
	logicalBits = 18
	maxLogical  = int64(1) << logicalBits
	// tsoSaveWindow is how far ahead of the issued physical part the
	// persisted bound is moved (PD's save-interval * 3 default).
	tsoSaveWindow = 3 * time.Second
	// tsoSaveMargin: the bound is moved when the issued physical part gets
	// this close to it, so that most calls never wait for etcd.
	tsoSaveMargin = time.Second
)

// errTSONotReady is returned before the allocator has loaded its bound.
var errTSONotReady = errors.New("tso is not initialised")

// ComposeTS returns the timestamp of a physical (ms) and logical part.
func ComposeTS(physical, logical int64) uint64 {
	return uint64(physical<<logicalBits | logical)
}

// ExtractPhysical returns the physical (ms) part of a timestamp.
func ExtractPhysical(ts uint64) int64 { return int64(ts >> logicalBits) }

// tsoAllocator hands out strictly increasing (physical, logical) pairs.
// Every issued physical part is below limit, which is persisted before it is
// reached, so a restart can start above everything issued before.
type tsoAllocator struct {
	mu       sync.Mutex
	ready    bool
	physical int64 // ms
	logical  int64
	limit    int64 // ms, exclusive; persisted
	save     func(ctx context.Context, limitMs int64) error
}

func newTSOAllocator(save func(ctx context.Context, limitMs int64) error) *tsoAllocator {
	return &tsoAllocator{save: save}
}

// init starts the allocator above the previously persisted bound.
func (a *tsoAllocator) init(ctx context.Context, savedLimitMs int64, nowMs int64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := nowMs
	if p <= savedLimitMs {
		p = savedLimitMs + 1
	}
	limit := p + tsoSaveWindow.Milliseconds()
	if err := a.save(ctx, limit); err != nil {
		return err
	}
	a.physical, a.logical, a.limit, a.ready = p, 0, limit, true
	return nil
}

// next reserves count timestamps and returns the physical part and the
// logical part of the LAST one, as PD's Tso RPC does: the batch is
// (physical, last-count+1) .. (physical, last).
func (a *tsoAllocator) next(ctx context.Context, count uint32, nowMs int64) (physical, last int64, err error) {
	if count == 0 {
		return 0, 0, errors.New("tso count should be positive")
	}
	n := int64(count)
	if n >= maxLogical {
		return 0, 0, fmt.Errorf("tso count %d is too large", count)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ready {
		return 0, 0, errTSONotReady
	}
	p, l := a.physical, a.logical
	if nowMs > p {
		p, l = nowMs, 0
	}
	if l+n >= maxLogical {
		// Logical overflow: borrow the next millisecond.
		p, l = p+1, 0
	}
	if p+tsoSaveMargin.Milliseconds() >= a.limit {
		limit := p + tsoSaveWindow.Milliseconds()
		if err := a.save(ctx, limit); err != nil {
			return 0, 0, fmt.Errorf("save tso window: %w", err)
		}
		a.limit = limit
	}
	a.physical, a.logical = p, l+n
	return a.physical, a.logical, nil
}

func (s *Server) tsoKey() string { return s.root + "/timestamp" }

func (s *Server) saveTSOLimit(ctx context.Context, limitMs int64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(time.UnixMilli(limitMs).UnixNano()))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := s.cli.Put(ctx, s.tsoKey(), string(b[:]))
	return err
}

func (s *Server) initTSO(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.tsoKey())
	if err != nil {
		return fmt.Errorf("pd: load tso window: %w", err)
	}
	var saved int64
	if len(resp.Kvs) > 0 {
		v := resp.Kvs[0].Value
		if len(v) != 8 {
			return fmt.Errorf("pd: tso window %q: want 8 bytes, got %d", s.tsoKey(), len(v))
		}
		saved = time.Unix(0, int64(binary.BigEndian.Uint64(v))).UnixMilli()
	}
	if err := s.tso.init(ctx, saved, time.Now().UnixMilli()); err != nil {
		return fmt.Errorf("pd: init tso: %w", err)
	}
	return nil
}

// TS allocates one timestamp in-process.
func (s *Server) TS(ctx context.Context) (uint64, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	p, l, err := s.tso.next(ctx, 1, time.Now().UnixMilli())
	if err != nil {
		return 0, err
	}
	return ComposeTS(p, l), nil
}

// resetTo moves the allocator to ts, so that the next timestamp is above
// it (PD's admin reset-ts); a ts below the last one issued is refused.
func (a *tsoAllocator) resetTo(ctx context.Context, ts uint64) error {
	p, l := ExtractPhysical(ts), int64(ts&uint64(maxLogical-1))
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ready {
		return errTSONotReady
	}
	if p < a.physical || (p == a.physical && l < a.logical) {
		return errors.New("the specified ts is smaller than now")
	}
	if limit := p + tsoSaveWindow.Milliseconds(); p+tsoSaveMargin.Milliseconds() >= a.limit {
		if err := a.save(ctx, limit); err != nil {
			return fmt.Errorf("save tso window: %w", err)
		}
		a.limit = limit
	}
	a.physical, a.logical = p, l
	return nil
}
