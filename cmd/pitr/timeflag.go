package main

import (
	"fmt"
	"io"
	"time"
	_ "time/tzdata" // --tz names resolve on hosts and images without a zone database

	"github.com/spf13/pflag"

	"github.com/pitr-io/pitr/keyspace"
)

// tzFlag is --tz, the zone times without one are read in.
type tzFlag struct{ name string }

func (z *tzFlag) register(f *pflag.FlagSet) {
	f.StringVar(&z.name, "tz", "", `time zone of times given without one, e.g. "2026-12-01 21:00:00" (an IANA name like Europe/Berlin, or UTC; default the local zone)`)
}

func (z *tzFlag) location() (*time.Location, error) {
	if z.name == "" {
		return time.Local, nil
	}
	loc, err := time.LoadLocation(z.name)
	if err != nil {
		return nil, fmt.Errorf("--tz %q: not a time zone (want an IANA name like Europe/Berlin, or UTC)", z.name)
	}
	return loc, nil
}

// parseTS reads the timestamp flag name=value (a TSO, RFC 3339, now,
// now-5m, or a wall-clock time in --tz) and says on w which TSO it chose,
// in UTC and in the zone, so that a typo in a time never goes unseen.
func parseTS(w io.Writer, cmdPath, name, value string, z *tzFlag) (uint64, error) {
	loc, err := z.location()
	if err != nil {
		return 0, err
	}
	ts, err := keyspace.ParseIn(value, time.Now(), loc)
	if err != nil {
		return 0, fmt.Errorf("--%s: %v", name, err)
	}
	t := keyspace.Time(ts)
	fmt.Fprintf(w, "%s: --%s %s is TSO %d: %s UTC, %s\n", cmdPath, name, value, ts,
		t.Format("2006-01-02 15:04:05.000"), t.In(loc).Format("2006-01-02 15:04:05.000 MST"))
	return ts, nil
}
