// Package volsnap takes and restores volume-snapshot backups (DESIGN.md
// §12): crash-consistent snapshots of every TiKV store's volumes through a
// volume.Provider, cut at one resolved ts by TiKV's snapshot-recovery
// protocol on restore, with the log after it applied as a normal PiTR.
//
// The backup follows BR's EBS backup (pingcap/tidb br/pkg/task/backup_ebs.go
// and its design doc, docs/design/2022-07-11-ebs-backup-restore.md): PD's
// scheduling limits set to 0 and GC held (each with a TTL, so a backup
// that dies leaves nothing paused for longer), the resolved ts read from
// PD (the minimum the stores report), one Snapshot per store, scheduling
// and GC resumed as soon as every snapshot's point in time is fixed, then
// a wait for the snapshots to complete and the backupmeta last.
package volsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/opt"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/snapshot"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/volume"
)

// Errors, for exit statuses.
var (
	// ErrInvalid: the volume file or the options do not fit the cluster.
	ErrInvalid = errors.New("invalid volume backup")
	// ErrConflict: a backup at that resolved ts exists, or GC passed it.
	ErrConflict = snapshot.ErrConflict
	// ErrUnavailable: PD or the stores could not be reached.
	ErrUnavailable = connector.ErrUnavailable
	// ErrSnapshot: the provider failed a snapshot (its message says why).
	ErrSnapshot = errors.New("volume snapshot failed")
	// ErrNoResolvedTS: the stores do not report a min resolved ts to PD.
	ErrNoResolvedTS = errors.New("no resolved ts")
)

// Names under a backup root.
const (
	MetaName = "volumebackupmeta"
	LockName = "volumebackup.lock"
)

// Root is where a volume backup at resolved ts lives under a task root.
func Root(ts uint64) string { return fmt.Sprintf("%s%016x/", logfile.VolumePrefix, ts) }

// Defaults.
const (
	// DefaultPauseTTL is the TTL of PD's lowered scheduling limits and of
	// the GC hold: they last while the snapshots start (seconds, for
	// EBS) and lapse this long after a backup that died.
	DefaultPauseTTL = 5 * time.Minute
	// DefaultPoll is how often the snapshots' states are read.
	DefaultPoll = 2 * time.Second
)

// scheduleLimits are the PD config keys a volume backup sets to 0 while
// it takes the snapshots, besides pausing the balance schedulers: no
// operator moves a peer or a leader, and none merges, so every store's
// snapshot holds the regions PD knows (BR's EBS backup sets these, its
// design doc "BR Backup" step 1).
var scheduleLimits = []string{
	"hot-region-schedule-limit", "leader-schedule-limit", "merge-schedule-limit",
	"region-schedule-limit", "replica-schedule-limit",
}

// VolumeFile is the file an operator hands to `pitr backup volume`: BR's
// volume file (br/pkg/config/ebs.go VolSnapBackupMeta), whose tikv.stores
// name each store's volumes. `pitr restore volume --prepare` writes the
// same shape back with restore_volume_id set.
type VolumeFile struct {
	ClusterInfo *ClusterInfo    `json:"cluster_info,omitempty"`
	TiKV        TiKVComponent   `json:"tikv"`
	Kubernetes  json.RawMessage `json:"kubernetes,omitempty"`
	Region      string          `json:"region,omitempty"`
}

// ClusterInfo is BR's cluster_info.
type ClusterInfo struct {
	Version        string `json:"cluster_version"`
	FullBackupType string `json:"full_backup_type"`
	ResolvedTS     uint64 `json:"resolved_ts"`
}

// TiKVComponent is BR's tikv section.
type TiKVComponent struct {
	Replicas int         `json:"replicas"`
	Stores   []FileStore `json:"stores"`
}

// FileStore is one store of a volume file.
type FileStore struct {
	StoreID  uint64       `json:"store_id"`
	Instance string       `json:"instance_id,omitempty"`
	Volumes  []FileVolume `json:"volumes"`
}

// FileVolume is one volume of a volume file.
type FileVolume struct {
	ID              string `json:"volume_id"`
	Type            string `json:"type"`
	MountPath       string `json:"mount_path,omitempty"`
	SnapshotID      string `json:"snapshot_id,omitempty"`
	RestoreVolumeID string `json:"restore_volume_id,omitempty"`
	Zone            string `json:"volume_az,omitempty"`
}

// ReadVolumeFile reads and checks a volume file.
func ReadVolumeFile(path string) (*VolumeFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: volume file: %v", ErrInvalid, err)
	}
	var f VolumeFile
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: volume file %s: %v", ErrInvalid, path, err)
	}
	if len(f.TiKV.Stores) == 0 {
		return nil, fmt.Errorf("%w: volume file %s names no store (tikv.stores)", ErrInvalid, path)
	}
	seen := map[uint64]bool{}
	for _, s := range f.TiKV.Stores {
		if s.StoreID == 0 || seen[s.StoreID] {
			return nil, fmt.Errorf("%w: volume file %s: store id %d is zero or repeated", ErrInvalid, path, s.StoreID)
		}
		seen[s.StoreID] = true
		if len(s.Volumes) == 0 {
			return nil, fmt.Errorf("%w: volume file %s: store %d has no volumes", ErrInvalid, path, s.StoreID)
		}
		for _, v := range s.Volumes {
			if v.ID == "" {
				return nil, fmt.Errorf("%w: volume file %s: store %d has a volume without volume_id", ErrInvalid, path, s.StoreID)
			}
		}
	}
	return &f, nil
}

// Stores are the file's stores as the provider takes them.
func (f *VolumeFile) Stores() []volume.Store {
	out := make([]volume.Store, 0, len(f.TiKV.Stores))
	for _, s := range f.TiKV.Stores {
		st := volume.Store{StoreID: s.StoreID, Instance: s.Instance}
		for _, v := range s.Volumes {
			st.Volumes = append(st.Volumes, volume.Volume{ID: v.ID, Type: v.Type, MountPath: v.MountPath, Zone: v.Zone})
		}
		out = append(out, st)
	}
	return out
}

// PD is what a volume backup needs of PD's client.
type PD interface {
	snapshot.Cluster
	GetAllStores(ctx context.Context, opts ...opt.GetStoreOption) ([]*metapb.Store, error)
	ScanRegions(ctx context.Context, key, endKey []byte, limit int, opts ...opt.GetRegionOption) ([]*router.Region, error)
}

// BackupOptions configure Backup.
type BackupOptions struct {
	Storage  storage.Storage
	Provider volume.Provider
	File     *VolumeFile
	PD       PD
	PDAddrs  []string
	TLS      connector.TLS
	HTTP     *http.Client
	// PauseTTL: DefaultPauseTTL when 0.
	PauseTTL time.Duration
	// Poll: DefaultPoll when 0.
	Poll     time.Duration
	Progress io.Writer
	Logger   hclog.Logger
}

// BackupResult is what a backup took.
type BackupResult struct {
	Root       string
	ResolvedTS uint64
	Stores     int
	Snapshots  int
	Bytes      int64
	// Paused is how long PD's scheduling and GC were held.
	Paused   time.Duration
	Duration time.Duration
	Meta     *pitrpb.VolumeBackupMeta
}

// Backup takes a volume backup into o.Storage: under volume/<resolved ts>/
// when it is a task root (task.pb), else at its top.
func Backup(ctx context.Context, o BackupOptions) (res *BackupResult, err error) {
	start := time.Now()
	if o.PauseTTL <= 0 {
		o.PauseTTL = DefaultPauseTTL
	}
	if o.Poll <= 0 {
		o.Poll = DefaultPoll
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.HTTP == nil {
		o.HTTP = http.DefaultClient
	}
	log := o.Logger.Named("volume-backup")
	stores := o.File.Stores()
	ti, err := readTask(ctx, o.Storage)
	if err != nil {
		return nil, err
	}
	clusterID := o.PD.GetClusterID(ctx)
	if ti != nil && ti.GetClusterId() != 0 && ti.GetClusterId() != clusterID {
		return nil, fmt.Errorf("%w: %s is the root of task %q of cluster %d, but PD is of cluster %d", ErrInvalid, o.Storage.URL(), ti.GetName(), ti.GetClusterId(), clusterID)
	}
	version, err := checkStores(ctx, o.PD, stores)
	if err != nil {
		return nil, err
	}

	// Pause, resolved ts, GC, snapshots, resume: the window is as short as
	// the provider's Snapshot calls.
	pausedAt := time.Now()
	resume, err := restore.PauseScheduling(ctx, log, o.TLS, o.PDAddrs, o.HTTP, o.PauseTTL, restore.BalanceSchedulers(), scheduleLimits)
	if err != nil {
		return nil, err
	}
	resumed := false
	var releaseGC func()
	unpause := func() {
		if releaseGC != nil {
			releaseGC()
			releaseGC = nil
		}
		if !resumed {
			resume()
			resumed = true
		}
	}
	defer unpause()
	ts, err := minResolvedTS(ctx, o.HTTP, o.TLS, o.PDAddrs)
	if err != nil {
		return nil, err
	}
	if ti != nil && ts < ti.GetStartTs() {
		return nil, fmt.Errorf("%w: the cluster's resolved ts %s is before task %q started (%s); wait until it passes the start",
			ErrInvalid, keyspace.Format(ts), ti.GetName(), keyspace.Format(ti.GetStartTs()))
	}
	if releaseGC, err = snapshot.HoldGC(ctx, o.PD, fmt.Sprintf("pitr-volume-backup-%d", ts), ts, o.PauseTTL, log); err != nil {
		return nil, err
	}
	root := ""
	if ti != nil {
		root = Root(ts)
	}
	lock := &pitrpb.VolumeBackupLock{ResolvedTs: ts, Provider: o.Provider.Name(), CreatedUnixMs: time.Now().UnixMilli(), CreatedBy: who(), Task: ti.GetName()}
	lb, err := logfile.EncodeVolumeBackupLock(lock)
	if err != nil {
		return nil, err
	}
	if err := o.Storage.CreateIfAbsent(ctx, root+LockName, lb); errors.Is(err, storage.ErrAlreadyExists) {
		if root == "" {
			return nil, fmt.Errorf("%w: %s holds a volume backup already (%s): use a root of its own per backup, or a task root", ErrConflict, o.Storage.URL(), LockName)
		}
		return nil, fmt.Errorf("%w: %s%s exists: a volume backup at resolved ts %s was taken (or is being taken) there", ErrConflict, o.Storage.URL()+"/", root+LockName, keyspace.Format(ts))
	} else if err != nil {
		return nil, fmt.Errorf("write %s: %w", root+LockName, err)
	}
	tags := map[string]string{"pitr:resolved-ts": fmt.Sprint(ts), "pitr:cluster-id": fmt.Sprint(clusterID), "pitr:task": ti.GetName()}
	snaps, err := snapshotAll(ctx, o.Provider, stores, tags)
	if err != nil {
		deleteSnapshots(o.Provider, snaps, log)
		return nil, err
	}
	unpause()
	paused := time.Since(pausedAt)
	log.Info("snapshots started; PD scheduling and GC resumed", "resolved_ts", ts, "stores", len(stores), "paused", paused)

	done, err := waitSnapshots(ctx, o.Provider, snaps, o.Poll, o.Progress)
	if err != nil {
		deleteSnapshots(o.Provider, snaps, log)
		return nil, err
	}
	m := &pitrpb.VolumeBackupMeta{
		ClusterId: clusterID, ClusterVersion: version, FullBackupType: o.Provider.Name(), ResolvedTs: ts,
		Task: ti.GetName(), KubernetesJson: o.File.Kubernetes, Region: o.File.Region,
		StartedUnixMs: start.UnixMilli(), FinishedUnixMs: time.Now().UnixMilli(), PausedMs: paused.Milliseconds(),
	}
	var total int64
	for i, st := range stores {
		vs := &pitrpb.VolumeStore{StoreId: st.StoreID, InstanceId: st.Instance}
		byVolume := map[string]volume.Snapshot{}
		for _, s := range done[i] {
			byVolume[s.VolumeID] = s
		}
		for _, v := range st.Volumes {
			s, ok := byVolume[v.ID]
			if !ok {
				return nil, fmt.Errorf("%w: %s returned no snapshot of volume %s of store %d (the snapshots taken are kept: %s)", ErrSnapshot, o.Provider.Name(), v.ID, st.StoreID, snapshotIDs(done))
			}
			total += s.Bytes
			vs.Volumes = append(vs.Volumes, &pitrpb.VolumeSnapshot{VolumeId: v.ID, Type: v.Type, MountPath: v.MountPath, SnapshotId: s.ID, VolumeAz: v.Zone, Bytes: s.Bytes})
		}
		m.Stores = append(m.Stores, vs)
	}
	mb, err := logfile.EncodeVolumeBackupMeta(m)
	if err != nil {
		return nil, err
	}
	if err := o.Storage.Put(ctx, root+MetaName, mb); err != nil {
		return nil, fmt.Errorf("write %s (the snapshots are complete and kept: %s): %w", root+MetaName, snapshotIDs(done), err)
	}
	n := 0
	for _, d := range done {
		n += len(d)
	}
	return &BackupResult{Root: root, ResolvedTS: ts, Stores: len(stores), Snapshots: n, Bytes: total, Paused: paused, Duration: time.Since(start), Meta: m}, nil
}

func who() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("pitr backup volume on %s, pid %d", host, os.Getpid())
}

// HasLog reports whether a root is a task's (a log beside its volume
// backups), or a volume backup's of its own.
func HasLog(ctx context.Context, src interface {
	Get(ctx context.Context, key string) ([]byte, error)
}) (bool, error) {
	ti, err := readTask(ctx, src)
	return ti != nil, err
}

// readTask reads task.pb when the root is a task's.
func readTask(ctx context.Context, st interface {
	Get(ctx context.Context, key string) ([]byte, error)
}) (*pitrpb.TaskInfo, error) {
	b, err := st.Get(ctx, logfile.TaskPath)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", logfile.TaskPath, err)
	}
	return logfile.DecodeTaskInfo(b)
}

// checkStores refuses a volume file that does not name every store PD
// has up, or names one PD does not have: the backup would miss data or
// snapshot a stranger. It returns the stores' lowest version.
func checkStores(ctx context.Context, pd PD, stores []volume.Store) (string, error) {
	all, err := pd.GetAllStores(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: list the stores: %v", ErrUnavailable, err)
	}
	named := map[uint64]bool{}
	for _, s := range stores {
		named[s.StoreID] = true
	}
	have := map[uint64]bool{}
	var missing []string
	version := ""
	for _, s := range all {
		if s.GetState() == metapb.StoreState_Tombstone {
			continue
		}
		have[s.GetId()] = true
		if !named[s.GetId()] {
			missing = append(missing, fmt.Sprintf("%d (%s)", s.GetId(), s.GetAddress()))
		}
		if v := s.GetVersion(); version == "" || v < version {
			version = v
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("%w: the volume file does not name store %s: its data would be missing from the backup", ErrInvalid, strings.Join(missing, ", "))
	}
	for _, s := range stores {
		if !have[s.StoreID] {
			return "", fmt.Errorf("%w: the volume file names store %d, which PD does not have", ErrInvalid, s.StoreID)
		}
	}
	return version, nil
}

// resolvedWait bounds how long a backup waits for PD to have a min
// resolved ts from every store: a store reports it every second once it
// runs (pd.report-min-resolved-ts-interval), so a cluster that just
// started may have none yet.
const resolvedWait = 15 * time.Second

// minResolvedTS reads PD's min resolved ts (GET /pd/api/v1/min-resolved-ts,
// tikv/pd server/api/min_resolved_ts.go): the minimum of the resolved ts
// every store reports, below which no transaction can still commit.
func minResolvedTS(ctx context.Context, hc *http.Client, t connector.TLS, addrs []string) (uint64, error) {
	deadline := time.Now().Add(resolvedWait)
	for {
		ts, real, err := readMinResolvedTS(ctx, hc, t, addrs)
		if err != nil {
			return 0, err
		}
		if real && ts != 0 {
			return ts, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: PD has had no min resolved ts from the stores for %s (TiKV reports it when pd.report-min-resolved-ts-interval is set, default 1s)", ErrNoResolvedTS, resolvedWait)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func readMinResolvedTS(ctx context.Context, hc *http.Client, t connector.TLS, addrs []string) (uint64, bool, error) {
	var body struct {
		MinResolvedTS uint64 `json:"min_resolved_ts"`
		IsRealTime    bool   `json:"is_real_time"`
	}
	if err := (pdHTTP{hc: hc, tls: t, addrs: addrs}).call(ctx, http.MethodGet, "/pd/api/v1/min-resolved-ts", nil, &body); err != nil {
		return 0, false, fmt.Errorf("read PD's min resolved ts: %w", err)
	}
	return body.MinResolvedTS, body.IsRealTime, nil
}

// snapshotAll starts every store's snapshot at once: the stores' points
// in time are as close as the provider allows. On error it returns what
// was taken, for deletion.
func snapshotAll(ctx context.Context, p volume.Provider, stores []volume.Store, tags map[string]string) ([][]volume.Snapshot, error) {
	out := make([][]volume.Snapshot, len(stores))
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, st := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := maps(tags)
			t["pitr:store-id"] = fmt.Sprint(st.StoreID)
			s, err := p.Snapshot(ctx, st, t)
			if err == nil && len(s) != len(st.Volumes) {
				err = fmt.Errorf("%s returned %d snapshots for the %d volumes of store %d", p.Name(), len(s), len(st.Volumes), st.StoreID)
			}
			out[i], errs[i] = s, err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return out, fmt.Errorf("%w: store %d: %v", ErrSnapshot, stores[i].StoreID, err)
		}
	}
	return out, nil
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// waitSnapshots polls until every snapshot completed; one that failed
// ends the wait with the provider's reason.
func waitSnapshots(ctx context.Context, p volume.Provider, snaps [][]volume.Snapshot, poll time.Duration, progress io.Writer) ([][]volume.Snapshot, error) {
	var ids []string
	for _, s := range snaps {
		for _, v := range s {
			ids = append(ids, v.ID)
		}
	}
	start := time.Now()
	last := time.Time{}
	for {
		st, err := p.Status(ctx, ids)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSnapshot, err)
		}
		doneN, pct := 0, 0
		for _, s := range st {
			switch s.State {
			case volume.Failed:
				return nil, fmt.Errorf("%w: snapshot %s of volume %s: %s", ErrSnapshot, s.ID, s.VolumeID, s.Message)
			case volume.Completed:
				doneN++
			}
			pct += s.Progress
		}
		if progress != nil && (time.Since(last) >= 5*time.Second || doneN == len(st)) {
			fmt.Fprintf(progress, "volume snapshots: %d/%d completed, %d%%, %s elapsed\n", doneN, len(st), pct/max(1, len(st)), time.Since(start).Round(time.Second))
			last = time.Now()
		}
		if doneN == len(st) {
			out := make([][]volume.Snapshot, len(snaps))
			k := 0
			for i := range snaps {
				out[i] = st[k : k+len(snaps[i])]
				k += len(snaps[i])
			}
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(poll):
		}
	}
}

// deleteSnapshots removes the snapshots of a backup that failed (BR does
// the same); what it cannot delete is logged with its id.
func deleteSnapshots(p volume.Provider, snaps [][]volume.Snapshot, log hclog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, s := range snaps {
		for _, v := range s {
			if err := p.Delete(ctx, v.ID); err != nil {
				log.Warn("delete the snapshot of a failed volume backup; delete it by hand", "snapshot", v.ID, "error", err)
			}
		}
	}
}

func snapshotIDs(snaps [][]volume.Snapshot) string {
	var ids []string
	for _, s := range snaps {
		for _, v := range s {
			ids = append(ids, v.ID)
		}
	}
	sort.Strings(ids)
	return strings.Join(slices.Compact(ids), " ")
}
