package storage

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxKeyLen is the longest key (in bytes, prefix included) we accept; the
// tightest backend limit is S3's 1024.
const MaxKeyLen = 1024

// MaxSegmentLen is the longest segment between slashes: the file backend
// stores segments as file names (NAME_MAX).
const MaxSegmentLen = 255

// ValidateKey checks key against the rules every backend can store
// verbatim, so that an object has the same name on every backend (and for
// other tools reading the bucket) and List's lexical order holds everywhere:
//
//   - non-empty valid UTF-8, at most MaxKeyLen bytes;
//   - "/"-separated segments of at most MaxSegmentLen bytes, none empty,
//     "." or ".." (so no leading, trailing or doubled "/");
//   - no control characters and none of `\ " # % ?` (Azure and the file
//     system need them escaped), and no "__0x" (the escape marker of the
//     gocloud drivers);
//   - a first segment of ".pitr-tmp" is reserved for the file backend.
//
// Letters in any script, digits, spaces and `!$&'()*+,-.:;<=>@[]^_{|}~` are
// fine.
func ValidateKey(key string) error {
	if err := checkKey(key, false); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return nil
}

// checkKey implements ValidateKey; a prefix may be empty and may end in
// "/" or in a partial segment.
func checkKey(key string, prefix bool) error {
	if key == "" {
		if prefix {
			return nil
		}
		return fmt.Errorf("empty key")
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("key longer than %d bytes", MaxKeyLen)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("key %q is not valid UTF-8", key)
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(`\"#%?`, r) {
			return fmt.Errorf("key %q contains %q", key, r)
		}
	}
	if strings.Contains(key, "__0x") {
		return fmt.Errorf("key %q contains the reserved sequence \"__0x\"", key)
	}
	segs := strings.Split(key, "/")
	for i, s := range segs {
		last := i == len(segs)-1
		if prefix && last {
			// "a/b/" (empty last) and "a/b/c" (partial segment) are fine;
			// a partial "." or ".." can only be a prefix of longer names.
			continue
		}
		if len(s) > MaxSegmentLen {
			return fmt.Errorf("key %q has a segment longer than %d bytes", key, MaxSegmentLen)
		}
		switch s {
		case "":
			return fmt.Errorf("key %q has an empty segment", key)
		case ".", "..":
			return fmt.Errorf("key %q has a %q segment", key, s)
		}
	}
	if segs[0] == fileTmpDir && (len(segs) > 1 || !prefix) {
		return fmt.Errorf("key %q uses the reserved name %s", key, fileTmpDir)
	}
	return nil
}
