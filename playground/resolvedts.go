package playground

import (
	"context"
	"time"

	"github.com/pitr-io/pitr/playground/cluster"
)

// minResolvedTSLoop has every running store report its min resolved ts to
// PD every MinResolvedTSInterval, as TiKV's resolved-ts endpoint does
// (pdpb ReportMinResolvedTS, pd.report-min-resolved-ts-interval): the
// minimum resolved ts of the regions the store leads, computed the way its
// CDC service computes a region's resolved ts (cdc.Service.MinResolvedTS).
// A store in recovery mode leads nothing and reports nothing. The regions
// are read once per round, so each region counts for exactly one store.
func (p *Playground) minResolvedTSLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.MinResolvedTSInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.ReportMinResolvedTS(ctx)
	}
}

// ReportMinResolvedTS runs one round of the stores' min-resolved-ts
// reports (the loop's body; tests call it to skip the wait).
func (p *Playground) ReportMinResolvedTS(ctx context.Context) {
	if p.Recovering() {
		return
	}
	regions := p.Cluster.Regions()
	p.mu.Lock()
	nodes := make([]*storeNode, 0, len(p.stores))
	for _, n := range p.stores {
		nodes = append(nodes, n)
	}
	p.mu.Unlock()
	for _, n := range nodes {
		ranges := ledRanges(regions, n.id)
		ts, err := n.cdc.MinResolvedTS(ctx, ranges)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("min resolved ts", "store", n.id, "error", err)
			}
			continue
		}
		p.pd().ReportMinResolvedTS(n.id, ts)
	}
}

func ledRanges(regions []*cluster.Region, storeID uint64) [][2][]byte {
	var out [][2][]byte
	for _, r := range regions {
		// A region without a leader counts for every store: a lock in
		// it can still commit once a leader is elected.
		if r.Leader == storeID || r.Leader == 0 {
			s, e := r.RawRange()
			out = append(out, [2][]byte{s, e})
		}
	}
	return out
}
