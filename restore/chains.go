package restore

// metaChain is the unit truncate and compact remove or replace whole: a
// chain of metas (logfile.Chain: a keyframe and the metas continuing it,
// in path order), or a compacted meta alone.
type metaChain struct {
	metas []MetaFile
	// newest: the chain is its store's newest, which its agent may still
	// continue (an agent whose store lost every region writes no meta
	// until it gets one back, and then continues its chain).
	newest bool
}

// compacted reports whether c is a compacted meta.
func (c *metaChain) compacted() bool { return c.metas[0].IsCompacted() }

// flushedBy reports whether every meta of c was flushed at or before ts.
func (c *metaChain) flushedBy(ts uint64) bool { return c.lastFlush() <= ts }

// lastFlush is the flush ts of c's last meta.
func (c *metaChain) lastFlush() uint64 { return c.metas[len(c.metas)-1].Meta.GetFlushTs() }

// changesAfter reports whether a file of c holds a change after ts.
func (c *metaChain) changesAfter(ts uint64) bool {
	for _, m := range c.metas {
		for _, f := range m.Meta.GetFiles() {
			if f.GetRows() > 0 && f.GetMaxCommitTs() > ts {
				return true
			}
		}
	}
	return false
}

// chainsOf groups b.Metas (path order) into chains, in the order of their
// first meta.
func chainsOf(b *Backup) []*metaChain {
	var chains []*metaChain
	of := map[string]*metaChain{}     // meta path → its chain
	newest := map[uint64]*metaChain{} // store → its newest chain
	for _, m := range b.Metas {
		if m.IsCompacted() {
			chains = append(chains, &metaChain{metas: []MetaFile{m}})
			continue
		}
		var c *metaChain
		if prev := m.Meta.GetPrevMeta(); prev != "" {
			c = of[prev]
		}
		if c == nil {
			c = &metaChain{}
			chains = append(chains, c)
		}
		c.metas = append(c.metas, m)
		of[m.Path] = c
		newest[m.Meta.GetStoreId()] = c // metas come in flush ts order
	}
	for _, c := range newest {
		c.newest = true
	}
	return chains
}
