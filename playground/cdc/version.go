package cdc

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// ParseVersion checks a TiKV version ("7.1.0", "v7.1.0" or "7.1") and
// returns it as X.Y.Z.
func ParseVersion(v string) (string, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if strings.Count(v, ".") == 1 {
		v += ".0"
	}
	if _, ok := parseSemver(v); !ok {
		return "", fmt.Errorf("not a version (want X.Y.Z)")
	}
	return v, nil
}

// semver is a TiCDC version as TiKV's semver crate parses it (strict: three
// numeric parts without leading zeros, optional pre-release and build).
type semver struct {
	major, minor, patch uint64
	pre                 string
}

var semverRE = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)` +
	`(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$`)

// parseSemver parses v; anything invalid (including empty) is 0.0.0, as
// TiKV treats it.
func parseSemver(v string) (semver, bool) {
	m := semverRE.FindStringSubmatch(v)
	if m == nil {
		return semver{}, false
	}
	var out semver
	var err error
	for i, p := range []*uint64{&out.major, &out.minor, &out.patch} {
		if *p, err = strconv.ParseUint(m[i+1], 10, 64); err != nil {
			return semver{}, false
		}
	}
	out.pre = m[4]
	return out, true
}

// less orders versions by semver precedence: a pre-release sorts before
// its release (5.3.0-alpha < 5.3.0); pre-releases compare as strings,
// which is enough for the feature gates.
func (a semver) less(b semver) bool {
	if a.major != b.major {
		return a.major < b.major
	}
	if a.minor != b.minor {
		return a.minor < b.minor
	}
	if a.patch != b.patch {
		return a.patch < b.patch
	}
	switch {
	case a.pre == b.pre:
		return false
	case a.pre == "":
		return false
	case b.pre == "":
		return true
	}
	return a.pre < b.pre
}
