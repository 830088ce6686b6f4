package logfile

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// Coverage as chains (format 3; pitr.proto Meta). A flusher's metas form a
// chain: a keyframe lists every region it covers, each later meta only what
// changed since the one before it. An idle store then writes a few bytes of
// coverage per flush instead of its region list (audit core F2: 693 KiB per
// meta at 10k regions), and a reader keeps one entry per region and chain
// rather than one per region and flush.
//
// The writer's side is Chain (used by package flush), the reader's is
// CoverageReader (used by restore and verify). Both apply a meta the same
// way (applyDelta's rules):
//
//  1. the chain's regions are the previous meta's, less those in dropped;
//  2. an entry of regions whose region is in the chain with the same epoch
//     and keys, and whose from_ts is the chain entry's to_ts, extends it;
//     any other entry replaces the chain's entry of its region or adds one;
//  3. each region of an extends group is covered up to the group's to_ts;
//  4. every other chain region is covered up to extend_to_ts, when that is
//     above what it has.

// Cover is a coverage rectangle: the changes committed in (From, To] inside
// [Start, End) of one region are in storage.
type Cover struct {
	RegionID         uint64
	Version, ConfVer uint64
	Start, End       []byte
	From, To         uint64
}

func (c *Cover) sameRegion(r *pitrpb.RegionCoverage) bool {
	return c.RegionID == r.GetRegionId() && c.Version == r.GetEpochVersion() && c.ConfVer == r.GetEpochConfVer() &&
		bytes.Equal(c.Start, r.GetStartKey()) && bytes.Equal(c.End, r.GetEndKey())
}

func coverOf(r *pitrpb.RegionCoverage) *Cover {
	return &Cover{RegionID: r.GetRegionId(), Version: r.GetEpochVersion(), ConfVer: r.GetEpochConfVer(),
		Start: r.GetStartKey(), End: r.GetEndKey(), From: r.GetFromTs(), To: r.GetToTs()}
}

// IsDelta reports whether m continues an earlier meta of its chain.
func IsDelta(m *pitrpb.Meta) bool { return m.GetPrevMeta() != "" }

// hasChainFields reports whether m uses any field of format 3.
func hasChainFields(m *pitrpb.Meta) bool {
	return m.GetPrevMeta() != "" || m.GetExtendToTs() != 0 || len(m.GetExtends()) > 0 || len(m.GetDropped()) > 0
}

// validateChainFields checks what can be checked of a meta's chain fields
// without its chain.
func validateChainFields(m *pitrpb.Meta) error {
	if m.GetPrevMeta() == "" {
		if m.GetExtendToTs() != 0 || len(m.GetExtends()) > 0 || len(m.GetDropped()) > 0 {
			return fmt.Errorf("a keyframe (no prev_meta) with extends or dropped regions")
		}
		return nil
	}
	seen := map[uint64]bool{}
	once := func(id uint64) error {
		if seen[id] {
			return fmt.Errorf("region %d named twice", id)
		}
		seen[id] = true
		return nil
	}
	for _, r := range m.GetRegions() {
		if err := once(r.GetRegionId()); err != nil {
			return err
		}
	}
	for _, g := range m.GetExtends() {
		for _, id := range g.GetRegionIds() {
			if err := once(id); err != nil {
				return err
			}
		}
	}
	for _, id := range m.GetDropped() {
		if err := once(id); err != nil {
			return err
		}
	}
	return nil
}

// chainState is one chain's regions by id.
type chainState map[uint64]*Cover

// applyDelta applies m's coverage to the chain st (rules 1-4 above). Entries
// that leave the chain or are replaced go to emit. It fails when m names a
// chain region that is not in st or moves a region's coverage backwards.
func applyDelta(st chainState, m *pitrpb.Meta, emit func(*Cover)) error {
	for _, id := range m.GetDropped() {
		c, ok := st[id]
		if !ok {
			return fmt.Errorf("drops region %d, which its chain does not hold", id)
		}
		emit(c)
		delete(st, id)
	}
	touched := make(map[uint64]bool, len(m.GetRegions()))
	for _, r := range m.GetRegions() {
		touched[r.GetRegionId()] = true
		if c, ok := st[r.GetRegionId()]; ok {
			if c.sameRegion(r) && c.To == r.GetFromTs() {
				c.To = max(c.To, r.GetToTs())
				continue
			}
			emit(c)
		}
		st[r.GetRegionId()] = coverOf(r)
	}
	for _, g := range m.GetExtends() {
		for _, id := range g.GetRegionIds() {
			c, ok := st[id]
			if !ok {
				return fmt.Errorf("extends region %d, which its chain does not hold", id)
			}
			if g.GetToTs() < c.To {
				return fmt.Errorf("extends region %d to %d, below its coverage to %d", id, g.GetToTs(), c.To)
			}
			c.To = g.GetToTs()
			touched[id] = true
		}
	}
	if x := m.GetExtendToTs(); x != 0 {
		for id, c := range st {
			if !touched[id] && x > c.To {
				c.To = x
			}
		}
	}
	return nil
}

// CoverageReader builds the coverage of a task's metas, fed in path order
// (flush ts order): chains are followed, and each region's contiguous
// coverage stays one Cover, so memory grows with regions × topology changes
// and keyframes, not with flushes.
type CoverageReader struct {
	chains map[string]*readChain // by the path of the chain's last meta
	// open, for metas before format 3 (every one a full list): the Cover
	// in out each (store, region) may extend.
	open map[[2]uint64]int
	out  []*Cover
	// merged is len(out) after the last merge.
	merged int
}

type readChain struct {
	st    chainState
	store uint64
}

// NewCoverageReader returns an empty reader.
func NewCoverageReader() *CoverageReader {
	return &CoverageReader{chains: map[string]*readChain{}, open: map[[2]uint64]int{}}
}

// Add applies the meta stored at path. Metas must come in path order. A
// meta that continues a meta the reader has not seen (missing from storage,
// or already continued by another) is an error naming both: the missing
// meta's files may hold changes of any region, which no later coverage
// would show missing. A meta inconsistent with its chain is ErrCorrupt.
func (r *CoverageReader) Add(path string, m *pitrpb.Meta) error {
	emit := func(c *Cover) { r.out = append(r.out, c) }
	if m.GetFormatVersion() < MetaFormatVersion {
		// A full list that nothing continues: extend the Covers of the
		// store's previous meta where they are contiguous.
		for _, rc := range m.GetRegions() {
			k := [2]uint64{m.GetStoreId(), rc.GetRegionId()}
			if i, ok := r.open[k]; ok && i < len(r.out) && r.out[i].sameRegion(rc) && r.out[i].To == rc.GetFromTs() {
				r.out[i].To = max(r.out[i].To, rc.GetToTs())
				continue
			}
			r.open[k] = len(r.out)
			emit(coverOf(rc))
		}
	} else {
		ch := &readChain{st: chainState{}, store: m.GetStoreId()}
		if prev := m.GetPrevMeta(); prev != "" {
			if old, ok := r.chains[prev]; ok {
				if old.store != m.GetStoreId() {
					return fmt.Errorf("%w: meta %s of store %d continues meta %s of store %d", ErrCorrupt, path, m.GetStoreId(), prev, old.store)
				}
				ch = old
				delete(r.chains, prev)
			} else {
				return fmt.Errorf("meta %s continues meta %s, which is not in storage (or another meta continued it)", path, prev)
			}
		}
		if err := applyDelta(ch.st, m, emit); err != nil {
			return fmt.Errorf("%w: meta %s: %v", ErrCorrupt, path, err)
		}
		r.chains[path] = ch
	}
	if len(r.out) > 4096 && len(r.out) > 2*r.merged {
		r.mergeOut()
	}
	return nil
}

// Seed makes h a chain head the reader has seen: a later meta whose
// prev_meta is h's meta continues it. h is what a compacted meta recorded
// of a chain it superseded (pitrpb.ChainHead); its coverage is the
// compacted meta's, so each region here starts empty at its to_ts. A head
// already there (from a meta, or an earlier seed) is kept.
func (r *CoverageReader) Seed(h *pitrpb.ChainHead) {
	if _, ok := r.chains[h.GetMetaPath()]; ok {
		return
	}
	st := make(chainState, len(h.GetRegions()))
	for _, rc := range h.GetRegions() {
		c := coverOf(rc)
		c.From = c.To
		st[rc.GetRegionId()] = c
	}
	r.chains[h.GetMetaPath()] = &readChain{st: st, store: h.GetStoreId()}
}

// Head returns the state of the chain whose last meta added is path, as a
// ChainHead (nil when no chain ends there): what a compacted meta that
// supersedes the chain keeps for a meta that may still continue it.
func (r *CoverageReader) Head(path string) *pitrpb.ChainHead {
	ch, ok := r.chains[path]
	if !ok {
		return nil
	}
	h := &pitrpb.ChainHead{MetaPath: path, StoreId: ch.store}
	for id, c := range ch.st {
		h.Regions = append(h.Regions, &pitrpb.RegionCoverage{RegionId: id, EpochVersion: c.Version, EpochConfVer: c.ConfVer,
			StartKey: c.Start, EndKey: c.End, FromTs: c.From, ToTs: c.To})
	}
	slices.SortFunc(h.Regions, func(a, b *pitrpb.RegionCoverage) int { return cmp.Compare(a.GetRegionId(), b.GetRegionId()) })
	return h
}

// AddCovers adds coverage that belongs to no chain (a compacted meta's).
func (r *CoverageReader) AddCovers(rcs []*pitrpb.RegionCoverage) {
	for _, rc := range rcs {
		r.out = append(r.out, coverOf(rc))
	}
	if len(r.out) > 4096 && len(r.out) > 2*r.merged {
		r.mergeOut()
	}
}

// mergeOut unites the Covers of equal keys whose intervals touch or overlap
// (the union of true claims is one). Open indexes are kept valid by
// dropping them: a later full list then starts a new Cover, which the
// next merge unites again.
func (r *CoverageReader) mergeOut() {
	slices.SortFunc(r.out, func(a, b *Cover) int {
		return cmp.Or(bytes.Compare(a.Start, b.Start), bytes.Compare(a.End, b.End), cmp.Compare(a.From, b.From))
	})
	w := 0
	for _, c := range r.out {
		if w > 0 {
			p := r.out[w-1]
			if bytes.Equal(p.Start, c.Start) && bytes.Equal(p.End, c.End) && c.From <= p.To {
				p.To = max(p.To, c.To)
				continue
			}
		}
		r.out[w] = c
		w++
	}
	clear(r.out[w:])
	r.out = r.out[:w]
	r.merged = w
	clear(r.open)
}

// Covers returns the coverage of every meta added, merged: the Covers of
// equal keys do not touch in time. The reader must not be used afterwards.
func (r *CoverageReader) Covers() []Cover {
	for _, ch := range r.chains {
		for _, c := range ch.st {
			r.out = append(r.out, c)
		}
	}
	r.chains = nil
	r.mergeOut()
	out := make([]Cover, 0, len(r.out))
	for _, c := range r.out {
		if c.To > c.From { // a seeded head nothing continued covers nothing
			out = append(out, *c)
		}
	}
	return out
}

// Chain is a flusher's side of a chain: the coverage of the last meta it
// stored. Next fills a meta's coverage; once the meta is stored, Commit
// makes it the chain's head, and after a failed store Reset starts a new
// chain with the next meta (a keyframe): a meta whose store failed may
// still have landed, and nothing may continue it.
type Chain struct {
	head   string
	length int
	st     chainState
	seen   map[uint64]bool // Next's, kept to spare an allocation a flush
	tos    []uint64
}

// ChainStep is a meta's coverage that Commit applies to the chain.
type ChainStep struct {
	meta *pitrpb.Meta
}

// Next fills the coverage (Regions, PrevMeta, ExtendToTs, Extends,
// Dropped) of m, to be stored at path, with what regions claim, as a continuation of the chain, or as
// a keyframe when the chain is empty or keyframeEvery metas long (0: no
// limit). regions are the flush's claims, each region at most once; Next
// may lower a region's ToTs to what the meta claims for it, which is
// always above its FromTs, and the caller advances its regions from the
// ToTs it finds afterwards.
//
// The regions continuing the chain are claimed up to one extend_to_ts X,
// the tenth percentile of their to_ts, when X is within their interval;
// the others (lower, or from above X) go in extends groups of equal to_ts.
// Regions advance together on a store (TiKV resolves a store's regions in
// one batch), so an idle store's meta is a few bytes. The ones above X lose
// a little of their claim until the next flush; the global checkpoint is a
// minimum over regions, which X never lowers below the lowest one.
func (c *Chain) Next(m *pitrpb.Meta, path string, regions []*pitrpb.RegionCoverage, keyframeEvery int) *ChainStep {
	m.FormatVersion = MetaFormatVersion
	m.PrevMeta, m.ExtendToTs, m.Extends, m.Dropped = "", 0, nil, nil
	keyframe := func() *ChainStep {
		m.Regions = regions
		return &ChainStep{meta: m}
	}
	// A meta stored at or before the head's path (a flush ts that did not
	// advance) would replace it or be read before it.
	if c.head == "" || path <= c.head || (keyframeEvery > 0 && c.length >= keyframeEvery) {
		return keyframe()
	}
	if c.seen == nil {
		c.seen = map[uint64]bool{}
	}
	seen := c.seen
	clear(seen)
	var full, cont []*pitrpb.RegionCoverage
	for _, r := range regions {
		if seen[r.GetRegionId()] {
			return keyframe()
		}
		seen[r.GetRegionId()] = true
		if e, ok := c.st[r.GetRegionId()]; ok && e.sameRegion(r) && e.To == r.GetFromTs() && r.GetToTs() > r.GetFromTs() {
			cont = append(cont, r)
		} else {
			full = append(full, r)
		}
	}
	for id := range c.st {
		if !seen[id] {
			m.Dropped = append(m.Dropped, id)
		}
	}
	slices.Sort(m.Dropped)
	var x uint64
	if len(cont) > 0 {
		tos := c.tos[:0]
		for _, r := range cont {
			tos = append(tos, r.GetToTs())
		}
		slices.Sort(tos)
		x = tos[len(tos)/10]
		c.tos = tos
	}
	groups := map[uint64][]uint64{}
	for _, r := range cont {
		if r.GetFromTs() < x && x <= r.GetToTs() {
			r.ToTs = x
			m.ExtendToTs = x
			continue
		}
		groups[r.GetToTs()] = append(groups[r.GetToTs()], r.GetRegionId())
	}
	for _, to := range slices.Sorted(maps.Keys(groups)) {
		ids := groups[to]
		slices.Sort(ids)
		m.Extends = append(m.Extends, &pitrpb.CoverageExtend{ToTs: to, RegionIds: ids})
	}
	m.Regions = full
	m.PrevMeta = c.head
	return &ChainStep{meta: m}
}

// Commit makes the meta of step, stored at path, the chain's head.
func (c *Chain) Commit(path string, step *ChainStep) {
	m := step.meta
	if !IsDelta(m) {
		c.st, c.length = chainState{}, 0
	}
	// The writer built m from c.st, so it applies.
	if err := applyDelta(c.st, m, func(*Cover) {}); err != nil {
		c.Reset()
		return
	}
	c.head = path
	c.length++
}

// Reset forgets the chain: the next meta is a keyframe.
func (c *Chain) Reset() { c.head, c.length, c.st = "", 0, nil }
