package storagetest

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
)

// Pattern is a deterministic pseudo-random byte stream of a fixed size,
// generated on the fly (so a 1 GiB object never sits in memory) and
// seekable (so retried uploads can rewind it). Byte i depends only on the
// seed and i, so misplaced bytes are detected.
type Pattern struct {
	seed uint64
	size int64
	off  int64
}

// NewPattern returns a Pattern of size bytes.
func NewPattern(seed uint64, size int64) *Pattern {
	return &Pattern{seed: seed, size: size}
}

// Size returns the total length.
func (p *Pattern) Size() int64 { return p.size }

func (p *Pattern) word(i int64) uint64 {
	// splitmix64 of (seed, word index).
	z := p.seed + uint64(i+1)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (p *Pattern) byteAt(off int64) byte {
	return byte(p.word(off/8) >> (8 * uint(off%8)))
}

// ReadAt fills b with the bytes at off.
func (p *Pattern) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("pattern: negative offset")
	}
	if off >= p.size {
		return 0, io.EOF
	}
	var err error
	if rem := p.size - off; int64(len(b)) > rem {
		b = b[:rem]
		err = io.EOF
	}
	i := 0
	for i < len(b) && (off+int64(i))%8 != 0 {
		b[i] = p.byteAt(off + int64(i))
		i++
	}
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], p.word((off+int64(i))/8))
	}
	for ; i < len(b); i++ {
		b[i] = p.byteAt(off + int64(i))
	}
	return len(b), err
}

// Read implements io.Reader.
func (p *Pattern) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	n, _ := p.ReadAt(b, p.off)
	p.off += int64(n)
	return n, nil
}

// Seek implements io.Seeker.
func (p *Pattern) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += p.off
	case io.SeekEnd:
		offset += p.size
	default:
		return 0, errors.New("pattern: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("pattern: negative position")
	}
	p.off = offset
	return offset, nil
}

// Bytes returns the bytes [off, off+n) of the pattern.
func (p *Pattern) Bytes(off, n int64) []byte {
	b := make([]byte, n)
	m, _ := p.ReadAt(b, off)
	return b[:m]
}

// SHA256 returns the digest of the whole pattern.
func (p *Pattern) SHA256() [32]byte {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < p.size; {
		n, _ := p.ReadAt(buf, off)
		h.Write(buf[:n])
		off += int64(n)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}
