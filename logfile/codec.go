package logfile

import (
	"fmt"

	pitrpb "github.com/pitr-io/pitr/proto"
	"google.golang.org/protobuf/proto"
)

// The small durable objects (meta, task.pb, pitr.lock, checkpoint/global) are
// plain protobuf messages of package pitrpb, each with format_version = 1.
// Encode stamps the version this build writes; Decode refuses garbage
// (ErrCorrupt), a missing version (ErrCorrupt) and a newer version
// (ErrFormat). Encoding is deterministic, so equal messages give equal bytes.

// FormatVersion is the version of every durable object this build writes.
const FormatVersion = uint32(pitrpb.FormatVersion_FORMAT_VERSION_V1)

var marshal = proto.MarshalOptions{Deterministic: true}

type versioned interface {
	proto.Message
	GetFormatVersion() uint32
}

func encode[M versioned](m M, stamp func(M)) ([]byte, error) {
	c := proto.Clone(m).(M)
	stamp(c)
	return marshal.Marshal(c)
}

func decode[M versioned](what string, b []byte, m M) (M, error) {
	if err := proto.Unmarshal(b, m); err != nil {
		return m, fmt.Errorf("%w: decode %s: %v", ErrCorrupt, what, err)
	}
	switch v := m.GetFormatVersion(); {
	case v == 0:
		return m, fmt.Errorf("%w: decode %s: no format version", ErrCorrupt, what)
	case v > FormatVersion:
		return m, fmt.Errorf("%w: %s version %d (this build reads up to %d)", ErrFormat, what, v, FormatVersion)
	}
	return m, nil
}

// EncodeMeta returns the bytes of a meta file, stamped with FormatVersion.
// m itself is not modified.
func EncodeMeta(m *pitrpb.Meta) ([]byte, error) {
	if err := validateMeta(m); err != nil {
		return nil, fmt.Errorf("encode meta: %w", err)
	}
	return encode(m, func(c *pitrpb.Meta) { c.FormatVersion = FormatVersion })
}

// DecodeMeta parses and checks a meta file.
func DecodeMeta(b []byte) (*pitrpb.Meta, error) {
	m, err := decode("meta", b, &pitrpb.Meta{})
	if err != nil {
		return nil, err
	}
	if err := validateMeta(m); err != nil {
		return nil, fmt.Errorf("%w: decode meta: %v", ErrCorrupt, err)
	}
	return m, nil
}

func validateMeta(m *pitrpb.Meta) error {
	for i, f := range m.GetFiles() {
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
	for _, r := range m.GetRegions() {
		if r.GetFromTs() > r.GetToTs() {
			return fmt.Errorf("region %d: from_ts %d > to_ts %d", r.GetRegionId(), r.GetFromTs(), r.GetToTs())
		}
	}
	return nil
}

// EncodeTaskInfo returns the bytes of task.pb.
func EncodeTaskInfo(m *pitrpb.TaskInfo) ([]byte, error) {
	return encode(m, func(c *pitrpb.TaskInfo) { c.FormatVersion = FormatVersion })
}

// DecodeTaskInfo parses task.pb.
func DecodeTaskInfo(b []byte) (*pitrpb.TaskInfo, error) {
	return decode("task info", b, &pitrpb.TaskInfo{})
}

// EncodeLock returns the bytes of pitr.lock.
func EncodeLock(m *pitrpb.Lock) ([]byte, error) {
	return encode(m, func(c *pitrpb.Lock) { c.FormatVersion = FormatVersion })
}

// DecodeLock parses pitr.lock.
func DecodeLock(b []byte) (*pitrpb.Lock, error) {
	return decode("lock", b, &pitrpb.Lock{})
}

// EncodeCheckpoint returns the bytes of checkpoint/global.
func EncodeCheckpoint(m *pitrpb.GlobalCheckpoint) ([]byte, error) {
	return encode(m, func(c *pitrpb.GlobalCheckpoint) { c.FormatVersion = FormatVersion })
}

// DecodeCheckpoint parses checkpoint/global.
func DecodeCheckpoint(b []byte) (*pitrpb.GlobalCheckpoint, error) {
	return decode("global checkpoint", b, &pitrpb.GlobalCheckpoint{})
}
