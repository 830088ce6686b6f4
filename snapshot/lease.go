package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/storage"
)

// LeaseName is the object a running backup renews under its root, so
// that two processes never work on one backup: a backup whose lease was
// renewed less than its TTL ago belongs to its holder (ErrConflict); one
// whose holder was killed can be resumed once the lease has expired.
const LeaseName = "lease"

// DefaultLeaseTTL is how long a lease lives without renewal (renewed
// every third of it).
const DefaultLeaseTTL = 30 * time.Second

// leaseRecord is the lease's content. It is scratch state, not part of the
// backup (readers never look at it), so it is plain JSON.
type leaseRecord struct {
	Holder    string `json:"holder"`
	RenewedMs int64  `json:"renewed_unix_ms"`
	TTLMs     int64  `json:"ttl_ms"`
}

// Lease keeps two processes off one piece of work in storage (a backup, a
// compaction): renewed every third of its TTL until Release.
type Lease struct {
	st     storage.Storage
	key    string
	what   string
	holder string
	ttl    time.Duration
	log    hclog.Logger

	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	lost error
}

// takeLease claims root's lease for a backup.
func takeLease(ctx context.Context, st storage.Storage, root string, ttl time.Duration, log hclog.Logger) (*Lease, error) {
	return TakeLease(ctx, st, root+LeaseName, "the backup at "+root, ttl, log)
}

// TakeLease claims the lease at key for the work named what (ErrConflict
// while another live process holds it) and renews it until released.
func TakeLease(ctx context.Context, st storage.Storage, key, what string, ttl time.Duration, log hclog.Logger) (*Lease, error) {
	var id [8]byte
	_, _ = rand.Read(id[:])
	host, _ := os.Hostname()
	l := &Lease{st: st, key: key, what: what, holder: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(id[:])),
		ttl: ttl, log: log, stop: make(chan struct{})}
	if err := l.renew(ctx, true); err != nil {
		return nil, err
	}
	l.wg.Add(1)
	go l.keep()
	return l, nil
}

// renew writes the lease if it is free, expired or ours (first: ours
// only after the first write).
func (l *Lease) renew(ctx context.Context, first bool) error {
	b, ver, err := l.st.GetVersion(ctx, l.key)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		ver = storage.NoVersion
	case err != nil:
		return fmt.Errorf("read %s: %w", l.key, err)
	default:
		var cur leaseRecord
		if jerr := json.Unmarshal(b, &cur); jerr == nil && cur.Holder != l.holder {
			age := time.Since(time.UnixMilli(cur.RenewedMs))
			if age < time.Duration(cur.TTLMs)*time.Millisecond || !first {
				return fmt.Errorf("%w: %s is being worked on by %s (lease %s renewed %s ago); wait for it, or rerun once it has stopped for %s",
					ErrConflict, l.what, cur.Holder, l.key, age.Round(time.Second), time.Duration(cur.TTLMs)*time.Millisecond)
			}
		}
	}
	nb, _ := json.Marshal(leaseRecord{Holder: l.holder, RenewedMs: time.Now().UnixMilli(), TTLMs: l.ttl.Milliseconds()})
	if err := l.st.PutIfMatch(ctx, l.key, nb, ver); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return fmt.Errorf("%w: another process took the lease %s at the same time", ErrConflict, l.key)
		}
		return fmt.Errorf("write %s: %w", l.key, err)
	}
	return nil
}

func (l *Lease) keep() {
	defer l.wg.Done()
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
			err := l.renew(ctx, false)
			cancel()
			if errors.Is(err, ErrConflict) {
				l.mu.Lock()
				l.lost = err
				l.mu.Unlock()
				return
			}
			if err != nil {
				l.log.Warn("renew the lease", "key", l.key, "error", err)
			}
		}
	}
}

// Err says whether the lease was lost to another process.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Release stops renewing and deletes the lease (if still ours).
func (l *Lease) Release() {
	close(l.stop)
	l.wg.Wait()
	if l.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.st.Delete(ctx, l.key); err != nil && !errors.Is(err, storage.ErrNotFound) {
		l.log.Warn("delete the lease; it expires by itself", "key", l.key, "error", err)
	}
}
