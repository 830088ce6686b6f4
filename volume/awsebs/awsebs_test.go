package awsebs_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/volume"
	"github.com/pitr-io/pitr/volume/awsebs"
	"github.com/pitr-io/pitr/volume/awsebs/ec2test"
)

// TestMain keeps the developer's AWS setup out of the tests: no shared
// config or credentials files, no endpoint or profile from the
// environment.
func TestMain(m *testing.M) {
	for _, k := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"} {
		os.Unsetenv(k)
	}
	os.Setenv("AWS_CONFIG_FILE", os.DevNull)
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(m.Run())
}

var static = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
	return aws.Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secret", Source: "test"}, nil
})

const attempts = 4

// ctx bounds every call of a test, so that a wait that never ends fails
// the test instead of hanging it.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func newProvider(t *testing.T, srv *ec2test.Server, edit ...func(*awsebs.Config)) *awsebs.Provider {
	t.Helper()
	c := awsebs.Config{
		Region:       "us-east-1",
		Endpoint:     srv.URL,
		MaxAttempts:  attempts,
		MaxBackoff:   time.Millisecond,
		PollInterval: time.Millisecond,
		Credentials:  static,
	}
	for _, e := range edit {
		e(&c)
	}
	p, err := awsebs.New(ctx(t), c)
	require.NoError(t, err)
	return p
}

// store0 is instance i-0 in us-east-1a: root vol-root, the store's
// vol-data and vol-raft, and vol-other, not the store's.
func store0(srv *ec2test.Server) volume.Store {
	srv.AddInstance("i-0", "us-east-1a", 100, "vol-root", "vol-data", "vol-other", "vol-raft")
	return volume.Store{StoreID: 1, Instance: "i-0", Volumes: []volume.Volume{
		{ID: "vol-data", Type: "storage.data-dir", Zone: "us-east-1a"},
		{ID: "vol-raft", Type: "raft-engine.dir", Zone: "us-east-1a"},
	}}
}

func asError(t *testing.T, err error) *volume.Error {
	t.Helper()
	var ve *volume.Error
	require.ErrorAs(t, err, &ve)
	require.Equal(t, awsebs.Name, ve.Provider)
	require.NotContains(t, err.Error(), "\n", "errors are one line")
	return ve
}

// waitCompleted calls Status until every snapshot completes and returns
// the progress seen of each, call by call.
func waitCompleted(t *testing.T, p *awsebs.Provider, ids []string) ([]volume.Snapshot, [][]int) {
	t.Helper()
	var seen [][]int
	for range 20 {
		st, err := p.Status(ctx(t), ids)
		require.NoError(t, err)
		require.Len(t, st, len(ids))
		var prog []int
		done := true
		for i, s := range st {
			require.Equal(t, ids[i], s.ID, "Status keeps the order of ids")
			prog = append(prog, s.Progress)
			done = done && s.State != volume.Pending
		}
		seen = append(seen, prog)
		if done {
			return st, seen
		}
	}
	t.Fatal("snapshots still pending after 20 looks")
	return nil, nil
}

func TestSnapshotInstance(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{PendingLooks: 3})
	p := newProvider(t, srv)
	st := store0(srv)

	snaps, err := p.Snapshot(ctx(t), st, map[string]string{"pitr/backup": "b1", "pitr/store": "1"})
	require.NoError(t, err)
	require.Equal(t, 1, srv.Calls("CreateSnapshots"))
	require.Zero(t, srv.Calls("CreateSnapshot"))
	req := srv.Requests("CreateSnapshots")[0]
	require.Equal(t, "i-0", req.Get("InstanceSpecification.InstanceId"))
	require.Equal(t, "true", req.Get("InstanceSpecification.ExcludeBootVolume"))
	require.Equal(t, []string{"vol-other"}, listParam(req, "InstanceSpecification.ExcludeDataVolumeId"),
		"excludes the instance's other data volume, never the root")

	require.Len(t, snaps, 2)
	for i, s := range snaps {
		require.Equal(t, st.Volumes[i].ID, s.VolumeID)
		require.Equal(t, volume.Pending, s.State)
		on, ok := srv.Snapshot(s.ID)
		require.True(t, ok)
		require.Equal(t, s.VolumeID, on.VolumeID, "the snapshot is mapped to its own volume")
		require.Equal(t, map[string]string{"pitr/backup": "b1", "pitr/store": "1"}, on.Tags)
	}
	_, err = p.Status(ctx(t), []string{"snap-of-root"})
	require.ErrorIs(t, err, volume.ErrNotFound)

	ids := []string{snaps[0].ID, snaps[1].ID}
	final, seen := waitCompleted(t, p, ids)
	require.Len(t, seen, 4, "pending for 3 looks, completed at the 4th")
	for i := 1; i < len(seen); i++ {
		require.Greater(t, seen[i][0], seen[i-1][0], "progress rises")
	}
	for _, s := range final {
		require.Equal(t, volume.Completed, s.State)
		require.Equal(t, 100, s.Progress)
		require.Equal(t, int64(100)<<30, s.Bytes)
	}
	// The other order, to see Status does not hand back EC2's.
	rev, err := p.Status(ctx(t), []string{ids[1], ids[0]})
	require.NoError(t, err)
	require.Equal(t, ids[1], rev[0].ID)
	require.Equal(t, "vol-raft", rev[0].VolumeID)
}

func listParam(f url.Values, name string) []string {
	var l []string
	for i := 1; f.Has(fmt.Sprintf("%s.%d", name, i)); i++ {
		l = append(l, f.Get(fmt.Sprintf("%s.%d", name, i)))
	}
	return l
}

func TestSnapshotStoreOnRootVolume(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	p := newProvider(t, srv)
	srv.AddInstance("i-0", "us-east-1a", 8, "vol-root", "vol-other")
	snaps, err := p.Snapshot(ctx(t), volume.Store{StoreID: 1, Instance: "i-0",
		Volumes: []volume.Volume{{ID: "vol-root"}}}, nil)
	require.NoError(t, err)
	require.Len(t, snaps, 1)
	require.Equal(t, "vol-root", snaps[0].VolumeID)
	req := srv.Requests("CreateSnapshots")[0]
	require.Equal(t, "false", req.Get("InstanceSpecification.ExcludeBootVolume"))
	require.Equal(t, []string{"vol-other"}, listParam(req, "InstanceSpecification.ExcludeDataVolumeId"))
}

func TestSnapshotWithoutInstance(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	p := newProvider(t, srv)
	srv.AddVolume("vol-a", "us-east-1a", 10)
	srv.AddVolume("vol-b", "us-east-1a", 20)
	snaps, err := p.Snapshot(ctx(t), volume.Store{StoreID: 2, Volumes: []volume.Volume{{ID: "vol-a"}, {ID: "vol-b"}}},
		map[string]string{"k": "v"})
	require.NoError(t, err)
	require.Zero(t, srv.Calls("CreateSnapshots"))
	require.Equal(t, 2, srv.Calls("CreateSnapshot"))
	require.Len(t, snaps, 2)
	for i, v := range []string{"vol-a", "vol-b"} {
		require.Equal(t, v, snaps[i].VolumeID)
		on, _ := srv.Snapshot(snaps[i].ID)
		require.Equal(t, v, on.VolumeID)
		require.Equal(t, map[string]string{"k": "v"}, on.Tags)
	}
	require.Equal(t, int64(20)<<30, snaps[1].Bytes)
}

func TestSnapshotRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store volume.Store
		code  string
		want  string
	}{
		{"no volumes", volume.Store{StoreID: 1, Instance: "i-0"}, "", "store 1 has no volumes"},
		{"volume not attached", volume.Store{StoreID: 1, Instance: "i-0", Volumes: []volume.Volume{{ID: "vol-elsewhere"}}},
			"", "aws-ebs: CreateSnapshots i-0: volume vol-elsewhere is not attached to instance i-0"},
		{"unknown instance", volume.Store{StoreID: 1, Instance: "i-404", Volumes: []volume.Volume{{ID: "vol-data"}}},
			"InvalidInstanceID.NotFound", "aws-ebs: DescribeInstances i-404: InvalidInstanceID.NotFound: The instance ID 'i-404' does not exist."},
		{"unknown volume", volume.Store{StoreID: 1, Volumes: []volume.Volume{{ID: "vol-404"}}},
			"InvalidVolume.NotFound", "aws-ebs: CreateSnapshot vol-404: InvalidVolume.NotFound: The volume 'vol-404' does not exist."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := ec2test.New(t, ec2test.Options{})
			p := newProvider(t, srv)
			store0(srv)
			_, err := p.Snapshot(ctx(t), tc.store, nil)
			ve := asError(t, err)
			require.Equal(t, tc.code, ve.Code)
			require.Contains(t, err.Error(), tc.want)
			require.Zero(t, srv.Calls("CreateSnapshots"))
		})
	}
}

func TestSnapshotFailed(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{PendingLooks: 1})
	p := newProvider(t, srv)
	st := store0(srv)
	srv.FailNextSnapshot("vol-raft", "The snapshot could not be completed: internal error")
	snaps, err := p.Snapshot(ctx(t), st, nil)
	require.NoError(t, err)
	final, _ := waitCompleted(t, p, []string{snaps[0].ID, snaps[1].ID})
	require.Equal(t, volume.Completed, final[0].State)
	require.Equal(t, volume.Failed, final[1].State)
	require.Equal(t, "The snapshot could not be completed: internal error", final[1].Message)
}

func TestStatusUnknown(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	p := newProvider(t, srv)
	snaps, err := p.Snapshot(ctx(t), store0(srv), nil)
	require.NoError(t, err)
	_, err = p.Status(ctx(t), []string{snaps[0].ID, "snap-0000000000000dead"})
	require.ErrorIs(t, err, volume.ErrNotFound)
	ve := asError(t, err)
	require.Equal(t, "InvalidSnapshot.NotFound", ve.Code)
	require.False(t, ve.Retryable)
	require.Contains(t, err.Error(), "snap-0000000000000dead")
}

func TestStatusBatches(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	p := newProvider(t, srv)
	st := volume.Store{StoreID: 1}
	for i := range 1001 {
		id := fmt.Sprintf("vol-%04d", i)
		srv.AddVolume(id, "us-east-1a", 1)
		st.Volumes = append(st.Volumes, volume.Volume{ID: id})
	}
	snaps, err := p.Snapshot(ctx(t), st, nil)
	require.NoError(t, err)
	ids := make([]string, len(snaps))
	for i, s := range snaps {
		ids[i] = s.ID
	}
	got, err := p.Status(ctx(t), ids)
	require.NoError(t, err, "the server refuses more than 1000 ids in one call")
	require.Equal(t, 2, srv.Calls("DescribeSnapshots"))
	for i, s := range got {
		require.Equal(t, ids[i], s.ID)
		require.Equal(t, st.Volumes[i].ID, s.VolumeID)
	}
}

func TestCreateVolume(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{CreatingLooks: 3, InvisibleLooks: 2})
	p := newProvider(t, srv)
	snaps, err := p.Snapshot(ctx(t), store0(srv), nil)
	require.NoError(t, err)

	_, err = p.CreateVolume(ctx(t), snaps[0].ID, volume.CreateOptions{Zone: "us-east-1b"})
	ve := asError(t, err)
	require.Equal(t, "IncorrectState", ve.Code, "a pending snapshot cannot make a volume")

	waitCompleted(t, p, []string{snaps[0].ID})
	v, err := p.CreateVolume(ctx(t), snaps[0].ID, volume.CreateOptions{
		Zone: "us-east-1b", Type: "io2", IOPS: 4000, Throughput: 0,
		Tags: map[string]string{"pitr/restore": "r1"},
	})
	require.NoError(t, err)
	require.Equal(t, "us-east-1b", v.Zone)
	on, ok := srv.Volume(v.ID)
	require.True(t, ok)
	require.Equal(t, "available", on.State)
	require.Equal(t, snaps[0].ID, on.SnapshotID)
	require.Equal(t, "io2", on.Type)
	require.Equal(t, int32(4000), on.IOPS)
	require.Zero(t, on.Throughput)
	require.Equal(t, int32(100), on.SizeGiB)
	require.Equal(t, map[string]string{"pitr/restore": "r1"}, on.Tags)
	require.Equal(t, 2+3+1, srv.Calls("DescribeVolumes"), "unseen twice, creating three times, then available")
	req := srv.Requests("CreateVolume")[1]
	require.False(t, req.Has("Throughput"))
	require.NotEmpty(t, req.Get("ClientToken"))

	v2, err := p.CreateVolume(ctx(t), snaps[0].ID, volume.CreateOptions{Zone: "us-east-1a"})
	require.NoError(t, err)
	on, _ = srv.Volume(v2.ID)
	require.Equal(t, "gp3", on.Type, "the default type")
	require.Zero(t, on.IOPS)
	require.Nil(t, on.Tags)
}

func TestCreateVolumeRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*ec2test.Server)
		zone  string
		code  string
		want  string
	}{
		{"no zone", nil, "", "", "aws-ebs: CreateVolume snap-"},
		{"capacity", func(s *ec2test.Server) {
			s.FailCreateVolume("InsufficientVolumeCapacity", "There is not enough capacity to fulfill your EBS volume provision request.")
		}, "us-east-1a", "InsufficientVolumeCapacity", "InsufficientVolumeCapacity: There is not enough capacity"},
		{"volume in error", func(s *ec2test.Server) { s.FailNextVolume() }, "us-east-1a", "", "is in state error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := ec2test.New(t, ec2test.Options{})
			p := newProvider(t, srv)
			snaps, err := p.Snapshot(ctx(t), store0(srv), nil)
			require.NoError(t, err)
			waitCompleted(t, p, []string{snaps[0].ID})
			if tc.setup != nil {
				tc.setup(srv)
			}
			_, err = p.CreateVolume(ctx(t), snaps[0].ID, volume.CreateOptions{Zone: tc.zone})
			ve := asError(t, err)
			require.Equal(t, tc.code, ve.Code)
			require.False(t, ve.Retryable)
			require.Contains(t, err.Error(), tc.want)
			if tc.zone == "" {
				require.Zero(t, srv.Calls("CreateVolume"))
			}
		})
	}
}

func TestCreateVolumeHonoursContext(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{CreatingLooks: 1 << 30})
	p := newProvider(t, srv)
	snaps, err := p.Snapshot(ctx(t), store0(srv), nil)
	require.NoError(t, err)
	waitCompleted(t, p, []string{snaps[0].ID})
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = p.CreateVolume(short, snaps[0].ID, volume.CreateOptions{Zone: "us-east-1a"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	asError(t, err)
}

func TestDelete(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	p := newProvider(t, srv)
	snaps, err := p.Snapshot(ctx(t), store0(srv), nil)
	require.NoError(t, err)
	require.NoError(t, p.Delete(ctx(t), snaps[0].ID))
	_, ok := srv.Snapshot(snaps[0].ID)
	require.False(t, ok)
	require.NoError(t, p.Delete(ctx(t), snaps[0].ID), "deleting a missing snapshot is no error")
	require.Equal(t, 2, srv.Calls("DeleteSnapshot"))
	_, err = p.Status(ctx(t), []string{snaps[0].ID})
	require.ErrorIs(t, err, volume.ErrNotFound)

	srv.FailCalls("DeleteSnapshot", 1, http.StatusBadRequest, "InvalidSnapshot.InUse", "The snapshot is in use by ami-1")
	err = p.Delete(ctx(t), snaps[1].ID)
	require.Equal(t, "InvalidSnapshot.InUse", asError(t, err).Code)
}

func TestThrottling(t *testing.T) {
	for _, tc := range []struct {
		name      string
		action    string
		code      string
		times     int // < 0: for ever
		instance  bool
		wantCalls int
		wantErr   bool
	}{
		{"retried then success", "CreateSnapshots", "RequestLimitExceeded", attempts - 1, true, attempts, false},
		{"per-volume rate retried", "CreateSnapshot", "SnapshotCreationPerVolumeRateExceeded", 2, false, 3, false},
		{"describe retried", "DescribeInstances", "RequestLimitExceeded", 1, true, 2, false},
		{"never stops", "CreateSnapshots", "RequestLimitExceeded", -1, true, attempts, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := ec2test.New(t, ec2test.Options{})
			p := newProvider(t, srv)
			st := store0(srv)
			if !tc.instance {
				st.Instance = ""
				st.Volumes = st.Volumes[:1]
			}
			status := http.StatusServiceUnavailable
			if tc.code != "RequestLimitExceeded" {
				status = http.StatusBadRequest
			}
			srv.FailCalls(tc.action, tc.times, status, tc.code, "Request limit exceeded.")
			snaps, err := p.Snapshot(ctx(t), st, nil)
			require.Equal(t, tc.wantCalls, srv.Calls(tc.action), "attempts the server saw")
			if !tc.wantErr {
				require.NoError(t, err)
				require.Len(t, snaps, len(st.Volumes))
				return
			}
			ve := asError(t, err)
			require.Equal(t, tc.code, ve.Code)
			require.True(t, ve.Retryable)
			require.Equal(t, "CreateSnapshots i-0", ve.Op)
			require.True(t, strings.HasPrefix(err.Error(), "aws-ebs: CreateSnapshots i-0: RequestLimitExceeded: "), err.Error())
		})
	}
}

func TestUnsignedRequestRefused(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	resp, err := http.PostForm(srv.URL, url.Values{"Action": {"DescribeSnapshots"}, "Version": {ec2test.APIVersion}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	p := newProvider(t, srv, func(c *awsebs.Config) { c.Credentials = aws.AnonymousCredentials{} })
	_, err = p.Status(ctx(t), []string{"snap-1"})
	require.Equal(t, "AuthFailure", asError(t, err).Code)
}

func TestEndpointFromEnvironment(t *testing.T) {
	srv := ec2test.New(t, ec2test.Options{})
	t.Setenv("AWS_ENDPOINT_URL_EC2", srv.URL)
	p := newProvider(t, srv, func(c *awsebs.Config) { c.Endpoint = "" })
	_, err := p.Snapshot(ctx(t), store0(srv), nil)
	require.NoError(t, err)
	require.Equal(t, 1, srv.Calls("CreateSnapshots"))
}

func TestNoRegion(t *testing.T) {
	_, err := awsebs.New(ctx(t), awsebs.Config{Credentials: static})
	require.True(t, errors.As(err, new(*volume.Error)))
	require.Contains(t, err.Error(), "no region")
}
