package logfile

import (
	"bytes"
	"cmp"
	"errors"
	"strconv"
)

// Op is what a committed change did to its key. The numbers are persisted in
// the op column and never change.
type Op int32

const (
	OpPut    Op = 1
	OpDelete Op = 2
)

func (o Op) String() string {
	switch o {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Row is one committed change: one row of a data file.
type Row struct {
	Key      []byte // raw user key, as the change stream delivers it
	CommitTS uint64
	StartTS  uint64
	Op       Op
	Value    []byte // nil for deletes; empty (non-nil or nil) is a valid put value

	// OldValue is the value before the change when the change stream
	// delivered one (HasOldValue). Optional column.
	OldValue    []byte
	HasOldValue bool
}

// Compare orders rows as data files store them: key ascending, then
// commit_ts descending (newest version of a key first). Rows equal on
// (key, commit_ts) compare equal: they are duplicates (DESIGN I5).
func Compare(a, b *Row) int {
	if c := bytes.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return cmp.Compare(b.CommitTS, a.CommitTS)
}

// LogicalSize is the row's "logical" size: len(key)+len(value). Sums of it
// are DataFile.logical_bytes and the unit of the throughput figures.
func (r *Row) LogicalSize() int64 { return int64(len(r.Key) + len(r.Value)) }

// Clone returns a deep copy of r that stays valid after the iterator that
// produced r moves on.
func (r *Row) Clone() *Row {
	c := *r
	c.Key = bytes.Clone(r.Key)
	if r.Value != nil {
		c.Value = bytes.Clone(r.Value)
		if c.Value == nil {
			c.Value = []byte{}
		}
	}
	if r.OldValue != nil {
		c.OldValue = bytes.Clone(r.OldValue)
		if c.OldValue == nil {
			c.OldValue = []byte{}
		}
	}
	return &c
}

// Validate reports whether r can be stored: a known op, a value exactly
// for puts.
func (r *Row) Validate() error {
	switch r.Op {
	case OpPut:
	case OpDelete:
		if r.Value != nil {
			return errors.New("delete row with a value")
		}
	default:
		return errors.New("unknown op " + r.Op.String())
	}
	if r.CommitTS > maxTS || r.StartTS > maxTS {
		return errors.New("timestamp does not fit in INT64")
	}
	return nil
}

// maxTS is the largest timestamp the INT64 columns hold.
const maxTS = 1<<63 - 1
