package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pitr-io/pitr/logfile"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// overlaySource serves data in place of the object at key.
type overlaySource struct {
	Source
	key  string
	data []byte
}

func (o *overlaySource) Get(ctx context.Context, key string) ([]byte, error) {
	if key == o.key {
		return append([]byte(nil), o.data...), nil
	}
	return o.Source.Get(ctx, key)
}

func (o *overlaySource) NewReader(ctx context.Context, key string) (io.ReadCloser, error) {
	if key == o.key {
		panic("overlaySource: stream read of the swept object")
	}
	return o.Source.NewReader(ctx, key)
}

// TestBitFlipSweep (audit F4, DESIGN I9): every single-bit flip of a real
// meta, of task.pb and of checkpoint/global is refused by Load (what
// restore and verify read first) as ErrCorrupt, or is harmless: it decodes
// to exactly the original content. No flip may change what a restore or a
// verify believes, in particular no flip may make the plan skip a file.
func TestBitFlipSweep(t *testing.T) {
	ctx := context.Background()
	b, cuts := smallBackup(t)
	base, err := Load(ctx, b.st)
	require.NoError(t, err)
	basePlan, err := NewPlan(PlanInput{Task: base.Task, Checkpoint: base.Checkpoint, Metas: base.Metas, Coverage: base.Coverage, RestoreTS: cuts[3]})
	require.NoError(t, err)

	metaPath := logfile.MetaPath(cuts[2], 1)
	for _, key := range []string{metaPath, logfile.TaskPath, logfile.CheckpointPath} {
		t.Run(key, func(t *testing.T) {
			orig, err := b.st.Get(ctx, key)
			require.NoError(t, err)
			var accepted, changed, dropped, otherErr int
			var first, firstOther string
			for bit := 0; bit < 8*len(orig); bit++ {
				data := append([]byte(nil), orig...)
				data[bit/8] ^= 1 << (bit % 8)
				src := &overlaySource{Source: b.st, key: key, data: data}
				got, err := Load(ctx, src)
				if err != nil {
					if !errors.Is(err, ErrCorrupt) {
						otherErr++
						if firstOther == "" {
							firstOther = fmt.Sprintf("bit %d: %v", bit, err)
						}
					}
					continue
				}
				accepted++
				if sameBackup(base, got) {
					continue
				}
				changed++
				msg := fmt.Sprintf("bit %d of %s flipped: loads with other content", bit, key)
				if _, verr := Verify(ctx, src, VerifyOptions{}); verr == nil {
					msg += ", Verify ok"
				}
				if p, perr := NewPlan(PlanInput{Task: got.Task, Checkpoint: got.Checkpoint, Metas: got.Metas, Coverage: got.Coverage, RestoreTS: cuts[3]}); perr == nil && len(p.Files) < len(basePlan.Files) {
					dropped++
					msg += fmt.Sprintf(", restore plan drops %d file(s)", len(basePlan.Files)-len(p.Files))
				}
				if first == "" {
					first = msg
				}
			}
			t.Logf("%s: %d bytes, %d of %d single-bit flips load, %d with other content, %d drop a file; %d refused as other than ErrCorrupt",
				key, len(orig), accepted, 8*len(orig), changed, dropped, otherErr)
			require.Zero(t, changed, "first: %s", first)
			require.Zero(t, otherErr, "first: %s", firstOther)
		})
	}
}

// sameBackup reports whether two loads of one root hold the same content.
func sameBackup(a, b *Backup) bool {
	if !proto.Equal(a.Lock, b.Lock) || !proto.Equal(a.Task, b.Task) || a.Checkpoint != b.Checkpoint || len(a.Metas) != len(b.Metas) {
		return false
	}
	for i := range a.Metas {
		if a.Metas[i].Path != b.Metas[i].Path || !proto.Equal(a.Metas[i].Meta, b.Metas[i].Meta) {
			return false
		}
	}
	return true
}

// reframe returns an encoded small object as a well-formed object of frame
// version v (logfile/doc.go): the version byte set, the CRC-32C restamped.
func reframe(b []byte, v byte) []byte {
	b = append([]byte(nil), b...)
	b[1] = v
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

// legacy returns a small object as format version 1 wrote it: the bare
// message, deterministically encoded, without a frame or checksum.
func legacy(t *testing.T, m proto.Message) []byte {
	t.Helper()
	c := proto.Clone(m)
	r := c.ProtoReflect()
	r.Set(r.Descriptor().Fields().ByName("format_version"), protoreflect.ValueOfUint32(1))
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	require.NoError(t, err)
	return b
}

// TestLegacyObjects: a backup written before checksums (format 1 metas,
// task.pb, pitr.lock, checkpoint/global) still loads to the same content
// and verifies, and verify says how many objects it could not check byte
// for byte. A meta under another meta's name is refused.
func TestLegacyObjects(t *testing.T) {
	ctx := context.Background()
	b, _ := smallBackupKF(t, 1) // full lists: a version 1 meta has no chain
	base, err := Load(ctx, b.st)
	require.NoError(t, err)
	res, err := Verify(ctx, b.st, VerifyOptions{})
	require.NoError(t, err)
	require.Zero(t, res.Unchecksummed)
	require.NotContains(t, res.Summary(), "predate")

	dir, st := b.copyTo(t)
	write := func(key string, data []byte) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.FromSlash(key)), data, 0o644))
	}
	write(logfile.LockPath, legacy(t, base.Lock))
	write(logfile.TaskPath, legacy(t, base.Task))
	write(logfile.CheckpointPath, legacy(t, &pitrpb.GlobalCheckpoint{Task: base.Task.GetName(), Ts: base.Checkpoint}))
	for _, m := range base.Metas {
		raw, err := b.st.Get(ctx, m.Path) // Load keeps no coverage in Metas
		require.NoError(t, err)
		full, err := logfile.DecodeMeta(raw)
		require.NoError(t, err)
		write(m.Path, legacy(t, full))
	}
	got, err := Load(ctx, st)
	require.NoError(t, err)
	require.Equal(t, base.Checkpoint, got.Checkpoint)
	require.Len(t, got.Metas, len(base.Metas))
	for i := range got.Metas {
		require.Equal(t, uint32(1), got.Metas[i].Meta.GetFormatVersion())
		got.Metas[i].Meta.FormatVersion = base.Metas[i].Meta.GetFormatVersion()
		require.True(t, proto.Equal(base.Metas[i].Meta, got.Metas[i].Meta), "meta %s", got.Metas[i].Path)
	}
	require.Equal(t, base.Coverage, got.Coverage)
	res, err = Verify(ctx, st, VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, 2+len(base.Metas), res.Unchecksummed)
	require.Contains(t, res.Summary(), fmt.Sprintf("; %d objects predate checksums (format 1)", 2+len(base.Metas)))

	// A meta copied under another flush's name.
	raw, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(base.Metas[0].Path)))
	require.NoError(t, err)
	write(base.Metas[1].Path, raw)
	_, err = Load(ctx, st)
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), base.Metas[1].Path+" holds the meta of store")
}
