package logfile

import "errors"

var (
	// ErrCorrupt: the bytes are not a well-formed object of the expected
	// kind (truncated, bit-flipped, garbage). Never retry; refuse (I7).
	ErrCorrupt = errors.New("logfile: corrupt")
	// ErrFormat: a well-formed object of a format version this build does
	// not know (written by a newer pitr). Upgrade pitr to read it.
	ErrFormat = errors.New("logfile: unsupported format version")
)
