// Package local is the volume provider of directories on this host: the
// playground's store directories, or any directory whose writers follow
// the rule below. Volume ids are absolute directory paths; snapshots and
// the volumes made from them live under the provider's root, which must
// be on the same filesystem as the volumes (snapshots begin as hard
// links).
//
// A snapshot is taken as EBS takes one: its point in time is fixed when
// Snapshot returns, without pausing or flushing the writer, and its data
// is copied afterwards (State Pending until then). Snapshot lists each
// volume, then hard-links every listed file into the snapshot in reverse
// name order and records its size, skipping a file deleted since the
// listing. Afterwards the copier copies each file's first <size> bytes
// and drops the links.
//
// The copy is a crash state of a volume whose writer keeps the rule of
// the playground's engine and region metas (playground/mvcc doc.go,
// playground/volumes.go): files are only appended to (one at a time: a
// WAL) or replaced whole by rename; the file that records how far the log
// is applied (a checkpoint) is written after the log it covers, deletes
// only log files it no longer needs, and sorts before them by name.
// Linked last, it is at least as new as every log file linked before it,
// so a log file deleted meanwhile was not needed; a link keeps the
// contents a file had when linked, and the recorded sizes cut the file
// being appended. Files created after the listing are after the cut.
//
// Layout under the root:
//
//	snapshots/<snap-id>/cut.json     the volume, its files and sizes, tags
//	snapshots/<snap-id>/links/<n>    the hard links, until copied
//	snapshots/<snap-id>/data/...     the copied files
//	snapshots/<snap-id>/done         written last: the snapshot completed
//	volumes/<vol-id>/...             volumes made from snapshots
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pitr-io/pitr/volume"
)

// Name is the provider's name as --provider spells it.
const Name = "local"

// Provider is the local provider. Its copiers run in this process; a
// snapshot a dead process left pending is finished by the next Status.
type Provider struct {
	root string

	mu      sync.Mutex
	copying map[string]*copier
}

type copier struct {
	total  int64
	copied atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done closes
}

// cut is cut.json: what one snapshot holds.
type cut struct {
	Volume      volume.Volume     `json:"volume"`
	Dirs        []string          `json:"dirs"`
	Files       []cutFile         `json:"files"`
	Tags        map[string]string `json:"tags,omitempty"`
	CreatedUnix int64             `json:"created_unix_ms"`
}

type cutFile struct {
	Path string `json:"path"` // relative to the volume, slash-separated
	Size int64  `json:"size"`
}

func (c *cut) bytes() (n int64) {
	for _, f := range c.Files {
		n += f.Size
	}
	return n
}

// New opens (creating if needed) a provider rooted at root.
func New(root string) (*Provider, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, perr("open", err)
	}
	for _, d := range []string{"snapshots", "volumes"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, perr("open "+abs, err)
		}
	}
	return &Provider{root: abs, copying: map[string]*copier{}}, nil
}

// Name implements volume.Provider.
func (p *Provider) Name() string { return Name }

// Root is the provider's root directory.
func (p *Provider) Root() string { return p.root }

func perr(op string, err error) error {
	return &volume.Error{Provider: Name, Op: op, Err: err}
}

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func (p *Provider) snapDir(id string) string { return filepath.Join(p.root, "snapshots", id) }

// list walks a volume: its directories and regular files, by relative
// path. Anything else (a symlink, a device) is refused: a copy could not
// stand for it.
func list(dir string) (dirs, files []string, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path != dir {
			return nil // removed while walked: the second listing decides
		}
		if err != nil {
			return err
		}
		rel, rerr := filepath.Rel(dir, path)
		if rerr != nil {
			return rerr
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			if rel != "." {
				dirs = append(dirs, rel)
			}
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is not a regular file or directory", path)
		}
		files = append(files, rel)
		return nil
	})
	return dirs, files, err
}

// Snapshot implements volume.Provider: one link pass over every volume of
// st.
func (p *Provider) Snapshot(ctx context.Context, st volume.Store, tags map[string]string) ([]volume.Snapshot, error) {
	if len(st.Volumes) == 0 {
		return nil, perr(fmt.Sprintf("snapshot store %d", st.StoreID), errors.New("no volumes"))
	}
	for _, v := range st.Volumes {
		if !filepath.IsAbs(v.ID) {
			return nil, perr(fmt.Sprintf("snapshot store %d", st.StoreID), fmt.Errorf("volume %q: a local volume id is an absolute directory", v.ID))
		}
		if fi, err := os.Stat(v.ID); err != nil {
			return nil, perr(fmt.Sprintf("snapshot store %d", st.StoreID), err)
		} else if !fi.IsDir() {
			return nil, perr(fmt.Sprintf("snapshot store %d", st.StoreID), fmt.Errorf("volume %s is not a directory", v.ID))
		}
	}
	op := fmt.Sprintf("snapshot store %d", st.StoreID)
	ids, cuts, err := p.pass(st, tags)
	if err != nil {
		for _, id := range ids {
			_ = os.RemoveAll(p.snapDir(id))
		}
		return nil, perr(op, err)
	}
	out := make([]volume.Snapshot, len(ids))
	for i, id := range ids {
		if err := writeJSON(filepath.Join(p.snapDir(id), "cut.json"), cuts[i]); err != nil {
			return nil, perr(op, err)
		}
		p.startCopier(id, cuts[i])
		out[i] = volume.Snapshot{ID: id, VolumeID: cuts[i].Volume.ID, State: volume.Pending, Bytes: cuts[i].bytes()}
	}
	return out, nil
}

// pass links every file of st's volumes into new snapshot dirs, each
// volume's in reverse name order, skipping a listed file that is gone by
// the time it is linked (see the package doc for why that is a crash
// state).
func (p *Provider) pass(st volume.Store, tags map[string]string) (ids []string, cuts []*cut, err error) {
	now := time.Now().UnixMilli()
	for _, v := range st.Volumes {
		dirs, files, err := list(v.ID)
		if err != nil {
			return ids, nil, err
		}
		id := newID("snap-")
		ids = append(ids, id)
		links := filepath.Join(p.snapDir(id), "links")
		if err := os.MkdirAll(links, 0o755); err != nil {
			return ids, nil, err
		}
		c := &cut{Volume: v, Dirs: dirs, Tags: tags, CreatedUnix: now}
		sort.Sort(sort.Reverse(sort.StringSlice(files)))
		for _, rel := range files {
			link := filepath.Join(links, fmt.Sprint(len(c.Files)))
			gone, err := linkFile(filepath.Join(v.ID, filepath.FromSlash(rel)), link)
			if gone {
				continue // deleted since the listing: superseded
			}
			if err != nil {
				if errors.Is(err, syscall.EXDEV) {
					return ids, nil, fmt.Errorf("the provider root %s is not on the filesystem of volume %s (snapshots begin as hard links)", p.root, v.ID)
				}
				return ids, nil, err
			}
			fi, err := os.Stat(link)
			if err != nil {
				return ids, nil, err
			}
			c.Files = append(c.Files, cutFile{Path: rel, Size: fi.Size()})
		}
		cuts = append(cuts, c)
	}
	return ids, cuts, nil
}

// linkFile hard-links src at dst. gone: src no longer exists. Linux's
// link(2) also answers ENOENT when src was renamed over between the name
// lookup and the link (the old inode has no name left), so ENOENT is
// retried while the name exists.
func linkFile(src, dst string) (gone bool, err error) {
	for try := 0; ; try++ {
		err := os.Link(src, dst)
		if !errors.Is(err, fs.ErrNotExist) || try == 1000 {
			return false, err
		}
		if _, serr := os.Lstat(src); errors.Is(serr, fs.ErrNotExist) {
			return true, nil
		}
	}
}

// startCopier copies a snapshot's linked files in the background, unless
// a copier of it already runs here.
func (p *Provider) startCopier(id string, c *cut) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.copying[id]; ok {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp := &copier{total: c.bytes(), cancel: cancel, done: make(chan struct{})}
	p.copying[id] = cp
	go func() {
		cp.err = p.copySnapshot(ctx, id, c, &cp.copied)
		if cp.err != nil && ctx.Err() == nil {
			_ = os.WriteFile(filepath.Join(p.snapDir(id), "failed"), []byte(cp.err.Error()), 0o644)
		}
		close(cp.done)
		p.mu.Lock()
		if p.copying[id] == cp {
			delete(p.copying, id)
		}
		p.mu.Unlock()
	}()
}

func (p *Provider) copySnapshot(ctx context.Context, id string, c *cut, copied *atomic.Int64) error {
	dir := p.snapDir(id)
	data := filepath.Join(dir, "data")
	for _, d := range c.Dirs {
		if err := os.MkdirAll(filepath.Join(data, filepath.FromSlash(d)), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	for n, f := range c.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		dst := filepath.Join(data, filepath.FromSlash(f.Path))
		if fi, err := os.Stat(dst); err == nil && fi.Size() == f.Size {
			if _, err := os.Stat(filepath.Join(dir, "links", fmt.Sprint(n))); errors.Is(err, fs.ErrNotExist) {
				copied.Add(f.Size) // copied by an earlier copier, whose link is gone
				continue
			}
		}
		if err := copyPrefix(filepath.Join(dir, "links", fmt.Sprint(n)), dst, f.Size, copied); err != nil {
			return fmt.Errorf("copy %s: %w", f.Path, err)
		}
		_ = os.Remove(filepath.Join(dir, "links", fmt.Sprint(n)))
	}
	if err := syncTree(data); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, "done"), map[string]int64{"bytes": c.bytes(), "finished_unix_ms": time.Now().UnixMilli()}); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(dir, "links"))
}

// copyPrefix copies the first n bytes of src to dst (created anew).
func copyPrefix(src, dst string, n int64, copied *atomic.Int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	w := &countWriter{w: out, n: copied}
	if _, err := io.CopyN(w, in, n); err != nil {
		out.Close()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s is shorter than the %d bytes recorded: it was truncated in place, which the rule of this provider forbids", src, n)
		}
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// Status implements volume.Provider. A snapshot left pending by a process
// that died is resumed here: its links still hold the cut.
func (p *Provider) Status(ctx context.Context, ids []string) ([]volume.Snapshot, error) {
	out := make([]volume.Snapshot, len(ids))
	for i, id := range ids {
		s, err := p.status(id)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

func (p *Provider) status(id string) (volume.Snapshot, error) {
	dir := p.snapDir(id)
	if !validID(id, "snap-") {
		return volume.Snapshot{}, perr("status "+id, fmt.Errorf("snapshot %q: %w", id, volume.ErrNotFound))
	}
	var c cut
	if err := readJSON(filepath.Join(dir, "cut.json"), &c); errors.Is(err, fs.ErrNotExist) {
		return volume.Snapshot{}, perr("status "+id, fmt.Errorf("snapshot %s: %w", id, volume.ErrNotFound))
	} else if err != nil {
		return volume.Snapshot{}, perr("status "+id, err)
	}
	s := volume.Snapshot{ID: id, VolumeID: c.Volume.ID, Bytes: c.bytes()}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		s.State, s.Progress = volume.Completed, 100
		return s, nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, "failed")); err == nil {
		s.State, s.Message = volume.Failed, string(b)
		return s, nil
	}
	s.State = volume.Pending
	p.mu.Lock()
	cp, running := p.copying[id]
	p.mu.Unlock()
	if !running {
		if _, err := os.Stat(filepath.Join(dir, "links")); err != nil {
			s.State, s.Message = volume.Failed, "the snapshot's links are gone before its copy finished"
			return s, nil
		}
		p.startCopier(id, &c)
		return s, nil
	}
	if cp.total > 0 {
		s.Progress = int(min(99, cp.copied.Load()*100/cp.total))
	}
	return s, nil
}

// Wait blocks until the snapshot's copier in this process is done (tests
// and callers that want no polling); a snapshot with no copier here
// returns at once.
func (p *Provider) Wait(id string) error {
	p.mu.Lock()
	cp, ok := p.copying[id]
	p.mu.Unlock()
	if !ok {
		return nil
	}
	<-cp.done
	return cp.err
}

func validID(id, prefix string) bool {
	if len(id) != len(prefix)+16 || id[:len(prefix)] != prefix {
		return false
	}
	_, err := hex.DecodeString(id[len(prefix):])
	return err == nil
}

// CreateVolume implements volume.Provider: a full copy of a completed
// snapshot under volumes/, returned as its absolute directory.
func (p *Provider) CreateVolume(ctx context.Context, snapshotID string, o volume.CreateOptions) (volume.Volume, error) {
	op := "create volume from " + snapshotID
	s, err := p.status(snapshotID)
	if err != nil {
		return volume.Volume{}, err
	}
	if s.State != volume.Completed {
		return volume.Volume{}, perr(op, fmt.Errorf("snapshot %s is %s, not completed", snapshotID, s.State))
	}
	var c cut
	if err := readJSON(filepath.Join(p.snapDir(snapshotID), "cut.json"), &c); err != nil {
		return volume.Volume{}, perr(op, err)
	}
	id := newID("vol-")
	dst := filepath.Join(p.root, "volumes", id)
	tmp := dst + ".creating"
	src := filepath.Join(p.snapDir(snapshotID), "data")
	var n atomic.Int64
	for _, d := range c.Dirs {
		if err := os.MkdirAll(filepath.Join(tmp, filepath.FromSlash(d)), 0o755); err != nil {
			return volume.Volume{}, perr(op, err)
		}
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return volume.Volume{}, perr(op, err)
	}
	for _, f := range c.Files {
		if err := ctx.Err(); err != nil {
			_ = os.RemoveAll(tmp)
			return volume.Volume{}, perr(op, err)
		}
		if err := copyPrefix(filepath.Join(src, filepath.FromSlash(f.Path)), filepath.Join(tmp, filepath.FromSlash(f.Path)), f.Size, &n); err != nil {
			_ = os.RemoveAll(tmp)
			return volume.Volume{}, perr(op, err)
		}
	}
	if err := syncTree(tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return volume.Volume{}, perr(op, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return volume.Volume{}, perr(op, err)
	}
	return volume.Volume{ID: dst, Type: c.Volume.Type, MountPath: c.Volume.MountPath}, nil
}

// Delete implements volume.Provider.
func (p *Provider) Delete(ctx context.Context, snapshotID string) error {
	if !validID(snapshotID, "snap-") {
		return nil
	}
	p.mu.Lock()
	cp, ok := p.copying[snapshotID]
	p.mu.Unlock()
	if ok {
		cp.cancel()
		<-cp.done
	}
	if err := os.RemoveAll(p.snapDir(snapshotID)); err != nil {
		return perr("delete "+snapshotID, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// syncTree fsyncs every directory under root (the files were synced as
// they were written), so the tree's names are durable.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}
