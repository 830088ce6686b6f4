package coordinator

import (
	"encoding/hex"
	"encoding/json"

	pitrpb "github.com/pitr-io/pitr/proto"
	"github.com/pitr-io/pitr/task"
)

func slowStatuses(in []Slow) []task.SlowStatus {
	var out []task.SlowStatus
	for _, s := range in {
		out = append(out, task.SlowStatus{
			Cause: s.Cause.String(), StartKey: hex.EncodeToString(s.Range.Start), EndKey: hex.EncodeToString(s.Range.End),
			RegionID: s.RegionID, StoreID: s.StoreID, Checkpoint: s.Checkpoint, StartTS: s.StartTS, Reason: s.Reason,
		})
	}
	return out
}

// marshalStatus encodes a status record.
func marshalStatus(st *task.Status) ([]byte, error) {
	st.FormatVersion = task.StatusFormatVersion
	return json.Marshal(st)
}

// encodeCopy is task.EncodeRecord on a copy.
func encodeCopy(r *pitrpb.TaskRecord) ([]byte, error) { return task.EncodeRecord(task.CloneRecord(r)) }
