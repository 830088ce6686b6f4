// Package task is a log backup task outside the elected loop: the etcd key
// layout shared by the CLI, the agents and the coordinators with small
// typed accessors, the lifecycle the CLI drives (StartTask, PauseTask,
// ResumeTask, StopTask: storage root, GC safepoint, record) and the views
// `pitr task status` reads (ReadViews: record, checkpoint and the elected
// coordinator's Status).
//
// Keys (in PD's etcd in production, the playground's embedded etcd in tests):
//
//	/pitr/v1/task/<name>          pitrpb.TaskRecord: info, storage URL, state, error
//	/pitr/v1/checkpoint/<name>    global checkpoint, 8-byte big-endian uint64;
//	                              written only by the elected coordinator (fenced)
//	/pitr/v1/agent/<store_id>     pitrpb.AgentRecord, under the agent's lease
//	/pitr/v1/election             coordinator election prefix (concurrency.Election)
//	/pitr/v1/status/<name>        JSON status the elected coordinator publishes
//	                              each tick (Status); fenced like
//	                              the checkpoint
//
// Task names match ^[0-9A-Za-z_-]{1,64}$ (BR's rule, plus '-').
package task

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	protobuf "google.golang.org/protobuf/proto"

	pitrpb "github.com/pitr-io/pitr/proto"
)

// Key prefixes.
const (
	Root             = "/pitr/v1/"
	TaskPrefix       = Root + "task/"
	CheckpointPrefix = Root + "checkpoint/"
	AgentPrefix      = Root + "agent/"
	ElectionPrefix   = Root + "election"
	StatusPrefix     = Root + "status/"
)

// Errors.
var (
	ErrNotFound    = errors.New("task not found")
	ErrInvalidName = errors.New("invalid task name")
	ErrFormat      = errors.New("unsupported record format")
)

var nameRE = regexp.MustCompile(`^[0-9A-Za-z_-]{1,64}$`)

// ValidateName checks a task name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w %q: use 1-64 letters, digits, '_' or '-'", ErrInvalidName, name)
	}
	return nil
}

// Key returns the task record key.
func Key(name string) string { return TaskPrefix + name }

// CheckpointKey returns the global checkpoint key of a task.
func CheckpointKey(name string) string { return CheckpointPrefix + name }

// StatusKey returns the key of the status the coordinator publishes for a
// task.
func StatusKey(name string) string { return StatusPrefix + name }

// AgentKey returns the registration key of the agent of a store.
func AgentKey(storeID uint64) string { return AgentPrefix + strconv.FormatUint(storeID, 10) }

// NameFromKey returns the task name of a task record key.
func NameFromKey(key string) (string, bool) {
	if !strings.HasPrefix(key, TaskPrefix) {
		return "", false
	}
	return strings.TrimPrefix(key, TaskPrefix), true
}

// DecodeRecord decodes a task record and checks its format version.
func DecodeRecord(b []byte) (*pitrpb.TaskRecord, error) {
	var r pitrpb.TaskRecord
	if err := protobuf.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode task record: %w", err)
	}
	if r.FormatVersion > uint32(pitrpb.FormatVersion_FORMAT_VERSION_V1) || r.Info == nil {
		return nil, fmt.Errorf("%w: task record version %d", ErrFormat, r.FormatVersion)
	}
	return &r, nil
}

// Get reads one task record and its etcd mod revision.
func Get(ctx context.Context, cli *clientv3.Client, name string) (*pitrpb.TaskRecord, int64, error) {
	resp, err := cli.Get(ctx, Key(name))
	if err != nil {
		return nil, 0, fmt.Errorf("get task %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("task %s: %w", name, ErrNotFound)
	}
	r, err := DecodeRecord(resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, err
	}
	return r, resp.Kvs[0].ModRevision, nil
}

// List reads every task record. It also returns the revision of the read, so
// a caller can Watch from revision+1 without missing a change.
func List(ctx context.Context, cli *clientv3.Client) ([]*pitrpb.TaskRecord, int64, error) {
	resp, err := cli.Get(ctx, TaskPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", err)
	}
	var out []*pitrpb.TaskRecord
	for _, kv := range resp.Kvs {
		r, err := DecodeRecord(kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, resp.Header.Revision, nil
}

// EncodeRecord marshals a task record, stamping the current format version.
func EncodeRecord(r *pitrpb.TaskRecord) ([]byte, error) {
	r.FormatVersion = uint32(pitrpb.FormatVersion_FORMAT_VERSION_V1)
	return protobuf.Marshal(r)
}

// EncodeTS encodes a timestamp as etcd values here store it.
func EncodeTS(ts uint64) []byte { return binary.BigEndian.AppendUint64(nil, ts) }

// DecodeTS decodes a timestamp value.
func DecodeTS(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: timestamp of %d bytes", ErrFormat, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// Checkpoint reads a task's global checkpoint; 0 with no error when none has
// been written yet.
func Checkpoint(ctx context.Context, cli *clientv3.Client, name string) (uint64, error) {
	resp, err := cli.Get(ctx, CheckpointKey(name))
	if err != nil {
		return 0, fmt.Errorf("get checkpoint of %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return DecodeTS(resp.Kvs[0].Value)
}

// ListAgents reads the registered agents, by store id.
func ListAgents(ctx context.Context, cli *clientv3.Client) ([]*pitrpb.AgentRecord, error) {
	resp, err := cli.Get(ctx, AgentPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	var out []*pitrpb.AgentRecord
	for _, kv := range resp.Kvs {
		r := &pitrpb.AgentRecord{}
		if err := protobuf.Unmarshal(kv.Value, r); err != nil {
			return nil, fmt.Errorf("decode agent %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetStoreId() < out[j].GetStoreId() })
	return out, nil
}
