package playground

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/pitr-io/pitr/playground/cluster"
)

// Volume layout (only with Config.Dir). Each store S has the two volumes a
// TiKV host with a separate raft-engine disk has:
//
//	<Dir>/data/          KV volume (storage.data-dir): the mvcc engine
//	<Dir>/stores/<S>/    raft volume (raft-engine.dir): region-meta.json,
//	                     every region with a peer on S (cluster.RegionMetaName)
//	<Dir>/volumes.json   the volume file (below), written at start
//
// The playground keeps ONE engine for all stores, so every store's KV
// volume is the same directory; each store's snapshot of it, taken at its
// own moment, stands for that store's KV engine (its AppliedIndex for the
// peers' raft last_index).
//
// The rule a live copy relies on: under both directories files are only
// ever appended to or replaced whole by rename, and a WAL segment is
// deleted only after the checkpoint that no longer needs it is durable. A
// copy that lists a directory, then hard-links every listed file and
// records its size, opens as a crash state, provided it links the files in
// reverse name order (the engine's checkpoint after its log segments; see
// playground/mvcc/doc.go) and skips a listed file that has vanished.
//
// volumes.json has the shape of BR's volume file (pingcap/tidb
// br/pkg/config/ebs.go VolSnapBackupMeta, the file TiDB Operator gives BR):
//
//	{"tikv": {"replicas": 3, "stores": [{"store_id": 1, "volumes": [
//	  {"volume_id": "<abs Dir>/data", "type": "storage.data-dir",
//	   "mount_path": "/var/lib/tikv/data"},
//	  {"volume_id": "<abs Dir>/stores/1", "type": "raft-engine.dir",
//	   "mount_path": "/var/lib/tikv/raft"}]}]}}
//
// BR's restore writes the same file back with restore_volume_id set on
// every volume (the volume made from its snapshot); StartStoresFromVolumes
// takes that file.

// VolumesFileName is the volume file in Config.Dir.
const VolumesFileName = "volumes.json"

// Volume types, as TiKV's config names the directories.
const (
	VolumeTypeKV   = "storage.data-dir"
	VolumeTypeRaft = "raft-engine.dir"
)

// VolumesFile is BR's volume file (VolSnapBackupMeta; only the fields the
// playground uses or writes).
type VolumesFile struct {
	TiKV VolumesTiKV `json:"tikv"`
}

// VolumesTiKV is the TiKV part of the volume file.
type VolumesTiKV struct {
	Replicas int            `json:"replicas"`
	Stores   []VolumesStore `json:"stores"`
}

// VolumesStore is one store's volumes.
type VolumesStore struct {
	StoreID uint64         `json:"store_id"`
	Volumes []VolumeRecord `json:"volumes"`
}

// VolumeRecord is one volume (BR's EBSVolume).
type VolumeRecord struct {
	ID        string `json:"volume_id"`
	Type      string `json:"type"`
	MountPath string `json:"mount_path"`
	// RestoreID is the volume made from this one's snapshot, set by
	// BR's restore.
	RestoreID  string `json:"restore_volume_id,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
	Zone       string `json:"volume_az,omitempty"`
}

// volume returns the store's volume of a type, or nil.
func (s *VolumesStore) volume(typ string) *VolumeRecord {
	for i := range s.Volumes {
		if s.Volumes[i].Type == typ {
			return &s.Volumes[i]
		}
	}
	return nil
}

// Volumes returns the playground's volume file (empty without Dir).
func (p *Playground) Volumes() (VolumesFile, error) {
	if p.cfg.Dir == "" {
		return VolumesFile{}, fmt.Errorf("volumes: the playground has no Dir")
	}
	dir, err := filepath.Abs(p.cfg.Dir)
	if err != nil {
		return VolumesFile{}, err
	}
	f := VolumesFile{TiKV: VolumesTiKV{Replicas: p.cfg.Replicas}}
	ids := p.StoreIDs()
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		f.TiKV.Stores = append(f.TiKV.Stores, VolumesStore{StoreID: id, Volumes: []VolumeRecord{
			{ID: filepath.Join(dir, "data"), Type: VolumeTypeKV, MountPath: "/var/lib/tikv/data"},
			{ID: cluster.StoreRaftDir(dir, id), Type: VolumeTypeRaft, MountPath: "/var/lib/tikv/raft"},
		}})
	}
	return f, nil
}

// writeVolumesFile writes <Dir>/volumes.json (temp file + rename).
func (p *Playground) writeVolumesFile() error {
	f, err := p.Volumes()
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(p.cfg.Dir, VolumesFileName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write volumes file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write volumes file: %w", err)
	}
	return nil
}

// ReadVolumesFile reads a volume file.
func ReadVolumesFile(path string) (VolumesFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return VolumesFile{}, fmt.Errorf("read volumes file: %w", err)
	}
	var f VolumesFile
	if err := json.Unmarshal(b, &f); err != nil {
		return VolumesFile{}, fmt.Errorf("decode volumes file %s: %w", path, err)
	}
	return f, nil
}
