package awsebs

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/pitr-io/pitr/volume"
)

// describeSnapshotsBatch is how many ids one DescribeSnapshots names; EC2
// pages by MaxResults at up to 1000, and MaxResults cannot be given with
// SnapshotIds, so a batch stays within one page.
const describeSnapshotsBatch = 1000

// Snapshot implements volume.Provider. With st.Instance set it makes one
// CreateSnapshots call for the instance, so the store's volumes share one
// point in time; without, one CreateSnapshot per volume, each at its own.
// On error the snapshots already made are returned with it, for the
// caller to delete.
func (p *Provider) Snapshot(ctx context.Context, st volume.Store, tags map[string]string) ([]volume.Snapshot, error) {
	if len(st.Volumes) == 0 {
		return nil, failf("Snapshot", "store %d has no volumes", st.StoreID)
	}
	if st.Instance == "" {
		return p.snapshotEach(ctx, st, tags)
	}
	return p.snapshotInstance(ctx, st, tags)
}

func (p *Provider) snapshotInstance(ctx context.Context, st volume.Store, tags map[string]string) ([]volume.Snapshot, error) {
	op := "CreateSnapshots " + st.Instance
	want := map[string]bool{}
	for _, v := range st.Volumes {
		want[v.ID] = true
	}
	// DescribeInstances rather than DescribeVolumes: besides the attached
	// volumes it names the root device, and CreateSnapshots fails when the
	// root volume is among ExcludeDataVolumeIds (EC2 API reference,
	// InstanceSpecification); BR does the same (br/pkg/aws/ebs.go).
	out, err := p.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{st.Instance}})
	if err != nil {
		return nil, fail("DescribeInstances "+st.Instance, err)
	}
	if len(out.Reservations) == 0 || len(out.Reservations[0].Instances) == 0 {
		return nil, failf("DescribeInstances "+st.Instance, "no such instance")
	}
	inst := out.Reservations[0].Instances[0]
	root := aws.ToString(inst.RootDeviceName)
	attached := map[string]bool{}
	excludeBoot := true
	var exclude []string
	for _, m := range inst.BlockDeviceMappings {
		if m.Ebs == nil || m.Ebs.VolumeId == nil {
			continue
		}
		id := *m.Ebs.VolumeId
		attached[id] = true
		isRoot := aws.ToString(m.DeviceName) == root
		switch {
		case want[id] && isRoot:
			// A store on the root volume: snapshot it too.
			excludeBoot = false
		case !want[id] && !isRoot:
			exclude = append(exclude, id)
		}
	}
	for _, v := range st.Volumes {
		if !attached[v.ID] {
			return nil, failf(op, "volume %s is not attached to instance %s", v.ID, st.Instance)
		}
	}
	res, err := p.ec2.CreateSnapshots(ctx, &ec2.CreateSnapshotsInput{
		InstanceSpecification: &types.InstanceSpecification{
			InstanceId:           aws.String(st.Instance),
			ExcludeBootVolume:    aws.Bool(excludeBoot),
			ExcludeDataVolumeIds: exclude,
		},
		Description:       aws.String(fmt.Sprintf("pitr store %d", st.StoreID)),
		TagSpecifications: tagSpec(types.ResourceTypeSnapshot, tags),
	})
	if err != nil {
		return nil, fail(op, err)
	}
	byVolume := map[string]types.SnapshotInfo{}
	for _, s := range res.Snapshots {
		byVolume[aws.ToString(s.VolumeId)] = s
	}
	var snaps, missing []string
	result := make([]volume.Snapshot, 0, len(st.Volumes))
	for _, v := range st.Volumes {
		s, ok := byVolume[v.ID]
		if !ok {
			missing = append(missing, v.ID)
			continue
		}
		snaps = append(snaps, aws.ToString(s.SnapshotId))
		result = append(result, volume.Snapshot{
			ID:       aws.ToString(s.SnapshotId),
			VolumeID: v.ID,
			State:    state(string(s.State)),
			Progress: progress(aws.ToString(s.Progress)),
			Bytes:    gib(s.VolumeSize),
		})
	}
	if len(missing) > 0 {
		return result, failf(op, "no snapshot of volume %s (made %s)", strings.Join(missing, ", "), strings.Join(snaps, ", "))
	}
	return result, nil
}

func (p *Provider) snapshotEach(ctx context.Context, st volume.Store, tags map[string]string) ([]volume.Snapshot, error) {
	result := make([]volume.Snapshot, 0, len(st.Volumes))
	for _, v := range st.Volumes {
		s, err := p.ec2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{
			VolumeId:          aws.String(v.ID),
			Description:       aws.String(fmt.Sprintf("pitr store %d", st.StoreID)),
			TagSpecifications: tagSpec(types.ResourceTypeSnapshot, tags),
		})
		if err != nil {
			return result, fail("CreateSnapshot "+v.ID, err)
		}
		result = append(result, volume.Snapshot{
			ID:       aws.ToString(s.SnapshotId),
			VolumeID: v.ID,
			State:    state(string(s.State)),
			Progress: progress(aws.ToString(s.Progress)),
			Bytes:    gib(s.VolumeSize),
			Message:  aws.ToString(s.StateMessage),
		})
	}
	return result, nil
}

// Status implements volume.Provider.
func (p *Provider) Status(ctx context.Context, ids []string) ([]volume.Snapshot, error) {
	found := make(map[string]volume.Snapshot, len(ids))
	for start := 0; start < len(ids); start += describeSnapshotsBatch {
		batch := ids[start:min(start+describeSnapshotsBatch, len(ids))]
		out, err := p.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: batch})
		if err != nil {
			return nil, fail(describeOp(batch), err)
		}
		for _, s := range out.Snapshots {
			st := state(string(s.State))
			if st == "" {
				return nil, failf(describeOp(batch), "snapshot %s is in state %q", aws.ToString(s.SnapshotId), s.State)
			}
			found[aws.ToString(s.SnapshotId)] = volume.Snapshot{
				ID:       aws.ToString(s.SnapshotId),
				VolumeID: aws.ToString(s.VolumeId),
				State:    st,
				Progress: progress(aws.ToString(s.Progress)),
				Bytes:    gib(s.VolumeSize),
				Message:  aws.ToString(s.StateMessage),
			}
		}
	}
	result := make([]volume.Snapshot, 0, len(ids))
	for _, id := range ids {
		s, ok := found[id]
		if !ok {
			// EC2 answers an unknown id with InvalidSnapshot.NotFound; a
			// reply that just leaves it out means the same.
			return nil, &volume.Error{Provider: Name, Op: "DescribeSnapshots " + id, Message: "no such snapshot", Err: volume.ErrNotFound}
		}
		result = append(result, s)
	}
	return result, nil
}

func describeOp(batch []string) string {
	if len(batch) == 1 {
		return "DescribeSnapshots " + batch[0]
	}
	return fmt.Sprintf("DescribeSnapshots %s and %d more", batch[0], len(batch)-1)
}

// Delete implements volume.Provider.
func (p *Provider) Delete(ctx context.Context, snapshotID string) error {
	_, err := p.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(snapshotID)})
	if err != nil && errorCode(err) != "InvalidSnapshot.NotFound" {
		return fail("DeleteSnapshot "+snapshotID, err)
	}
	return nil
}

// state maps EC2's snapshot state; "" for one volume does not know (the
// recycle bin's recoverable/recovering).
func state(s string) volume.State {
	switch types.SnapshotState(s) {
	case types.SnapshotStatePending:
		return volume.Pending
	case types.SnapshotStateCompleted:
		return volume.Completed
	case types.SnapshotStateError:
		return volume.Failed
	}
	return ""
}

// progress parses EC2's "45%"; EC2 leaves it empty at the very start.
func progress(s string) int {
	f, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || f < 0 {
		return 0
	}
	return min(int(f), 100)
}

func gib(size *int32) int64 { return int64(aws.ToInt32(size)) << 30 }

// tagSpec is tags as one TagSpecification, keys sorted so that requests
// are reproducible.
func tagSpec(rt types.ResourceType, tags map[string]string) []types.TagSpecification {
	if len(tags) == 0 {
		return nil
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ts := make([]types.Tag, 0, len(keys))
	for _, k := range keys {
		ts = append(ts, types.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
	}
	return []types.TagSpecification{{ResourceType: rt, Tags: ts}}
}
