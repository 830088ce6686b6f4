// Package volume is the provider interface of volume-snapshot backups
// (DESIGN.md §12): crash-consistent snapshots of every TiKV store's data
// volumes, taken while the stores run, and new volumes made from them.
//
// A provider knows nothing of TiKV: `pitr backup volume` pauses PD's
// scheduling and GC around Snapshot, and `pitr restore volume` runs the
// recovery protocol on stores started on volumes CreateVolume made. The
// providers are local (package volume/local: directories on this host, the
// playground's store directories) and aws-ebs (package volume/awsebs: EC2
// snapshots of EBS volumes).
//
// volume imports nothing of ours.
package volume

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// State is a snapshot's or a volume's state, as the provider reports it.
type State string

const (
	// Pending: the snapshot's point in time is fixed, its data is still
	// being copied (EC2 "pending"; a volume being created: "creating").
	Pending State = "pending"
	// Completed: the snapshot (or volume) can be used (EC2 "completed";
	// a volume: "available").
	Completed State = "completed"
	// Failed: the provider gave up on it (EC2 "error"); Message says why.
	Failed State = "error"
)

// Volume is one data volume of one store, named as BR's volume file names
// it (br/pkg/config/ebs.go EBSVolume; the file TiDB Operator hands to BR).
type Volume struct {
	// ID is the provider's id: an EBS volume id (vol-...), or for local
	// an absolute directory.
	ID string `json:"volume_id"`
	// Type is what the store keeps on it: "storage.data-dir" (the KV
	// engine) or "raft-engine.dir" (the raft log), as in TiKV's config.
	Type string `json:"type"`
	// MountPath is where the store sees it (informational).
	MountPath string `json:"mount_path,omitempty"`
	// Zone is the availability zone (EBS); "" for local.
	Zone string `json:"volume_az,omitempty"`
}

// Store is the volumes of one TiKV store, snapshotted together.
type Store struct {
	StoreID uint64 `json:"store_id"`
	// Instance is the host the volumes are attached to (an EC2 instance
	// id); aws-ebs snapshots all of them in one crash-consistent
	// CreateSnapshots call. "" for local.
	Instance string   `json:"instance_id,omitempty"`
	Volumes  []Volume `json:"volumes"`
}

// Snapshot is one volume's snapshot.
type Snapshot struct {
	ID       string `json:"snapshot_id"`
	VolumeID string `json:"volume_id"`
	State    State  `json:"state"`
	// Progress is the percentage copied, 0–100.
	Progress int `json:"progress"`
	// Bytes is the volume's (or the copied data's) size when known.
	Bytes int64 `json:"bytes,omitempty"`
	// Message is the provider's reason when State is Failed.
	Message string `json:"message,omitempty"`
}

// CreateOptions shape a volume made from a snapshot.
type CreateOptions struct {
	// Zone: the availability zone (aws-ebs requires one; BR restores
	// each volume in the zone of the volume it was taken from).
	Zone string
	// Type: the provider's volume type (aws-ebs: gp3, io1, io2; "" the
	// provider's default).
	Type string
	// IOPS and Throughput (MiB/s) for the types that take them; 0: the
	// provider's default.
	IOPS       int32
	Throughput int32
	Tags       map[string]string
}

// Provider takes and restores volume snapshots.
type Provider interface {
	// Name is the provider's name as --provider spells it.
	Name() string
	// Snapshot starts one crash-consistent snapshot of every volume of
	// st, together. The snapshots' point in time is fixed when it
	// returns; their data may still be copied after (State Pending),
	// as EBS does. It never pauses or flushes the store. Tags are set on
	// every snapshot.
	Snapshot(ctx context.Context, st Store, tags map[string]string) ([]Snapshot, error)
	// Status reports the snapshots named, in the same order. An unknown
	// id is an error wrapping ErrNotFound.
	Status(ctx context.Context, ids []string) ([]Snapshot, error)
	// CreateVolume makes a new volume from a completed snapshot and
	// returns once the volume can be attached (EC2 "available").
	CreateVolume(ctx context.Context, snapshotID string, o CreateOptions) (Volume, error)
	// Delete deletes a snapshot. Deleting one that does not exist is not
	// an error.
	Delete(ctx context.Context, snapshotID string) error
}

// ErrNotFound: the provider has no snapshot or volume of that id.
var ErrNotFound = errors.New("not found")

// Error is a provider's failure, in one line: the provider, the operation,
// the provider's own code when it has one, and its message.
type Error struct {
	Provider string
	Op       string // e.g. "CreateSnapshots i-0abc"
	Code     string // e.g. EC2's "RequestLimitExceeded"; "" if none
	Message  string
	// Retryable: the provider reported throttling or a transient fault
	// (after its own retries ran out).
	Retryable bool
	Err       error // the underlying error, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.Provider, e.Op)
	if e.Code != "" {
		fmt.Fprintf(&b, ": %s", e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", oneLine(e.Message))
	} else if e.Err != nil {
		fmt.Fprintf(&b, ": %s", oneLine(e.Err.Error()))
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
