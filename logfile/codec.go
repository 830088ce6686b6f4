package logfile

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// The small durable objects (meta, task.pb, pitr.lock, checkpoint/global)
// are protobuf messages of package pitrpb in the checksummed frame that
// doc.go specifies ("Small durable objects"). Encode stamps the version this
// build writes and frames the message; Decode checks the frame's CRC-32C
// before it looks at any field, then refuses garbage and damage
// (ErrCorrupt) and a newer version (ErrFormat). It still reads the
// unframed version 1. Encoding is deterministic, so equal messages give
// equal bytes.

// FormatVersion is the version of every small durable object this build
// writes: 2, the checksummed frame around a version 1 message.
const FormatVersion = uint32(pitrpb.FormatVersion_FORMAT_VERSION_V2)

// MetaFormatVersion is the version of the metas a flusher writes: 3, whose
// coverage is a chain (coverage.go). Other objects stay at FormatVersion.
const MetaFormatVersion = uint32(pitrpb.FormatVersion_FORMAT_VERSION_V3)

// CompactedFormatVersion is the version of a compacted meta that carries
// chain heads or supersedes compacted metas: 3. One with neither is
// written as FormatVersion, which earlier builds read.
const CompactedFormatVersion = uint32(pitrpb.FormatVersion_FORMAT_VERSION_V3)

// maxVersion is the newest version of an object kind this build reads.
func maxVersion(kind byte) uint32 {
	switch kind {
	case kindMeta:
		return MetaFormatVersion
	case kindCompacted:
		return CompactedFormatVersion
	}
	return FormatVersion
}

// legacyVersion is the unframed, unchecksummed version 1.
const legacyVersion = uint32(pitrpb.FormatVersion_FORMAT_VERSION_V1)

// Object kinds, field 2 of the frame (pitrpb.ObjectKind).
const (
	kindMeta       = byte(pitrpb.ObjectKind_OBJECT_KIND_META)
	kindTaskInfo   = byte(pitrpb.ObjectKind_OBJECT_KIND_TASK_INFO)
	kindLock       = byte(pitrpb.ObjectKind_OBJECT_KIND_LOCK)
	kindCheckpoint = byte(pitrpb.ObjectKind_OBJECT_KIND_GLOBAL_CHECKPOINT)
	kindSnapLock   = byte(pitrpb.ObjectKind_OBJECT_KIND_SNAPSHOT_LOCK)
	kindSnapRange  = byte(pitrpb.ObjectKind_OBJECT_KIND_SNAPSHOT_RANGE)
	kindBackupMeta = byte(pitrpb.ObjectKind_OBJECT_KIND_BACKUP_META)
	kindTruncation = byte(pitrpb.ObjectKind_OBJECT_KIND_TRUNCATION)
	kindCompacted  = byte(pitrpb.ObjectKind_OBJECT_KIND_COMPACTED_META)
	kindVolumeMeta = byte(pitrpb.ObjectKind_OBJECT_KIND_VOLUME_BACKUP_META)
	kindVolumeLock = byte(pitrpb.ObjectKind_OBJECT_KIND_VOLUME_BACKUP_LOCK)
)

// Frame field tags (field number << 3 | wire type) of pitrpb.Frame, as
// single bytes.
const (
	tagVersion = 1<<3 | byte(protowire.VarintType)
	tagKind    = 2<<3 | byte(protowire.VarintType)
	tagPayload = 3<<3 | byte(protowire.BytesType)
	tagCRC     = 4<<3 | byte(protowire.Fixed32Type)
	trailerLen = 5 // tagCRC and 4 bytes of CRC-32C
)

var marshal = proto.MarshalOptions{Deterministic: true}

type versioned interface {
	proto.Message
	GetFormatVersion() uint32
}

func encode[M versioned](kind byte, m M, stamp func(M)) ([]byte, error) {
	c := proto.Clone(m).(M)
	stamp(c)
	version := c.GetFormatVersion()
	payload, err := marshal.Marshal(c)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 4+protowire.SizeBytes(len(payload))+trailerLen)
	b = append(b, tagVersion, byte(version), tagKind, kind, tagPayload)
	b = protowire.AppendBytes(b, payload)
	b = append(b, tagCRC)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// unframe returns the message bytes of an object and the version they were
// written with, after the checks of doc.go's reader rules 1-3.
func unframe(what string, kind byte, b []byte) ([]byte, uint32, error) {
	if len(b) < 2 || b[0] != tagVersion || b[1] == 0 {
		return nil, 0, fmt.Errorf("%w: decode %s: not a pitr object (no format version)", ErrCorrupt, what)
	}
	if b[1] == byte(legacyVersion) {
		return b, legacyVersion, nil
	}
	n := len(b)
	if n < 2+trailerLen || b[n-trailerLen] != tagCRC {
		return nil, 0, fmt.Errorf("%w: decode %s: %d bytes without a checksum trailer", ErrCorrupt, what, n)
	}
	if got, want := crc32.Checksum(b[:n-4], castagnoli), binary.LittleEndian.Uint32(b[n-4:]); got != want {
		return nil, 0, fmt.Errorf("%w: decode %s: CRC-32C %08x, want %08x", ErrCorrupt, what, got, want)
	}
	v, vn := protowire.ConsumeVarint(b[1:])
	if vn < 0 || v > uint64(^uint32(0)) {
		return nil, 0, fmt.Errorf("%w: decode %s: bad format version", ErrCorrupt, what)
	}
	if uint32(v) > maxVersion(kind) {
		return nil, 0, fmt.Errorf("%w: %s version %d (this build reads up to %d)", ErrFormat, what, v, maxVersion(kind))
	}
	body := b[1+vn : n-trailerLen]
	if len(body) < 3 || body[0] != tagKind || body[1] != kind || body[2] != tagPayload {
		return nil, 0, fmt.Errorf("%w: decode %s: not a %s frame", ErrCorrupt, what, what)
	}
	payload, pn := protowire.ConsumeBytes(body[2+1:])
	if pn < 0 || 3+pn != len(body) {
		return nil, 0, fmt.Errorf("%w: decode %s: payload length does not match the object's size", ErrCorrupt, what)
	}
	return payload, uint32(v), nil
}

func decode[M versioned](what string, kind byte, b []byte, m M) (M, error) {
	payload, framed, err := unframe(what, kind, b)
	if err != nil {
		return m, err
	}
	if err := proto.Unmarshal(payload, m); err != nil {
		return m, fmt.Errorf("%w: decode %s: %v", ErrCorrupt, what, err)
	}
	if v := m.GetFormatVersion(); v != framed {
		return m, fmt.Errorf("%w: decode %s: message version %d in a version %d object", ErrCorrupt, what, v, framed)
	}
	// Version 1 writers knew every field this build knows (fields are only
	// ever added), so an unknown field in a version 1 object is damage: a
	// flipped tag, or a frame whose version was flipped to 1 (two bits),
	// whose kind, payload and trailer fields this message does not have.
	if framed == legacyVersion && hasUnknown(m.ProtoReflect()) {
		return m, fmt.Errorf("%w: decode %s: unknown fields in a version 1 object", ErrCorrupt, what)
	}
	return m, nil
}

// hasUnknown reports whether m or any message inside it has unknown fields.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len() && !found; i++ {
				found = hasUnknown(v.List().Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			found = hasUnknown(v.Message())
		}
		return !found
	})
	return found
}

// EncodeMeta returns the bytes of a meta file, stamped with
// MetaFormatVersion when m asks for it (Chain.Next does) or uses a field of
// format 3, else with FormatVersion. m itself is not modified.
func EncodeMeta(m *pitrpb.Meta) ([]byte, error) {
	v := FormatVersion
	if m.GetFormatVersion() >= MetaFormatVersion || hasChainFields(m) {
		v = MetaFormatVersion
	}
	if err := validateMeta(m, v); err != nil {
		return nil, fmt.Errorf("encode meta: %w", err)
	}
	return encode(kindMeta, m, func(c *pitrpb.Meta) { c.FormatVersion = v })
}

// DecodeMeta verifies and parses a meta file.
func DecodeMeta(b []byte) (*pitrpb.Meta, error) {
	m, err := decode("meta", kindMeta, b, &pitrpb.Meta{})
	if err != nil {
		return nil, err
	}
	if err := validateMeta(m, m.GetFormatVersion()); err != nil {
		return nil, fmt.Errorf("%w: decode meta: %v", ErrCorrupt, err)
	}
	return m, nil
}

// validateMeta checks m as a meta of format version v.
func validateMeta(m *pitrpb.Meta, v uint32) error {
	if err := validateFiles(m.GetFiles()); err != nil {
		return err
	}
	for _, r := range m.GetRegions() {
		if r.GetFromTs() > r.GetToTs() {
			return fmt.Errorf("region %d: from_ts %d > to_ts %d", r.GetRegionId(), r.GetFromTs(), r.GetToTs())
		}
	}
	if hasChainFields(m) && v < MetaFormatVersion {
		return fmt.Errorf("chain fields in a version %d meta", v)
	}
	return validateChainFields(m)
}

func validateFiles(files []*pitrpb.DataFile) error {
	for i, f := range files {
		switch {
		case f.GetPath() == "":
			return fmt.Errorf("file %d: empty path", i)
		case len(f.GetSha256()) != 32:
			return fmt.Errorf("file %s: sha256 of %d bytes", f.GetPath(), len(f.GetSha256()))
		case f.GetSize() < 0 || f.GetRows() < 0:
			return fmt.Errorf("file %s: negative size or rows", f.GetPath())
		case f.GetRows() > 0 && f.GetMinCommitTs() > f.GetMaxCommitTs():
			return fmt.Errorf("file %s: min_commit_ts > max_commit_ts", f.GetPath())
		}
	}
	return nil
}

// EncodeTaskInfo returns the bytes of task.pb.
func EncodeTaskInfo(m *pitrpb.TaskInfo) ([]byte, error) {
	return encode(kindTaskInfo, m, func(c *pitrpb.TaskInfo) { c.FormatVersion = FormatVersion })
}

// DecodeTaskInfo verifies and parses task.pb.
func DecodeTaskInfo(b []byte) (*pitrpb.TaskInfo, error) {
	return decode("task info", kindTaskInfo, b, &pitrpb.TaskInfo{})
}

// EncodeLock returns the bytes of pitr.lock.
func EncodeLock(m *pitrpb.Lock) ([]byte, error) {
	return encode(kindLock, m, func(c *pitrpb.Lock) { c.FormatVersion = FormatVersion })
}

// DecodeLock verifies and parses pitr.lock.
func DecodeLock(b []byte) (*pitrpb.Lock, error) {
	return decode("lock", kindLock, b, &pitrpb.Lock{})
}

// EncodeCheckpoint returns the bytes of checkpoint/global.
func EncodeCheckpoint(m *pitrpb.GlobalCheckpoint) ([]byte, error) {
	return encode(kindCheckpoint, m, func(c *pitrpb.GlobalCheckpoint) { c.FormatVersion = FormatVersion })
}

// DecodeCheckpoint verifies and parses checkpoint/global.
func DecodeCheckpoint(b []byte) (*pitrpb.GlobalCheckpoint, error) {
	return decode("global checkpoint", kindCheckpoint, b, &pitrpb.GlobalCheckpoint{})
}

// Snapshot backup objects (package snapshot) exist only as format version
// 2: a version 1 frame of them is refused like any other damage.

// EncodeSnapshotLock returns the bytes of a snapshot's backup.lock.
func EncodeSnapshotLock(m *pitrpb.SnapshotLock) ([]byte, error) {
	return encode(kindSnapLock, m, func(c *pitrpb.SnapshotLock) { c.FormatVersion = FormatVersion })
}

// DecodeSnapshotLock verifies and parses a snapshot's backup.lock.
func DecodeSnapshotLock(b []byte) (*pitrpb.SnapshotLock, error) {
	return decodeV2("snapshot lock", kindSnapLock, b, &pitrpb.SnapshotLock{})
}

// EncodeSnapshotRange returns the bytes of a finished snapshot range.
func EncodeSnapshotRange(m *pitrpb.SnapshotRange) ([]byte, error) {
	if err := validateFiles(m.GetFiles()); err != nil {
		return nil, fmt.Errorf("encode snapshot range: %w", err)
	}
	return encode(kindSnapRange, m, func(c *pitrpb.SnapshotRange) { c.FormatVersion = FormatVersion })
}

// DecodeSnapshotRange verifies and parses a finished snapshot range.
func DecodeSnapshotRange(b []byte) (*pitrpb.SnapshotRange, error) {
	m, err := decodeV2("snapshot range", kindSnapRange, b, &pitrpb.SnapshotRange{})
	if err == nil {
		if verr := validateFiles(m.GetFiles()); verr != nil {
			return nil, fmt.Errorf("%w: decode snapshot range: %v", ErrCorrupt, verr)
		}
	}
	return m, err
}

// EncodeBackupMeta returns the bytes of a snapshot's backupmeta.
func EncodeBackupMeta(m *pitrpb.BackupMeta) ([]byte, error) {
	return encodeListing("backupmeta", kindBackupMeta, m, func(c *pitrpb.BackupMeta) { c.FormatVersion = FormatVersion })
}

// DecodeBackupMeta verifies and parses a snapshot's backupmeta.
func DecodeBackupMeta(b []byte) (*pitrpb.BackupMeta, error) {
	return decodeListing("backupmeta", kindBackupMeta, b, &pitrpb.BackupMeta{})
}

// listing is an object of version 2 or later that lists data files.
type listing interface {
	versioned
	GetFiles() []*pitrpb.DataFile
}

// encodeListing is encode after the files' checks.
func encodeListing[M listing](what string, kind byte, m M, stamp func(M)) ([]byte, error) {
	if err := validateFiles(m.GetFiles()); err != nil {
		return nil, fmt.Errorf("encode %s: %w", what, err)
	}
	return encode(kind, m, stamp)
}

// decodeListing is decodeV2 and then the files' checks.
func decodeListing[M listing](what string, kind byte, b []byte, m M) (M, error) {
	m, err := decodeV2(what, kind, b, m)
	if err == nil {
		if verr := validateFiles(m.GetFiles()); verr != nil {
			var none M
			return none, fmt.Errorf("%w: decode %s: %v", ErrCorrupt, what, verr)
		}
	}
	return m, err
}

// EncodeTruncation returns the bytes of a task root's truncation record.
func EncodeTruncation(m *pitrpb.Truncation) ([]byte, error) {
	return encode(kindTruncation, m, func(c *pitrpb.Truncation) { c.FormatVersion = FormatVersion })
}

// DecodeTruncation verifies and parses a task root's truncation record.
func DecodeTruncation(b []byte) (*pitrpb.Truncation, error) {
	return decodeV2("truncation", kindTruncation, b, &pitrpb.Truncation{})
}

// EncodeCompactedMeta returns the bytes of a compacted meta.
func EncodeCompactedMeta(m *pitrpb.CompactedMeta) ([]byte, error) {
	return encodeListing("compacted meta", kindCompacted, m, func(c *pitrpb.CompactedMeta) {
		// A build that reads only version 2 would ignore the heads, and
		// read a superseded compacted meta as live: it is refused instead.
		c.FormatVersion = FormatVersion
		if len(c.GetHeads()) > 0 || slices.ContainsFunc(c.GetSupersedes(), IsCompactedMetaPath) {
			c.FormatVersion = CompactedFormatVersion
		}
	})
}

// DecodeCompactedMeta verifies and parses a compacted meta.
func DecodeCompactedMeta(b []byte) (*pitrpb.CompactedMeta, error) {
	return decodeListing("compacted meta", kindCompacted, b, &pitrpb.CompactedMeta{})
}

// decodeV2 is decode for objects that were never written as version 1.
func decodeV2[M versioned](what string, kind byte, b []byte, m M) (M, error) {
	if len(b) >= 2 && b[0] == tagVersion && b[1] == byte(legacyVersion) {
		return m, fmt.Errorf("%w: decode %s: version 1 frame (%s objects start at version 2)", ErrCorrupt, what, what)
	}
	return decode(what, kind, b, m)
}

// Volume backup objects (`pitr backup volume`) exist only as format
// version 2 or later.

// EncodeVolumeBackupMeta returns the bytes of a volume backup's
// volumebackupmeta.
func EncodeVolumeBackupMeta(m *pitrpb.VolumeBackupMeta) ([]byte, error) {
	return encode(kindVolumeMeta, m, func(c *pitrpb.VolumeBackupMeta) { c.FormatVersion = FormatVersion })
}

// DecodeVolumeBackupMeta verifies and parses a volume backup's
// volumebackupmeta.
func DecodeVolumeBackupMeta(b []byte) (*pitrpb.VolumeBackupMeta, error) {
	return decodeV2("volume backup meta", kindVolumeMeta, b, &pitrpb.VolumeBackupMeta{})
}

// EncodeVolumeBackupLock returns the bytes of a volume backup's
// backup.lock.
func EncodeVolumeBackupLock(m *pitrpb.VolumeBackupLock) ([]byte, error) {
	return encode(kindVolumeLock, m, func(c *pitrpb.VolumeBackupLock) { c.FormatVersion = FormatVersion })
}

// DecodeVolumeBackupLock verifies and parses a volume backup's
// backup.lock.
func DecodeVolumeBackupLock(b []byte) (*pitrpb.VolumeBackupLock, error) {
	return decodeV2("volume backup lock", kindVolumeLock, b, &pitrpb.VolumeBackupLock{})
}
