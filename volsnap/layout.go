package volsnap

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/volume"
)

// ErrNoBackup: no volume backup where one was looked for.
var ErrNoBackup = errors.New("no volume backup")

// Info is one volume backup as storage holds it.
type Info struct {
	// Root is "volume/<ts>/" under a task root, or "" for a root of its
	// own.
	Root string
	Lock *pitrpb.VolumeBackupLock
	// Meta is nil while the backup is unfinished (or after it failed).
	Meta *pitrpb.VolumeBackupMeta
}

// ResolvedTS is the backup's resolved ts.
func (i Info) ResolvedTS() uint64 {
	if i.Meta != nil {
		return i.Meta.GetResolvedTs()
	}
	return i.Lock.GetResolvedTs()
}

// Finished reports whether the backupmeta was written.
func (i Info) Finished() bool { return i.Meta != nil }

// Load reads the volume backup at root; ErrNoBackup when neither its lock
// nor its meta exists. A damaged object is logfile.ErrCorrupt.
func Load(ctx context.Context, st storage.Storage, root string) (Info, error) {
	info := Info{Root: root}
	b, err := st.Get(ctx, root+LockName)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return info, fmt.Errorf("read %s: %w", root+LockName, err)
	default:
		if info.Lock, err = logfile.DecodeVolumeBackupLock(b); err != nil {
			return info, fmt.Errorf("%s: %w", root+LockName, err)
		}
	}
	b, err = st.Get(ctx, root+MetaName)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return info, fmt.Errorf("read %s: %w", root+MetaName, err)
	default:
		if info.Meta, err = logfile.DecodeVolumeBackupMeta(b); err != nil {
			return info, fmt.Errorf("%s: %w", root+MetaName, err)
		}
		if err := checkMeta(info.Meta); err != nil {
			return info, fmt.Errorf("%w: %s: %v", logfile.ErrCorrupt, root+MetaName, err)
		}
	}
	if info.Lock == nil && info.Meta == nil {
		return info, fmt.Errorf("%w at %s/%s", ErrNoBackup, strings.TrimSuffix(st.URL(), "/"), root)
	}
	return info, nil
}

// checkMeta checks what a restore relies on (BR's checkEBSBRMeta does
// the same): a resolved ts, stores, and a snapshot per volume.
func checkMeta(m *pitrpb.VolumeBackupMeta) error {
	if m.GetResolvedTs() == 0 {
		return errors.New("no resolved ts")
	}
	if len(m.GetStores()) == 0 {
		return errors.New("no stores")
	}
	for _, s := range m.GetStores() {
		if len(s.GetVolumes()) == 0 {
			return fmt.Errorf("store %d has no volumes", s.GetStoreId())
		}
		for _, v := range s.GetVolumes() {
			if v.GetSnapshotId() == "" || v.GetVolumeId() == "" {
				return fmt.Errorf("store %d: a volume without its id or snapshot id", s.GetStoreId())
			}
		}
	}
	return nil
}

// List returns the volume backups under a task root (volume/<ts>/), by
// resolved ts, and the one at the top of a root of its own.
func List(ctx context.Context, st storage.Storage) ([]Info, error) {
	var roots []string
	err := st.List(ctx, logfile.VolumePrefix, func(o storage.ObjectInfo) error {
		dir, name, ok := strings.Cut(strings.TrimPrefix(o.Key, logfile.VolumePrefix), "/")
		if !ok || (name != LockName && name != MetaName) || len(dir) != 16 {
			return nil
		}
		if _, err := strconv.ParseUint(dir, 16, 64); err != nil {
			return nil
		}
		roots = append(roots, logfile.VolumePrefix+dir+"/")
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(roots)
	roots = slices.Compact(roots)
	if len(roots) == 0 {
		if info, err := Load(ctx, st, ""); err == nil {
			return []Info{info}, nil
		} else if !errors.Is(err, ErrNoBackup) {
			return nil, err
		}
	}
	out := make([]Info, 0, len(roots))
	for _, r := range roots {
		info, err := Load(ctx, st, r)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Choose returns the newest finished backup with resolved ts ≤ t.
func Choose(infos []Info, t uint64) (Info, bool) {
	for i := len(infos) - 1; i >= 0; i-- {
		if infos[i].Finished() && infos[i].ResolvedTS() <= t {
			return infos[i], true
		}
	}
	return Info{}, false
}

// CheckSnapshots asks the provider for every snapshot of a finished
// backup: each must exist (else restore.ErrMissing) and be completed
// (else restore.ErrCorrupt with the provider's reason). It returns how
// many it checked.
func CheckSnapshots(ctx context.Context, p volume.Provider, in Info) (int, error) {
	m := in.Meta
	if m.GetFullBackupType() != p.Name() {
		return 0, fmt.Errorf("%w: the volume backup at %s was taken with provider %q, not %q", ErrInvalid, in.Root, m.GetFullBackupType(), p.Name())
	}
	n := 0
	for _, s := range m.GetStores() {
		for _, v := range s.GetVolumes() {
			st, err := p.Status(ctx, []string{v.GetSnapshotId()})
			if errors.Is(err, volume.ErrNotFound) {
				return n, fmt.Errorf("%w: snapshot %s of volume %s of store %d: %v", restore.ErrMissing, v.GetSnapshotId(), v.GetVolumeId(), s.GetStoreId(), err)
			}
			if err != nil {
				return n, fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			if st[0].State != volume.Completed {
				return n, fmt.Errorf("%w: snapshot %s of volume %s of store %d is %s: %s", restore.ErrCorrupt, v.GetSnapshotId(), v.GetVolumeId(), s.GetStoreId(), st[0].State, st[0].Message)
			}
			n++
		}
	}
	return n, nil
}
