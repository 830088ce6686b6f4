package volsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pitr-io/pitr/connector"
	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/restore"
	"github.com/pitr-io/pitr/volume"
)

// RecoveredKey is where Recover records, in the target's PD etcd, the
// resolved ts it recovered the cluster to, just before it clears PD's
// marker: a rerun of the restore finds the recovery done and goes on to
// the log.
const RecoveredKey = "/pitr/v1/volume-restore/recovered"

// prepareConcurrency bounds the volumes Prepare makes at once.
const prepareConcurrency = 8

// PrepareOptions configure Prepare.
type PrepareOptions struct {
	Provider volume.Provider
	Backup   Info
	// PDAddrs of the target's PD, running without its stores: Prepare
	// marks it snapshot-recovering, so the stores start in recovery mode.
	PDAddrs  []string
	TLS      connector.TLS
	HTTP     *http.Client
	Progress io.Writer
	Logger   hclog.Logger
}

// Prepare is the first phase of a volume restore (BR's `restore full
// --type=aws-ebs --prepare`): a volume from every snapshot of the backup,
// in the zone of the volume it was taken from, and PD marked
// snapshot-recovering. It returns the volume file, with restore_volume_id
// set, for whoever starts the stores on the new volumes (TiDB Operator;
// for the playground, its start-stores call). A failure after the first
// volume names the volumes made, so they can be deleted or reused.
func Prepare(ctx context.Context, o PrepareOptions) (*VolumeFile, error) {
	if o.HTTP == nil {
		o.HTTP = http.DefaultClient
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	m := o.Backup.Meta
	if m == nil {
		return nil, fmt.Errorf("%w: the volume backup at %s is unfinished (no %s)", ErrNoBackup, o.Backup.Root, MetaName)
	}
	if m.GetFullBackupType() != o.Provider.Name() {
		return nil, fmt.Errorf("%w: the volume backup was taken with provider %q, not %q", ErrInvalid, m.GetFullBackupType(), o.Provider.Name())
	}
	ph := pdHTTP{hc: o.HTTP, tls: o.TLS, addrs: o.PDAddrs}
	if _, err := ph.marked(ctx); err != nil {
		return nil, err
	}
	out := &VolumeFile{
		ClusterInfo: &ClusterInfo{Version: m.GetClusterVersion(), FullBackupType: m.GetFullBackupType(), ResolvedTS: m.GetResolvedTs()},
		Kubernetes:  json.RawMessage(m.GetKubernetesJson()),
		Region:      m.GetRegion(),
	}
	if len(out.Kubernetes) == 0 {
		out.Kubernetes = nil
	}
	// Every volume at once (BR creates them concurrently too): EBS takes
	// a while to make each one available.
	type job struct{ store, vol int }
	var jobs []job
	for i, s := range m.GetStores() {
		out.TiKV.Stores = append(out.TiKV.Stores, FileStore{StoreID: s.GetStoreId(), Instance: s.GetInstanceId(), Volumes: make([]FileVolume, len(s.GetVolumes()))})
		for j := range s.GetVolumes() {
			jobs = append(jobs, job{i, j})
		}
	}
	var mu sync.Mutex
	var made []string
	errs := make([]error, len(jobs))
	sem := make(chan struct{}, prepareConcurrency)
	var wg sync.WaitGroup
	for k, jb := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			s := m.GetStores()[jb.store]
			v := s.GetVolumes()[jb.vol]
			nv, err := o.Provider.CreateVolume(ctx, v.GetSnapshotId(), volume.CreateOptions{Zone: v.GetVolumeAz(),
				Tags: map[string]string{"pitr:restored-from": v.GetSnapshotId(), "pitr:store-id": fmt.Sprint(s.GetStoreId())}})
			if err != nil {
				errs[k] = fmt.Errorf("create a volume from snapshot %s of store %d: %w", v.GetSnapshotId(), s.GetStoreId(), err)
				return
			}
			mu.Lock()
			made = append(made, nv.ID)
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "volume restore: store %d: %s from %s\n", s.GetStoreId(), nv.ID, v.GetSnapshotId())
			}
			mu.Unlock()
			out.TiKV.Stores[jb.store].Volumes[jb.vol] = FileVolume{ID: v.GetVolumeId(), Type: v.GetType(), MountPath: v.GetMountPath(),
				SnapshotID: v.GetSnapshotId(), RestoreVolumeID: nv.ID, Zone: v.GetVolumeAz()}
		}()
	}
	wg.Wait()
	failed := 0
	var first error
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			failed++
		}
	}
	if first != nil {
		return nil, fmt.Errorf("%w (%d of %d volumes failed; volumes made: %s)", first, failed, len(jobs), listOrNone(made))
	}
	out.TiKV.Replicas = len(out.TiKV.Stores)
	if err := ph.call(ctx, http.MethodPost, markerPath, nil, nil); err != nil {
		return nil, fmt.Errorf("mark PD snapshot-recovering (the volumes are made: %s): %w", listOrNone(made), err)
	}
	return out, nil
}

func listOrNone(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	return strings.Join(ids, " ")
}

// WriteVolumeFile writes f as JSON (the --output of --prepare).
func WriteVolumeFile(path string, f *VolumeFile) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// DataOptions configure RestoreData.
type DataOptions struct {
	Recover RecoverOptions
	// Etcd is the target's PD etcd (RecoveredKey).
	Etcd *clientv3.Client
	// Restore is the log restore onto the recovered cluster; its Volume
	// is set by RestoreData.
	Restore restore.Options
	Backup  Info
	// ServeWait bounds the wait for every region to have a leader after
	// the stores leave recovery (default 2 min).
	ServeWait time.Duration
}

// DataResult is what RestoreData did.
type DataResult struct {
	// Recovered is nil when an earlier run had recovered the cluster.
	Recovered *RecoverResult
	// Restore is nil when the root holds no log (a volume backup of its
	// own): the recovered cluster is the restore.
	Restore *restore.Result
}

// RestoreData is the second phase of a volume restore: recover the
// stores started on the prepared volumes (Recover; skipped when an
// earlier run did it), wait until the cluster serves, then restore the
// log in (resolved ts, T] onto it.
func RestoreData(ctx context.Context, o DataOptions) (*DataResult, error) {
	m := o.Backup.Meta
	if m == nil {
		return nil, fmt.Errorf("%w: the volume backup at %s is unfinished", ErrNoBackup, o.Backup.Root)
	}
	ts := m.GetResolvedTs()
	if t := o.Restore.RestoreTS; t < ts {
		return nil, fmt.Errorf("%w: the volume backup is at %s, after the restore point %s", restore.ErrOutOfRange, keyspace.Format(ts), keyspace.Format(t))
	}
	ti, err := readTask(ctx, o.Restore.Source)
	if err != nil {
		return nil, err
	}
	if t := o.Restore.RestoreTS; ti == nil && t != ts {
		return nil, fmt.Errorf("%w: %s holds a volume backup and no log, so the only restore point is its resolved ts %s",
			restore.ErrOutOfRange, o.Restore.Source.URL(), keyspace.Format(ts))
	}
	res := &DataResult{}
	done, err := recoveredTo(ctx, o.Etcd)
	if err != nil {
		return nil, err
	}
	rec := o.Recover
	ph := pdHTTP{hc: rec.HTTP, tls: rec.TLS, addrs: rec.PDAddrs}
	if rec.HTTP == nil {
		ph.hc = http.DefaultClient
	}
	marked, err := ph.marked(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case marked:
		rec.ResolvedTS, rec.Stores = ts, len(m.GetStores())
		rec.Mark = func(ctx context.Context) error {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := o.Etcd.Put(cctx, RecoveredKey, strconv.FormatUint(ts, 10))
			return err
		}
		if res.Recovered, err = Recover(ctx, rec); err != nil {
			return nil, err
		}
	case done == ts:
	case done != 0:
		return nil, fmt.Errorf("%w: this cluster was recovered from a volume backup at %s, not from this one at %s", ErrInvalid, keyspace.Format(done), keyspace.Format(ts))
	default:
		return nil, fmt.Errorf("%w: PD is not marked snapshot-recovering and no volume recovery is recorded: run `pitr restore volume --prepare`, then start the stores on the volumes it makes", ErrNotRecovering)
	}
	if err := waitServing(ctx, rec.PD, o.ServeWait); err != nil {
		return nil, err
	}
	if ti == nil {
		// A volume backup in a root of its own: the cluster at its
		// resolved ts is the whole restore.
		return res, nil
	}
	ro := o.Restore
	ro.Volume = &restore.VolumeBase{Root: o.Backup.Root, BackupTS: ts}
	if res.Restore, err = restore.Run(ctx, ro); err != nil {
		return res, err
	}
	return res, nil
}

func recoveredTo(ctx context.Context, cli *clientv3.Client) (uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(cctx, RecoveredKey)
	if err != nil {
		return 0, fmt.Errorf("%w: read %s from the target's etcd: %v", ErrUnavailable, RecoveredKey, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64)
}

// waitServing waits until PD knows a leader for every region: the stores
// have left recovery mode and heartbeat their regions.
func waitServing(ctx context.Context, pd PD, wait time.Duration) error {
	if wait <= 0 {
		wait = 2 * time.Minute
	}
	deadline := time.Now().Add(wait)
	var last error
	for {
		ok, err := allLeaders(ctx, pd)
		if err == nil && ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last == nil {
				last = errors.New("some regions have no leader")
			}
			return fmt.Errorf("%w: the recovered cluster does not serve after %s: %v", ErrUnavailable, wait, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// allLeaders reports whether PD lists a leader for every region.
func allLeaders(ctx context.Context, pd PD) (bool, error) {
	var key []byte
	for {
		rs, err := pd.ScanRegions(ctx, key, nil, 1024)
		if err != nil {
			return false, err
		}
		if len(rs) == 0 {
			return key != nil, nil
		}
		for _, r := range rs {
			if r.Leader == nil || r.Leader.GetId() == 0 {
				return false, nil
			}
		}
		end := rs[len(rs)-1].Meta.GetEndKey()
		if len(end) == 0 {
			return true, nil
		}
		key = end
	}
}
