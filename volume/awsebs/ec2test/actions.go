package ec2test

import (
	"encoding/xml"
	"net/http"
	"net/url"
	"sort"
	"strconv"
)

type reservationXML struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []instanceXML `xml:"instancesSet>item"`
}

type instanceXML struct {
	InstanceID     string       `xml:"instanceId"`
	Zone           string       `xml:"placement>availabilityZone"`
	RootDeviceType string       `xml:"rootDeviceType"`
	RootDeviceName string       `xml:"rootDeviceName"`
	Devices        []mappingXML `xml:"blockDeviceMapping>item"`
}

type mappingXML struct {
	DeviceName string `xml:"deviceName"`
	VolumeID   string `xml:"ebs>volumeId"`
	Status     string `xml:"ebs>status"`
}

type describeInstancesResponse struct {
	XMLName xml.Name `xml:"DescribeInstancesResponse"`
	head
	Reservations []reservationXML `xml:"reservationSet>item"`
}

func (s *Server) describeInstances(f url.Values) (response, *apiError) {
	ids := list(f, "InstanceId")
	if len(ids) == 0 {
		return nil, missing("InstanceId.1")
	}
	r := &describeInstancesResponse{}
	for _, id := range ids {
		in, ok := s.instances[id]
		if !ok {
			return nil, notFound("InvalidInstanceID.NotFound", "instance ID", id)
		}
		x := instanceXML{InstanceID: id, Zone: in.zone, RootDeviceType: "ebs", RootDeviceName: in.root}
		for _, dev := range in.devices {
			x.Devices = append(x.Devices, mappingXML{dev, in.volumes[dev], "attached"})
		}
		r.Reservations = append(r.Reservations, reservationXML{"r-" + id[2:], owner, []instanceXML{x}})
	}
	return r, nil
}

type createSnapshotsResponse struct {
	XMLName xml.Name `xml:"CreateSnapshotsResponse"`
	head
	Snapshots []snapshotInfoXML `xml:"snapshotSet>item"`
}

func (s *Server) createSnapshots(f url.Values) (response, *apiError) {
	id := f.Get("InstanceSpecification.InstanceId")
	if id == "" {
		return nil, missing("InstanceSpecification.InstanceId")
	}
	in, ok := s.instances[id]
	if !ok {
		return nil, notFound("InvalidInstanceID.NotFound", "instance ID", id)
	}
	t, err := tags(f, "snapshot")
	if err != nil {
		return nil, err
	}
	excluded := map[string]bool{}
	for _, v := range list(f, "InstanceSpecification.ExcludeDataVolumeId") {
		vol, ok := s.volumes[v]
		switch {
		case !ok:
			return nil, notFound("InvalidVolume.NotFound", "volume", v)
		case vol.Instance != id:
			return nil, invalid("Volume %s is not attached to instance %s", v, id)
		case vol.Device == in.root:
			return nil, invalid("The root volume %s cannot be excluded through ExcludeDataVolumeIds; use ExcludeBootVolume", v)
		}
		excluded[v] = true
	}
	excludeBoot := f.Get("InstanceSpecification.ExcludeBootVolume") == "true"
	r := &createSnapshotsResponse{}
	// Last attached first: EC2 promises no order, and a client mapping
	// the set back by position instead of by VolumeId should fail.
	for i := len(in.devices) - 1; i >= 0; i-- {
		dev := in.devices[i]
		v := in.volumes[dev]
		if excluded[v] || excludeBoot && dev == in.root {
			continue
		}
		sn := s.snapshot(s.volumes[v], f.Get("Description"), t)
		r.Snapshots = append(r.Snapshots, snapshotInfoXML{
			SnapshotID: sn.ID, VolumeID: v, State: sn.State, StartTime: now(), Progress: "",
			OwnerID: owner, VolumeSize: sn.SizeGiB, Description: sn.Description, Tags: tagSet(sn.Tags),
		})
	}
	if len(r.Snapshots) == 0 {
		return nil, invalid("Instance %s has no volumes left to snapshot", id)
	}
	return r, nil
}

// snapshot starts a pending snapshot of v.
func (s *Server) snapshot(v *Volume, desc string, t map[string]string) *Snapshot {
	sn := &Snapshot{ID: s.id("snap"), VolumeID: v.ID, State: "pending", Description: desc, SizeGiB: v.SizeGiB, Tags: copyTags(t)}
	if msg, ok := s.failSnap[v.ID]; ok {
		sn.fail = msg
		delete(s.failSnap, v.ID)
	}
	s.snapshots[sn.ID] = sn
	return sn
}

type createSnapshotResponse struct {
	XMLName xml.Name `xml:"CreateSnapshotResponse"`
	head
	snapshotXML
}

func (s *Server) createSnapshot(f url.Values) (response, *apiError) {
	id := f.Get("VolumeId")
	if id == "" {
		return nil, missing("VolumeId")
	}
	v, ok := s.volumes[id]
	if !ok {
		return nil, notFound("InvalidVolume.NotFound", "volume", id)
	}
	t, err := tags(f, "snapshot")
	if err != nil {
		return nil, err
	}
	sn := s.snapshot(v, f.Get("Description"), t)
	return &createSnapshotResponse{snapshotXML: sn.xml()}, nil
}

type describeSnapshotsResponse struct {
	XMLName xml.Name `xml:"DescribeSnapshotsResponse"`
	head
	Snapshots []snapshotXML `xml:"snapshotSet>item"`
}

// describeSnapshots advances every pending snapshot it names by one look.
// Its reply is sorted by id, descending, so that a client relying on the
// order of its request fails (EC2 promises no order).
func (s *Server) describeSnapshots(f url.Values) (response, *apiError) {
	ids := list(f, "SnapshotId")
	if len(ids) > 1000 {
		return nil, invalid("The maximum number of snapshot IDs is 1000")
	}
	if len(ids) == 0 {
		for id := range s.snapshots {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		if _, ok := s.snapshots[id]; !ok {
			return nil, notFound("InvalidSnapshot.NotFound", "snapshot", id)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ids)))
	r := &describeSnapshotsResponse{}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		sn := s.snapshots[id]
		if sn.State == "pending" {
			sn.looks++
			switch {
			case sn.looks <= s.o.PendingLooks:
				sn.Progress = sn.looks * 100 / (s.o.PendingLooks + 1)
			case sn.fail != "":
				sn.State, sn.Message = "error", sn.fail
			default:
				sn.State, sn.Progress = "completed", 100
			}
		}
		r.Snapshots = append(r.Snapshots, sn.xml())
	}
	return r, nil
}

type deleteSnapshotResponse struct {
	XMLName xml.Name `xml:"DeleteSnapshotResponse"`
	head
	Return bool `xml:"return"`
}

func (s *Server) deleteSnapshot(f url.Values) (response, *apiError) {
	id := f.Get("SnapshotId")
	if id == "" {
		return nil, missing("SnapshotId")
	}
	if _, ok := s.snapshots[id]; !ok {
		return nil, notFound("InvalidSnapshot.NotFound", "snapshot", id)
	}
	delete(s.snapshots, id)
	return &deleteSnapshotResponse{Return: true}, nil
}

type createVolumeResponse struct {
	XMLName xml.Name `xml:"CreateVolumeResponse"`
	head
	volumeXML
}

func (s *Server) createVolume(f url.Values) (response, *apiError) {
	if e := s.failCreate; e != nil {
		s.failCreate = nil
		return nil, e
	}
	if tok := f.Get("ClientToken"); tok != "" {
		if id, ok := s.tokens[tok]; ok {
			return &createVolumeResponse{volumeXML: s.volumes[id].xml()}, nil
		}
	}
	zone := f.Get("AvailabilityZone")
	if zone == "" {
		return nil, missing("AvailabilityZone")
	}
	v := &Volume{ID: s.id("vol"), Zone: zone, State: "creating", Type: "gp2", SnapshotID: f.Get("SnapshotId")}
	if v.SnapshotID != "" {
		sn, ok := s.snapshots[v.SnapshotID]
		if !ok {
			return nil, notFound("InvalidSnapshot.NotFound", "snapshot", v.SnapshotID)
		}
		if sn.State != "completed" {
			return nil, &apiError{http.StatusBadRequest, "IncorrectState", "Snapshot is in invalid state - " + sn.State}
		}
		v.SizeGiB = sn.SizeGiB
	}
	if size := f.Get("Size"); size != "" {
		n, err := strconv.ParseInt(size, 10, 32)
		if err != nil || n <= 0 {
			return nil, invalid("Invalid Size %q", size)
		}
		v.SizeGiB = int32(n)
	}
	if v.SizeGiB == 0 {
		return nil, missing("Size")
	}
	if vt := f.Get("VolumeType"); vt != "" {
		switch vt {
		case "gp2", "gp3", "io1", "io2", "st1", "sc1", "standard":
			v.Type = vt
		default:
			return nil, invalid("Invalid VolumeType %q", vt)
		}
	}
	for name, p := range map[string]*int32{"Iops": &v.IOPS, "Throughput": &v.Throughput} {
		if x := f.Get(name); x != "" {
			n, err := strconv.ParseInt(x, 10, 32)
			if err != nil || n <= 0 {
				return nil, invalid("Invalid %s %q", name, x)
			}
			*p = int32(n)
		}
	}
	t, err := tags(f, "volume")
	if err != nil {
		return nil, err
	}
	v.Tags = t
	v.fail = s.failVolume
	s.failVolume = false
	v.looks = -s.o.InvisibleLooks
	s.volumes[v.ID] = v
	if tok := f.Get("ClientToken"); tok != "" {
		s.tokens[tok] = v.ID
	}
	return &createVolumeResponse{volumeXML: v.xml()}, nil
}

type describeVolumesResponse struct {
	XMLName xml.Name `xml:"DescribeVolumesResponse"`
	head
	Volumes []volumeXML `xml:"volumeSet>item"`
}

// describeVolumes advances every creating volume it names by one look.
// Filters are not supported: a request with one is refused, not answered
// wrongly.
func (s *Server) describeVolumes(f url.Values) (response, *apiError) {
	if f.Get("Filter.1.Name") != "" {
		return nil, invalid("ec2test: DescribeVolumes filters are not supported")
	}
	ids := list(f, "VolumeId")
	if len(ids) == 0 {
		for id := range s.volumes {
			ids = append(ids, id)
		}
		sort.Strings(ids)
	}
	for _, id := range ids {
		v, ok := s.volumes[id]
		if !ok || v.looks < 0 {
			if ok {
				v.looks++
			}
			return nil, notFound("InvalidVolume.NotFound", "volume", id)
		}
	}
	r := &describeVolumesResponse{}
	for _, id := range ids {
		v := s.volumes[id]
		if v.State == "creating" {
			v.looks++
			if v.looks > s.o.CreatingLooks {
				v.State = "available"
				if v.fail {
					v.State = "error"
				}
			}
		}
		r.Volumes = append(r.Volumes, v.xml())
	}
	return r, nil
}
