package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Raft volumes. A TiKV host with a separate raft-engine disk keeps each
// peer's region state (range, epoch, peer id) and raft log there, apart
// from the KV engine. The playground keeps one engine for every store, so
// what stands for store S's raft volume is the directory
//
//	<dir>/stores/<S>/region-meta.json
//
// rewritten (temp file, fsync, rename, fsync dir; never in place) whenever
// the regions with a peer on S change: a split, a merge, a peer moved. Its
// format (version 1):
//
//	{
//	  "version": 1,
//	  "cluster_id": 7123,
//	  "store_id": 1,
//	  "regions": [
//	    {"region_id": 2, "peer_id": 3,
//	     "start_key": "<base64>", "end_key": "<base64>",
//	     "version": 5, "conf_ver": 1}
//	  ]
//	}
//
// Keys are the region boundaries as the cluster stores them
// (memcomparable-encoded, "" = unbounded), base64 as encoding/json writes
// []byte; regions are in key order. A copy of the directory made by hard
// links while the playground runs is always one whole version of the file.

// RegionMetaName is the file name of a raft volume's region metadata.
const RegionMetaName = "region-meta.json"

// RegionMetaVersion is the format version of region-meta.json.
const RegionMetaVersion = 1

// StoreRaftDir returns store id's raft volume under the playground dir.
func StoreRaftDir(dir string, id uint64) string {
	return filepath.Join(dir, "stores", strconv.FormatUint(id, 10))
}

// RegionMetaFile is the content of region-meta.json.
type RegionMetaFile struct {
	Version   int          `json:"version"`
	ClusterID uint64       `json:"cluster_id"`
	StoreID   uint64       `json:"store_id"`
	Regions   []PeerRegion `json:"regions"`
}

// PeerRegion is one region with a peer on the store, as that peer knows it.
type PeerRegion struct {
	RegionID uint64 `json:"region_id"`
	PeerID   uint64 `json:"peer_id"`
	StartKey []byte `json:"start_key"`
	EndKey   []byte `json:"end_key"`
	Version  uint64 `json:"version"`
	ConfVer  uint64 `json:"conf_ver"`
}

// ReadRegionMeta reads a raft volume's region-meta.json.
func ReadRegionMeta(raftDir string) (*RegionMetaFile, error) {
	b, err := os.ReadFile(filepath.Join(raftDir, RegionMetaName))
	if err != nil {
		return nil, fmt.Errorf("read region meta: %w", err)
	}
	var f RegionMetaFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Join(raftDir, RegionMetaName), err)
	}
	if f.Version != RegionMetaVersion {
		return nil, fmt.Errorf("%s: format version %d, want %d", filepath.Join(raftDir, RegionMetaName), f.Version, RegionMetaVersion)
	}
	return &f, nil
}

// saveRegionMetasLocked rewrites the region-meta.json of every store whose
// regions changed since the last write.
func (c *Cluster) saveRegionMetasLocked() error {
	if c.dir == "" {
		return nil
	}
	if c.metaWritten == nil {
		c.metaWritten = map[uint64][]byte{}
	}
	for _, s := range c.storesLocked() {
		f := RegionMetaFile{Version: RegionMetaVersion, ClusterID: c.id, StoreID: s.ID, Regions: []PeerRegion{}}
		for _, r := range c.regions {
			if p := r.PeerOn(s.ID); p != nil {
				f.Regions = append(f.Regions, PeerRegion{RegionID: r.ID, PeerID: p.Id, StartKey: r.StartKey, EndKey: r.EndKey,
					Version: r.Epoch.Version, ConfVer: r.Epoch.ConfVer})
			}
		}
		b, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			return err
		}
		if bytes.Equal(c.metaWritten[s.ID], b) {
			continue
		}
		d := StoreRaftDir(c.dir, s.ID)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create raft volume: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(d, RegionMetaName), b); err != nil {
			return fmt.Errorf("write region meta of store %d: %w", s.ID, err)
		}
		c.metaWritten[s.ID] = b
	}
	return nil
}

// ErrIDBelowCurrent: SetBaseID was given an id below the next id to alloc.
var ErrIDBelowCurrent = errors.New("id is below the current id")

// SetBaseID makes id the last allocated id, so AllocID continues above it
// (PD's admin base-alloc-id, used by BR after a volume restore so new ids
// never reuse those in the restored data). An id below the current one is
// refused, as PD's RecoverAllocID refuses it.
func (c *Cluster) SetBaseID(id uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id+1 < c.nextID {
		return fmt.Errorf("base id %d, current %d: %w", id, c.nextID-1, ErrIDBelowCurrent)
	}
	c.nextID = id + 1
	return c.saveLocked()
}
