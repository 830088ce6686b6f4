package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/playground"
	"github.com/pitr-io/pitr/playground/cdc"
	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
	"github.com/pitr-io/pitr/playground/workload"
)

func init() {
	register(Section{Name: "playground", Run: benchPlayground})
}

// benchPlayground measures the playground's write throughput through
// client-go (bank transfers) against the engine's in-process 2PC rate, and
// its CDC incremental-scan throughput into a consumer that discards
// everything against an in-process scan of the same data.
func benchPlayground(ctx context.Context, env *Env) ([]Row, error) {
	quietClientGo()
	var rows []Row

	// Limit: 2PC on the engine itself, no gRPC, no client.
	eng, err := mvcc.Open("", nil)
	if err != nil {
		return nil, err
	}
	engineTPS := engine2PC(eng, 8, 3*time.Second)
	eng.Close()
	rows = append(rows, Row{Name: "engine 2PC, in-process (limit)", Value: engineTPS, Unit: "txn/s"})

	p, err := playground.Start(ctx, playground.Config{Stores: 3, GCInterval: -1, Dir: env.Tmp})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	cli, err := workload.Connect(ctx, []string{p.PDAddr()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	bank := &workload.Bank{Client: cli, Prefix: "bench/", Accounts: 1000, Initial: 1000}
	if err := bank.Init(ctx); err != nil {
		return nil, err
	}
	for _, k := range []int{250, 500, 750} {
		if _, err := p.Cluster.Split(bank.Key(k)); err != nil {
			return nil, err
		}
	}
	var st workload.Stats
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	start := time.Now()
	err = bank.Run(rctx, 8, &st)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("bank: %w", err)
	}
	tps := float64(st.Committed.Load()) / time.Since(start).Seconds()
	env.Logf("bank: %d committed, %d retried", st.Committed.Load(), st.Conflicts.Load())
	rows = append(rows, Row{Name: "client-go bank transfers, 3 stores, 8 clients", Value: tps, Unit: "txn/s",
		Baseline: "engine 2PC", Ratio: tps / engineTPS})

	// CDC: ingest ~256 MB of versions, then time the incremental scan.
	ts, err := p.PD.TS(ctx)
	if err != nil {
		return nil, err
	}
	const total = 256 << 20
	var logical int64
	rng := rand.New(rand.NewSource(1))
	val := make([]byte, 400)
	for n := 0; logical < total; n++ {
		batch := make([]mvcc.IngestEntry, 0, 4096)
		for i := 0; i < 4096; i++ {
			rng.Read(val)
			k := []byte(fmt.Sprintf("cdc/%010d", n*4096+i))
			batch = append(batch, mvcc.IngestEntry{Key: k, StartTS: ts, CommitTS: ts, Value: append([]byte(nil), val...)})
			logical += int64(len(k) + len(val))
		}
		if err := p.Engine.Ingest(batch); err != nil {
			return nil, err
		}
	}
	snap := p.Engine.Snapshot()
	start = time.Now()
	var scanned int64
	err = snap.DeltaScan([]byte("cdc/"), []byte("cdc0"), ts-1, func(e mvcc.DeltaEntry) error {
		for _, w := range e.Writes {
			scanned += int64(len(w.Key) + len(w.Value))
		}
		return nil
	})
	snap.Release()
	if err != nil {
		return nil, err
	}
	scanMBs := float64(scanned) / 1e6 / time.Since(start).Seconds()
	rows = append(rows, Row{Name: "engine delta scan, in-process (limit)", Value: scanMBs, Unit: "MB/s"})

	// Every region goes to its leader's store; one consumer per store.
	byStore := map[uint64][]*cluster.Region{}
	for _, r := range p.Cluster.Regions() {
		byStore[r.Leader] = append(byStore[r.Leader], r)
	}
	addrs := p.StoreAddrs()
	var wg sync.WaitGroup
	var got atomic.Int64
	errs := make(chan error, len(byStore))
	start = time.Now()
	for store, regions := range byStore {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := cdc.DiscardConsumer(ctx, addrs[store], regions, cdc.DiscardOptions{
				ClusterID: p.Cluster.ID(), CheckpointTS: ts - 1, UntilInitialized: true,
			})
			if err != nil {
				errs <- err
				return
			}
			got.Add(st.Bytes)
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("cdc consumer: %w", err)
	}
	el := time.Since(start).Seconds()
	env.Logf("cdc: %d MB on the wire for %d MB of keys+values", got.Load()>>20, logical>>20)
	cdcMBs := float64(logical) / 1e6 / el
	rows = append(rows, Row{Name: "CDC incremental scan → discard, key+value bytes", Value: cdcMBs, Unit: "MB/s",
		Baseline: "delta scan", Ratio: cdcMBs / scanMBs})
	return rows, nil
}

// engine2PC runs prewrite+commit of two-key transactions on the engine from
// several goroutines for d and returns transactions per second.
func engine2PC(eng *mvcc.Engine, workers int, d time.Duration) float64 {
	var ts atomic.Uint64
	ts.Store(1 << 20)
	var done atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				a := []byte(fmt.Sprintf("e/%d/%d/a", w, i%1000))
				b := []byte(fmt.Sprintf("e/%d/%d/b", w, i%1000))
				start := ts.Add(1)
				res, err := eng.Prewrite(mvcc.PrewriteArgs{
					Mutations: []mvcc.Mutation{{Op: mvcc.OpPut, Key: a, Value: []byte("100")}, {Op: mvcc.OpPut, Key: b, Value: []byte("200")}},
					Primary:   a, StartTS: start, LockTTL: 3000,
				})
				if err != nil || len(res.Locked) > 0 {
					continue
				}
				if eng.Commit([][]byte{a, b}, start, ts.Add(1)) == nil {
					done.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	return float64(done.Load()) / d.Seconds()
}

// quietClientGo sends client-go's and the PD client's logs (pingcap/log) to
// stderr at error level only, so the table stays readable.
func quietClientGo() {
	connector.RouteClientLogs(hclog.New(&hclog.LoggerOptions{Name: "client", Level: hclog.Error, Output: os.Stderr}))
}
