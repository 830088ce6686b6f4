package playground

import (
	"fmt"
	"io"
	"sort"
)

// DumpTrackedLocks writes, for diagnosis, every lock the stores' CDC
// resolved-ts trackers hold with start_ts ≤ below (0: all), and next to
// each what the engine holds for the key: its lock and its newest write
// records. A tracked lock the engine does not hold pins the region's
// resolved ts.
func (p *Playground) DumpTrackedLocks(w io.Writer, below uint64) {
	p.mu.Lock()
	ids := make([]uint64, 0, len(p.stores))
	for id, n := range p.stores {
		if n.cdc != nil {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	nodes := make(map[uint64]*storeNode, len(ids))
	for _, id := range ids {
		nodes[id] = p.stores[id]
	}
	p.mu.Unlock()
	for _, id := range ids {
		for _, l := range nodes[id].cdc.TrackedLocks() {
			if below != 0 && l.StartTS > below {
				continue
			}
			fmt.Fprintf(w, "store %d region %d request %d: tracks lock %q start_ts %d (resolved ts %d)\n",
				id, l.RegionID, l.RequestID, l.Key, l.StartTS, l.AdvancedTo)
			hist, err := p.Engine.KeyHistory(l.Key)
			if err != nil {
				fmt.Fprintf(w, "  engine: %v\n", err)
				continue
			}
			for i, r := range hist {
				if i == 8 {
					fmt.Fprintf(w, "  … %d more\n", len(hist)-i)
					break
				}
				if r.Lock != nil {
					fmt.Fprintf(w, "  lock: %+v\n", *r.Lock)
				} else {
					fmt.Fprintf(w, "  write @%d: %+v\n", r.CommitTS, *r.Write)
				}
			}
		}
	}
}
