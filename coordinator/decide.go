package coordinator

import (
	"fmt"
	"time"

	"github.com/pitr-io/pitr/keyspace"
	pitrpb "github.com/pitr-io/pitr/proto"
)

// verdict is what one tick does with one task.
type verdict struct {
	// advance: poll the agents, compute and persist the checkpoint.
	advance bool
	// hold: keep the PD service safepoint at the checkpoint (TTL refreshed).
	hold bool
	// release: remove the PD service safepoint.
	release bool
	// fail: move the task to failed with this error.
	fail string
}

// decide is the per-task decision of a tick, from the task's state, its
// checkpoint, PD's GC safepoint (gcKnown false when it could not be read),
// when the state last changed, the time and the safepoint TTL.
//
//   - running: advance and hold, unless GC has run past the checkpoint;
//   - paused: hold without advancing, until it has been paused for longer
//     than the TTL: then it fails (an operator must look at it);
//   - failed: hold (I3: GC stays held while the task exists);
//   - stopped: release.
func decide(state pitrpb.TaskState, checkpoint, gcSafePoint uint64, gcKnown bool, changedAt, now time.Time, ttl time.Duration) verdict {
	gcPassed := func() string {
		if gcKnown && gcSafePoint > checkpoint {
			return fmt.Sprintf("GC safepoint %s is above the checkpoint %s: PD's GC may have removed versions the backup needs; stop this task and start a new one",
				keyspace.Format(gcSafePoint), keyspace.Format(checkpoint))
		}
		return ""
	}
	switch state {
	case pitrpb.TaskState_TASK_STATE_RUNNING:
		if msg := gcPassed(); msg != "" {
			return verdict{fail: msg}
		}
		return verdict{advance: true, hold: true}
	case pitrpb.TaskState_TASK_STATE_PAUSED:
		if msg := gcPassed(); msg != "" {
			return verdict{fail: msg}
		}
		if d := now.Sub(changedAt); !changedAt.IsZero() && d > ttl {
			return verdict{fail: fmt.Sprintf("paused for %s, longer than the GC safepoint TTL %s; resume it if the cluster's GC has not passed the checkpoint, or stop it",
				d.Round(time.Second), ttl)}
		}
		return verdict{hold: true}
	case pitrpb.TaskState_TASK_STATE_STOPPED:
		return verdict{release: true}
	default: // failed, or a state this build does not know: keep GC held
		return verdict{hold: true}
	}
}
