package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	"github.com/pitr-io/pitr/storage"
	"github.com/pitr-io/pitr/task"
)

// renderViews writes views as a readable table (several tasks) or a
// detailed block (one task with detail).
func renderViews(w io.Writer, views []task.TaskView, detail bool) error {
	if len(views) == 0 {
		_, err := fmt.Fprintln(w, "no tasks")
		return err
	}
	if !detail {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tCHECKPOINT\tCHECKPOINT TIME (UTC)\tLAG\tUNCOVERED\tSTORAGE")
		for _, v := range views {
			unc := "-"
			if v.Status != nil && v.State != "stopped" {
				unc = strconv.Itoa(v.Status.UncoveredRanges)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.Checkpoint,
				v.CheckpointTime.Format("2006-01-02 15:04:05.000"), lagString(v), unc, v.StorageURL)
		}
		return tw.Flush()
	}
	for i, v := range views {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := renderDetail(w, v); err != nil {
			return err
		}
	}
	return nil
}

func lagString(v task.TaskView) string {
	if v.State == "stopped" {
		return "-"
	}
	return (time.Duration(v.LagSeconds * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func renderDetail(w io.Writer, v task.TaskView) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Task:\t%s\n", v.Name)
	fmt.Fprintf(tw, "State:\t%s\n", v.State)
	if v.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", v.Error)
	}
	fmt.Fprintf(tw, "Storage:\t%s\n", v.StorageURL)
	if len(v.Ranges) == 0 {
		fmt.Fprintf(tw, "Ranges:\tall keys\n")
	}
	for i, r := range v.Ranges {
		label := ""
		if i == 0 {
			label = "Ranges:"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, r)
	}
	fmt.Fprintf(tw, "Start ts:\t%s\n", keyspace.Format(v.StartTS))
	fmt.Fprintf(tw, "Checkpoint:\t%s\n", keyspace.Format(v.Checkpoint))
	fmt.Fprintf(tw, "Lag:\t%s\n", lagString(v))
	if st := v.Status; st != nil && v.State != "stopped" {
		fmt.Fprintf(tw, "Coverage:\t%d regions, %d uncovered ranges, %d stale reports\n", st.Regions, st.UncoveredRanges, st.StaleReports)
		if st.Storage != nil {
			restorable := "nothing yet: no usable snapshot (pitr backup full)"
			if st.RestorableFrom != 0 {
				restorable = fmt.Sprintf("[%s, %s]", keyspace.Format(st.RestorableFrom), keyspace.Format(v.Checkpoint))
			}
			fmt.Fprintf(tw, "Restorable:\t%s\n", restorable)
			fmt.Fprintf(tw, "Storage used:\t%s in %d objects (measured %s)\n", storage.FormatBytes(st.Storage.Bytes), st.Storage.Objects,
				time.UnixMilli(st.Storage.MeasuredUnixMs).UTC().Format(time.RFC3339))
		}
		if st.SafePoint != 0 {
			fmt.Fprintf(tw, "GC safepoint:\t%s held at %d (TTL %s); cluster GC safepoint %d\n",
				task.SafePointID(v.Name), st.SafePoint, time.Duration(st.SafePointTTLSeconds)*time.Second, st.GCSafePoint)
		}
		if l := st.Locks; l != nil {
			fmt.Fprintf(tw, "Lock resolution:\t%s\n", lockLine(l))
		}
		fmt.Fprintf(tw, "Coordinator:\t%s (term %d), status %s old\n", st.Leader, st.Term,
			(time.Duration(v.StatusAgeSeconds * float64(time.Second))).Round(100*time.Millisecond))
		if st.LastError != "" {
			fmt.Fprintf(tw, "Last error:\t%s\n", st.LastError)
		}
	}
	for _, wn := range v.Warnings {
		fmt.Fprintf(tw, "Warning:\t%s\n", wn)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	st := v.Status
	if st == nil || v.State == "stopped" {
		return nil
	}
	if len(st.Slowest) > 0 {
		fmt.Fprintln(w, "\nSlowest:")
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CAUSE\tRANGE\tREGION\tSTORE\tCHECKPOINT\tREASON")
		for _, s := range st.Slowest {
			region, store, cp := "-", "-", "-"
			if s.RegionID != 0 {
				region, store, cp = strconv.FormatUint(s.RegionID, 10), strconv.FormatUint(s.StoreID, 10), strconv.FormatUint(s.Checkpoint, 10)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Cause, hexRange(s.StartKey, s.EndKey),
				region, store, cp, s.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(st.Agents) > 0 {
		fmt.Fprintln(w, "\nAgents:")
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  STORE\tADDR\tSTATE\tREGIONS\tERROR")
		for _, a := range st.Agents {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%d\t%s\n", a.StoreID, a.Addr, a.State, a.Regions, a.Error)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// lockLine describes a task's lock resolutions in one line.
func lockLine(l *task.LockStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d runs", l.Runs)
	if l.Errors > 0 {
		fmt.Fprintf(&b, " (%d failed)", l.Errors)
	}
	fmt.Fprintf(&b, ", %d locks found", l.Locks)
	if l.LastUnixMs == 0 {
		return b.String()
	}
	in := ""
	if l.LastRanges > 1 {
		in = fmt.Sprintf(" (%d lagging ranges)", l.LastRanges)
	}
	fmt.Fprintf(&b, "; last %s%s at %s, max_version %d: %d locks", hexRange(l.LastStartKey, l.LastEndKey),
		in, time.UnixMilli(l.LastUnixMs).UTC().Format(time.RFC3339), l.LastMaxVersion, l.LastLocks)
	if l.LastLiveMs > 0 {
		fmt.Fprintf(&b, ", live ones left (TTL ends in %s)", (time.Duration(l.LastLiveMs) * time.Millisecond).Round(100*time.Millisecond))
	}
	if l.LastError != "" {
		fmt.Fprintf(&b, ", error: %s", l.LastError)
	}
	return b.String()
}

// hexRange renders a range whose keys a status record holds in hex as
// keyspace.Range.String does; a key that is not hex (a record from a newer
// or broken writer) is shown as it is.
func hexRange(start, end string) string {
	s, err1 := hex.DecodeString(start)
	e, err2 := hex.DecodeString(end)
	if err1 != nil || err2 != nil {
		return "[" + start + ", " + end + ")"
	}
	return keyspace.Range{Start: s, End: e}.String()
}
