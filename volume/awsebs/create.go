package awsebs

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/pitr-io/pitr/volume"
)

// invisibleLooks is how many times in a row the wait for a new volume
// accepts InvalidVolume.NotFound: EC2 is eventually consistent, and a
// DescribeVolumes right after CreateVolume may not see the volume yet
// (EC2 API reference, "Eventual consistency").
const invisibleLooks = 5

// CreateVolume implements volume.Provider. The SDK fills CreateVolume's
// ClientToken, so a retried call makes one volume, not two.
func (p *Provider) CreateVolume(ctx context.Context, snapshotID string, o volume.CreateOptions) (volume.Volume, error) {
	op := "CreateVolume " + snapshotID
	if o.Zone == "" {
		return volume.Volume{}, failf(op, "no availability zone: EBS volumes live in one")
	}
	vt := o.Type
	if vt == "" {
		vt = DefaultVolumeType
	}
	in := &ec2.CreateVolumeInput{
		SnapshotId:        aws.String(snapshotID),
		AvailabilityZone:  aws.String(o.Zone),
		VolumeType:        types.VolumeType(vt),
		TagSpecifications: tagSpec(types.ResourceTypeVolume, o.Tags),
	}
	if o.IOPS > 0 {
		in.Iops = aws.Int32(o.IOPS)
	}
	if o.Throughput > 0 {
		in.Throughput = aws.Int32(o.Throughput)
	}
	out, err := p.ec2.CreateVolume(ctx, in)
	if err != nil {
		return volume.Volume{}, fail(op, err)
	}
	id := aws.ToString(out.VolumeId)
	if err := p.waitAvailable(ctx, op, id); err != nil {
		return volume.Volume{}, err
	}
	return volume.Volume{ID: id, Zone: aws.ToString(out.AvailabilityZone)}, nil
}

// waitAvailable polls DescribeVolumes until volume id is available.
func (p *Provider) waitAvailable(ctx context.Context, op, id string) error {
	t := time.NewTimer(0)
	defer t.Stop()
	unseen := 0
	for {
		select {
		case <-ctx.Done():
			return &volume.Error{Provider: Name, Op: op, Message: "waiting for volume " + id + " to be available: " + ctx.Err().Error(), Err: ctx.Err()}
		case <-t.C:
		}
		out, err := p.ec2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		switch {
		case err != nil && errorCode(err) == "InvalidVolume.NotFound" && unseen < invisibleLooks:
			unseen++
		case err != nil:
			return fail("DescribeVolumes "+id, err)
		case len(out.Volumes) == 0:
			return failf("DescribeVolumes "+id, "no such volume")
		default:
			unseen = 0
			switch s := out.Volumes[0].State; s {
			case types.VolumeStateAvailable:
				return nil
			case types.VolumeStateCreating:
			default:
				return failf(op, "volume %s is in state %s", id, s)
			}
		}
		t.Reset(p.poll)
	}
}
