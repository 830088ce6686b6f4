package restore

import (
	"bytes"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// overlapsClosed reports whether r meets the closed key interval [minKey,
// maxKey], the form a data file's key statistics take.
func overlapsClosed(r keyspace.Range, minKey, maxKey []byte) bool {
	return bytes.Compare(maxKey, r.Start) >= 0 && keyspace.BeforeEnd(minKey, r.End)
}

// taskRanges returns the task's ranges normalized: sorted, merged, and the
// whole key space when the task names none.
func taskRanges(task *pitrpb.TaskInfo) []keyspace.Range {
	var rs []keyspace.Range
	for _, r := range task.GetRanges() {
		rs = append(rs, keyspace.Range{Start: r.GetStartKey(), End: r.GetEndKey()})
	}
	return keyspace.Normalize(rs)
}
