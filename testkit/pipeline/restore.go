package pipeline

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/testkit"
)

// RestoreOptions configures RestoreInto.
type RestoreOptions struct {
	// Target is the fresh target's playground (nil: 3 stores with GC
	// running at a GC life time of 1 s, so its safepoint passes every
	// restored version). Its TLSDir is always the source's: the target
	// serves the same CA, and restore dials it with the source's TLS.
	Target *playground.Config
	// SplitAt are keys the target is split at before the restore.
	SplitAt []string
	// Inspect, when set, looks at the target after the read, before it
	// stops.
	Inspect func(dst *testkit.Cluster)
}

// Restored is what RestoreInto did and read.
type Restored struct {
	// Read is every key of the target after the restore, read at its
	// current ts: the target holds versions ≤ T only, and its GC, back on
	// once the restore ended, may be past T.
	Read   map[string][]byte
	Result *restore.Result
}

// RestoreInto restores T into a fresh target and reads it back; the
// target stops before it returns. i numbers the restore (its progress
// file).
func (p *Pipeline) RestoreInto(i int, T uint64, o RestoreOptions) Restored {
	p.TB.Helper()
	cfg := playground.Config{Stores: 3, GCInterval: time.Second, GCLifeTime: time.Second}
	if o.Target != nil {
		cfg = *o.Target
	}
	cfg.TLSDir = p.TLSDir
	if cfg.Logger == nil {
		cfg.Logger = p.Log
	}
	src := p.Backup()
	var restored Restored
	// Its own cleanups, run here rather than at the TB's end: a test makes
	// dozens of targets.
	err := testkit.Run(testkit.RunOptions{Dir: p.TB.TempDir()}, func(tb testkit.TB) error {
		dst := testkit.StartCluster(tb, p.Ctx, testkit.Options{Playground: cfg, Component: "pitr-restore-target"})
		for _, k := range o.SplitAt {
			if _, err := dst.P.Cluster.Split([]byte(k)); err != nil {
				return fmt.Errorf("split the target at %q: %w", k, err)
			}
		}
		res, err := restore.Run(p.Ctx, restore.Options{Source: src, PDAddrs: []string{dst.P.PDAddr()}, TLS: p.TLS,
			RestoreTS: T, ProgressFile: filepath.Join(p.dir, fmt.Sprintf("progress-%d", i)), Logger: p.Log})
		if err != nil {
			return fmt.Errorf("restore to T=%d: %w", T, err)
		}
		out := Restored{Result: res, Read: dst.ReadAll(dst.TS())}
		if o.Inspect != nil {
			o.Inspect(dst)
		}
		restored = out
		return nil
	})
	if err != nil {
		p.TB.Fatalf("%v", err)
	}
	return restored
}
