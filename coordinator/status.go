package coordinator

import (
	"encoding/hex"
	"encoding/json"

	protobuf "google.golang.org/protobuf/proto"

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

// encodeRecord is task.EncodeRecord on a copy.
func encodeRecord(r *pitrpb.TaskRecord) ([]byte, error) {
	return task.EncodeRecord(protobuf.Clone(r).(*pitrpb.TaskRecord))
}

func cloneRecord(r *pitrpb.TaskRecord) *pitrpb.TaskRecord {
	return protobuf.Clone(r).(*pitrpb.TaskRecord)
}
