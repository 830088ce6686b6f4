package restore

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/keyspace"
)

func TestMeterLine(t *testing.T) {
	m := newMeter()
	m.setPhase("restore", 1000e6)
	m.done.Store(250e6)
	m.wrote(1, 1234, 200e6)
	m.wrote(2, 1, 1)
	m.phaseStart.Store(time.Now().Add(-10 * time.Second).UnixNano())
	l := m.line()
	for _, want := range []string{"restore", "[=====>", " 25%", "250.0 MB of 1.00 GB", "1235 rows / 200.0 MB written", "MB/s", "ETA 30s"} {
		require.Contains(t, l, want)
	}
	require.Equal(t, 2, m.regionCount())

	var buf bytes.Buffer // not a terminal: nothing until the 10 s tick, no \r
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m.draw(ctx, &buf)
	require.False(t, strings.Contains(buf.String(), "\r"))

	r := &Result{RestoreTS: keyspace.Compose(1, 0), Files: 3, FileBytes: 2e6, Rows: 10, Bytes: 5e6, Regions: 2, Duration: time.Second, UnitsSkipped: 1, Units: 3}
	require.Contains(t, r.Summary(), "10 rows, 5.0 MB of keys and values, from 3 files (2.0 MB) into 2 regions in 1s (5.0 MB/s); resumed: 1 of 4 key ranges were already done")
}
