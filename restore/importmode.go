package restore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/import_sstpb"
)

// DefaultImportModeInterval is how often restore renews import mode on the
// target's stores: well inside TiKV's import.import-mode-timeout (10 min),
// after which a store returns to normal mode by itself.
const DefaultImportModeInterval = time.Minute

// importMode holds every TiKV store of the target in import mode while a
// restore writes, as BR does (pingcap/tidb br/pkg/restore/
// import_mode_switcher.go): in normal mode TiKV answers an ingest under
// write pressure with ServerIsBusy (src/import/ingest.rs check_write_stall);
// in import mode it tunes RocksDB for bulk load and skips that check. TiKV
// leaves import mode import.import-mode-timeout after the last switch, so a
// keepalive switches again every interval. Close stops it and switches
// every store back to normal, also when the restore failed.
type importMode struct {
	t        *target
	log      hclog.Logger
	interval time.Duration

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// startImportMode switches every TiKV store of the target to import mode
// and keeps it there until Close. A store that cannot be switched is
// logged, not fatal: restore still works in normal mode, more slowly (its
// ingests wait out ServerIsBusy), and the keepalive tries again.
func startImportMode(ctx context.Context, t *target, interval time.Duration, log hclog.Logger) *importMode {
	if interval <= 0 {
		interval = DefaultImportModeInterval
	}
	m := &importMode{t: t, log: log.Named("import-mode"), interval: interval, stop: make(chan struct{})}
	if err := m.switchAll(ctx, import_sstpb.SwitchMode_Import); err != nil {
		m.log.Warn("switch the target to import mode", "error", err)
	}
	m.wg.Add(1)
	go m.keepalive(ctx)
	return m
}

func (m *importMode) keepalive(ctx context.Context) {
	defer m.wg.Done()
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.stop:
			return
		case <-tick.C:
		}
		if err := m.switchAll(ctx, import_sstpb.SwitchMode_Import); err != nil && ctx.Err() == nil {
			m.log.Warn("renew import mode", "error", err)
		}
	}
}

// Close stops the keepalive and switches every store back to normal mode,
// with a context of its own (the restore's may be cancelled already).
func (m *importMode) Close() error {
	var err error
	m.once.Do(func() {
		close(m.stop)
		m.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err = m.switchAll(ctx, import_sstpb.SwitchMode_Normal); err != nil {
			m.log.Warn("switch the target back to normal mode; each store returns to it by itself after import.import-mode-timeout", "error", err)
		}
	})
	return err
}

// switchAll switches every TiKV store (TiFlash skipped, as BR does) to mode.
func (m *importMode) switchAll(ctx context.Context, mode import_sstpb.SwitchMode) error {
	stores, err := tikvStores(ctx, m.t.pd)
	if err != nil {
		return err
	}
	var errs []error
	for _, st := range stores {
		cc, err := m.t.conn(ctx, st.GetId())
		if err == nil {
			_, err = import_sstpb.NewImportSSTClient(cc).SwitchMode(ctx, &import_sstpb.SwitchModeRequest{Mode: mode})
			m.t.maybeDropConn(st.GetId(), err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("store %d: %w", st.GetId(), err))
		}
	}
	return errors.Join(errs...)
}
