package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
)

// gcHold keeps a service GC safepoint at the backup ts while a backup runs
// (DESIGN §9): set before the first scan, refreshed every ttl/3, removed
// when released. A backup killed with -9 leaves it for at most ttl.
type gcHold struct {
	pd  Cluster
	id  string
	ts  uint64
	ttl time.Duration
	log hclog.Logger

	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	lost error // set when a refresh found GC past ts
}

// holdGC checks that ts is at or above PD's GC safepoint and holds it.
func holdGC(ctx context.Context, pd Cluster, ts uint64, ttl time.Duration, log hclog.Logger) (*gcHold, error) {
	return holdGCAs(ctx, pd, SafePointID(ts), ts, ttl, log)
}

// HoldGC holds the service GC safepoint id at ts, as a snapshot backup
// holds its own (refreshed every ttl/3; ErrConflict when ts is below the
// cluster's GC safepoint), until release, which removes it. A volume
// backup holds GC this way around its snapshots.
func HoldGC(ctx context.Context, pd Cluster, id string, ts uint64, ttl time.Duration, log hclog.Logger) (release func(), err error) {
	h, err := holdGCAs(ctx, pd, id, ts, ttl, log)
	if err != nil {
		return nil, err
	}
	return h.release, nil
}

func holdGCAs(ctx context.Context, pd Cluster, id string, ts uint64, ttl time.Duration, log hclog.Logger) (*gcHold, error) {
	sp, err := pd.UpdateGCSafePoint(ctx, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: read the GC safepoint: %v", connector.ErrUnavailable, err)
	}
	if ts < sp {
		return nil, fmt.Errorf("%w: backup ts %s is below the cluster's GC safepoint %s: the versions it needs may be gone; use a later --ts",
			ErrConflict, keyspace.Format(ts), keyspace.Format(sp))
	}
	h := &gcHold{pd: pd, id: id, ts: ts, ttl: ttl, log: log, stop: make(chan struct{})}
	if err := h.set(ctx); err != nil {
		return nil, err
	}
	h.wg.Add(1)
	go h.keep()
	return h, nil
}

// set stores the safepoint; PD keeps the minimum of the services', so a
// minimum above ts means GC already passed it (the safepoint was not
// stored).
func (h *gcHold) set(ctx context.Context) error {
	minSP, err := h.pd.UpdateServiceGCSafePoint(ctx, h.id, int64(h.ttl/time.Second), h.ts)
	if err != nil {
		return fmt.Errorf("%w: hold the GC safepoint at %s: %v", connector.ErrUnavailable, keyspace.Format(h.ts), err)
	}
	if minSP > h.ts {
		return fmt.Errorf("%w: GC has passed the backup ts %s (the service safepoint minimum is %s); start a new backup",
			ErrConflict, keyspace.Format(h.ts), keyspace.Format(minSP))
	}
	return nil
}

func (h *gcHold) keep() {
	defer h.wg.Done()
	t := time.NewTicker(h.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), h.ttl/3)
			err := h.set(ctx)
			cancel()
			if err != nil {
				h.log.Warn("refresh the backup's GC safepoint", "error", err)
				if errors.Is(err, ErrConflict) {
					h.mu.Lock()
					h.lost = err
					h.mu.Unlock()
				}
			}
		}
	}
}

// err is the refresh's verdict: GC passed the backup ts.
func (h *gcHold) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost
}

// release stops refreshing and removes the safepoint (TTL 0).
func (h *gcHold) release() {
	close(h.stop)
	h.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.pd.UpdateServiceGCSafePoint(ctx, h.id, 0, h.ts); err != nil {
		h.log.Warn("remove the backup's GC safepoint; it expires with its TTL", "id", h.id, "ttl", h.ttl, "error", err)
	}
}
