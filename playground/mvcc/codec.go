package mvcc

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record encodings of the WAL and checkpoint files; see doc.go.

var errCorrupt = errors.New("corrupt record")

const (
	opPut    byte = 1
	opDelete byte = 2
)

const (
	lockFlagAsync    byte = 1 << 0
	lockFlagHasShort byte = 1 << 1
)

const (
	writeFlagHasShort   byte = 1 << 0
	writeFlagOverlapped byte = 1 << 1
	writeFlagGCFence    byte = 1 << 2
)

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// appendMod encodes one mutation (old values are not persisted).
func appendMod(b []byte, m *Modify) []byte {
	op := opPut
	if m.Delete {
		op = opDelete
	}
	b = append(b, op, byte(m.CF))
	b = appendBytes(b, m.Key)
	b = binary.AppendUvarint(b, m.TS)
	if m.Delete {
		return b
	}
	switch m.CF {
	case CFLock:
		b = appendLock(b, m.Lock)
	case CFWrite:
		b = appendWrite(b, m.Write)
	case CFDefault:
		b = appendBytes(b, m.Value)
	}
	return b
}

func appendLock(b []byte, l *Lock) []byte {
	b = append(b, byte(l.Type))
	b = appendBytes(b, l.Primary)
	for _, u := range []uint64{l.StartTS, l.TTL, l.ForUpdateTS, l.MinCommitTS, l.TxnSize, l.TxnSource} {
		b = binary.AppendUvarint(b, u)
	}
	var flags byte
	if l.UseAsyncCommit {
		flags |= lockFlagAsync
	}
	if l.HasShortValue {
		flags |= lockFlagHasShort
	}
	b = append(b, flags)
	if l.HasShortValue {
		b = appendBytes(b, l.ShortValue)
	}
	b = binary.AppendUvarint(b, uint64(len(l.Secondaries)))
	for _, s := range l.Secondaries {
		b = appendBytes(b, s)
	}
	return b
}

func appendWrite(b []byte, w *Write) []byte {
	b = append(b, byte(w.Type))
	b = binary.AppendUvarint(b, w.StartTS)
	b = binary.AppendUvarint(b, w.TxnSource)
	var flags byte
	if w.HasShortValue {
		flags |= writeFlagHasShort
	}
	if w.OverlappedRollback {
		flags |= writeFlagOverlapped
	}
	if w.GCFence {
		flags |= writeFlagGCFence
	}
	b = append(b, flags)
	if w.HasShortValue {
		b = appendBytes(b, w.ShortValue)
	}
	return b
}

// decoder reads the encodings above; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if uint64(len(d.b)) < n {
		d.fail()
		return nil
	}
	v := make([]byte, n)
	copy(v, d.b[:n])
	d.b = d.b[n:]
	return v
}

func (d *decoder) mod() Modify {
	var m Modify
	op := d.byte()
	m.CF = CF(d.byte())
	m.Key = d.bytes()
	m.TS = d.uvarint()
	switch op {
	case opDelete:
		m.Delete = true
		return m
	case opPut:
	default:
		d.fail()
		return m
	}
	switch m.CF {
	case CFLock:
		m.Lock = d.lock()
		if m.Lock != nil {
			m.Lock.Key = m.Key
		}
	case CFWrite:
		m.Write = d.write()
	case CFDefault:
		m.Value = d.bytes()
	default:
		d.fail()
	}
	return m
}

func (d *decoder) lock() *Lock {
	l := &Lock{Type: LockType(d.byte())}
	l.Primary = d.bytes()
	l.StartTS = d.uvarint()
	l.TTL = d.uvarint()
	l.ForUpdateTS = d.uvarint()
	l.MinCommitTS = d.uvarint()
	l.TxnSize = d.uvarint()
	l.TxnSource = d.uvarint()
	flags := d.byte()
	l.UseAsyncCommit = flags&lockFlagAsync != 0
	if flags&lockFlagHasShort != 0 {
		l.HasShortValue = true
		l.ShortValue = d.bytes()
	}
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	for i := uint64(0); i < n; i++ {
		l.Secondaries = append(l.Secondaries, d.bytes())
	}
	switch l.Type {
	case LockPut, LockDelete, LockLock, LockPessimistic:
	default:
		d.fail()
	}
	return l
}

func (d *decoder) write() *Write {
	w := &Write{Type: WriteType(d.byte())}
	w.StartTS = d.uvarint()
	w.TxnSource = d.uvarint()
	flags := d.byte()
	w.OverlappedRollback = flags&writeFlagOverlapped != 0
	w.GCFence = flags&writeFlagGCFence != 0
	if flags&writeFlagHasShort != 0 {
		w.HasShortValue = true
		w.ShortValue = d.bytes()
	}
	switch w.Type {
	case WritePut, WriteDelete, WriteLock, WriteRollback:
	default:
		d.fail()
	}
	return w
}

// encodeBatch encodes a batch payload: uvarint count, then the mutations.
func encodeBatch(b []byte, mods []Modify) []byte {
	b = binary.AppendUvarint(b, uint64(len(mods)))
	for i := range mods {
		b = appendMod(b, &mods[i])
	}
	return b
}

func decodeBatch(p []byte) ([]Modify, error) {
	d := &decoder{b: p}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(p)) {
		return nil, fmt.Errorf("batch header: %w", errCorrupt)
	}
	mods := make([]Modify, 0, n)
	for i := uint64(0); i < n; i++ {
		m := d.mod()
		if d.err != nil {
			return nil, fmt.Errorf("mutation %d: %w", i, d.err)
		}
		mods = append(mods, m)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("batch trailer: %w", errCorrupt)
	}
	return mods, nil
}
