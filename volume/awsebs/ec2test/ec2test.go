// Package ec2test is an EC2 endpoint for tests: an HTTP server on loopback
// speaking the EC2 Query protocol (API version 2016-11-15) for the calls
// the aws-ebs provider makes, with instances, volumes and snapshots kept in
// memory, and faults a test can inject.
//
// The protocol is the documented one (EC2 API reference, "Query
// requests", "Error codes"): a form-encoded POST of Action, Version and
// the parameters, lists flattened as Name.1, Name.2 and structures as
// Name.1.Field; an XML reply in the 2016-11-15 namespace with a requestId;
// errors as <Response><Errors><Error> with Code and Message and a
// RequestID, HTTP 400 for client errors, 401 for AuthFailure and 503 for
// RequestLimitExceeded, as EC2 sends them.
//
// It checks what a real endpoint would reject: a request without a SigV4
// Authorization header, a wrong Version, a missing required parameter, an
// unknown id, the root volume among ExcludeDataVolumeIds, a volume from a
// snapshot that is not completed.
//
// Snapshots stay pending for Options.PendingLooks DescribeSnapshots calls
// that name them, their progress rising, then complete; volumes stay
// creating for Options.CreatingLooks DescribeVolumes calls. Faults:
// Throttle (or any error: FailCalls), FailNextSnapshot, FailCreateVolume,
// FailNextVolume.
//
// Only tests import ec2test.
package ec2test

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// APIVersion is the only Version the server accepts.
const APIVersion = "2016-11-15"

const xmlns = "http://ec2.amazonaws.com/doc/" + APIVersion + "/"

// Options shape a server's timing.
type Options struct {
	// PendingLooks: how many DescribeSnapshots calls naming a snapshot
	// see it pending before it completes (0: completed at the first).
	PendingLooks int
	// CreatingLooks: the same for a new volume and DescribeVolumes.
	CreatingLooks int
	// InvisibleLooks: how many DescribeVolumes calls answer
	// InvalidVolume.NotFound for a new volume, as EC2's eventual
	// consistency may.
	InvisibleLooks int
}

// Volume is an EBS volume as the server keeps it.
type Volume struct {
	ID, Zone, State, SnapshotID, Type string
	SizeGiB, IOPS, Throughput         int32
	// Instance and Device: the attachment, "" when detached.
	Instance, Device string
	Tags             map[string]string
	looks            int
	fail             bool
}

// Snapshot is an EBS snapshot as the server keeps it.
type Snapshot struct {
	ID, VolumeID, State, Message, Description string
	SizeGiB                                   int32
	Progress                                  int
	Tags                                      map[string]string
	looks                                     int
	fail                                      string
}

type instance struct {
	id, zone, root string
	devices        []string // device names, in attachment order
	volumes        map[string]string
}

type fault struct {
	n   int
	err apiError
}

type apiError struct {
	status        int
	code, message string
}

// Server is a running EC2 test endpoint.
type Server struct {
	// URL is the endpoint, for the provider's Config.Endpoint.
	URL string
	o   Options
	srv *httptest.Server

	mu         sync.Mutex
	next       int
	instances  map[string]*instance
	volumes    map[string]*Volume
	snapshots  map[string]*Snapshot
	tokens     map[string]string
	calls      map[string]int
	requests   map[string][]url.Values
	faults     map[string]fault
	failSnap   map[string]string
	failCreate *apiError
	failVolume bool
}

// New starts a server on 127.0.0.1, closed when the test ends.
func New(t testing.TB, o Options) *Server {
	s := &Server{
		o:         o,
		instances: map[string]*instance{},
		volumes:   map[string]*Volume{},
		snapshots: map[string]*Snapshot{},
		tokens:    map[string]string{},
		calls:     map[string]int{},
		requests:  map[string][]url.Values{},
		faults:    map[string]fault{},
		failSnap:  map[string]string{},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.srv.Close)
	return s
}

// AddInstance makes an instance in zone with root as its root volume
// (/dev/xvda) and data volumes attached as /dev/sdf, /dev/sdg, ...; every
// volume is sizeGiB large and available.
func (s *Server) AddInstance(id, zone string, sizeGiB int32, root string, data ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := &instance{id: id, zone: zone, root: "/dev/xvda", volumes: map[string]string{}}
	for i, v := range append([]string{root}, data...) {
		dev := "/dev/xvda"
		if i > 0 {
			dev = "/dev/sd" + string(rune('f'+i-1))
		}
		in.devices = append(in.devices, dev)
		in.volumes[dev] = v
		s.volumes[v] = &Volume{ID: v, Zone: zone, State: "in-use", Type: "gp3", SizeGiB: sizeGiB, Instance: id, Device: dev}
	}
	s.instances[id] = in
}

// AddVolume makes a detached, available volume.
func (s *Server) AddVolume(id, zone string, sizeGiB int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.volumes[id] = &Volume{ID: id, Zone: zone, State: "available", Type: "gp3", SizeGiB: sizeGiB}
}

// Throttle answers the next n calls of action with RequestLimitExceeded
// and HTTP 503, as EC2 throttles; n < 0: every call from now on.
func (s *Server) Throttle(action string, n int) {
	s.FailCalls(action, n, http.StatusServiceUnavailable, "RequestLimitExceeded", "Request limit exceeded.")
}

// FailCalls answers the next n calls of action with an error of status,
// code and message; n < 0: every call from now on.
func (s *Server) FailCalls(action string, n, status int, code, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[action] = fault{n, apiError{status, code, message}}
}

// FailNextSnapshot makes the next snapshot of volume end in state error
// with message as its StateMessage.
func (s *Server) FailNextSnapshot(volumeID, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failSnap[volumeID] = message
}

// FailCreateVolume answers the next CreateVolume with an HTTP 400 error
// of code and message.
func (s *Server) FailCreateVolume(code, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failCreate = &apiError{http.StatusBadRequest, code, message}
}

// FailNextVolume makes the next volume created end in state error.
func (s *Server) FailNextVolume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failVolume = true
}

// Calls is how many requests of action arrived, throttled ones included.
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// Requests are the parameters of every request of action, in order.
func (s *Server) Requests(action string) []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]url.Values(nil), s.requests[action]...)
}

// Snapshot is a copy of the snapshot id.
func (s *Server) Snapshot(id string) (Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn, ok := s.snapshots[id]
	if !ok {
		return Snapshot{}, false
	}
	c := *sn
	c.Tags = copyTags(sn.Tags)
	return c, true
}

// Volume is a copy of the volume id.
func (s *Server) Volume(id string) (Volume, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[id]
	if !ok {
		return Volume{}, false
	}
	c := *v
	c.Tags = copyTags(v.Tags)
	return c, true
}

func copyTags(t map[string]string) map[string]string {
	if t == nil {
		return nil
	}
	c := make(map[string]string, len(t))
	for k, v := range t {
		c[k] = v
	}
	return c
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	rid := fmt.Sprintf("00000000-0000-4000-8000-%012x", s.next)
	if r.Method != http.MethodPost {
		writeError(w, rid, &apiError{http.StatusMethodNotAllowed, "UnsupportedHttpVerb", "The EC2 Query API takes POST here."})
		return
	}
	if a := r.Header.Get("Authorization"); !strings.HasPrefix(a, "AWS4-HMAC-SHA256 Credential=") ||
		!strings.Contains(a, "SignedHeaders=") || !strings.Contains(a, "Signature=") {
		writeError(w, rid, &apiError{http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, rid, &apiError{http.StatusBadRequest, "MalformedQueryString", err.Error()})
		return
	}
	f := r.PostForm
	action := f.Get("Action")
	s.calls[action]++
	s.requests[action] = append(s.requests[action], f)
	if v := f.Get("Version"); v != APIVersion {
		writeError(w, rid, &apiError{http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf("Version %q is not %s", v, APIVersion)})
		return
	}
	if ft := s.faults[action]; ft.n != 0 {
		if ft.n > 0 {
			ft.n--
			s.faults[action] = ft
		}
		writeError(w, rid, &ft.err)
		return
	}
	var body response
	var err *apiError
	switch action {
	case "DescribeInstances":
		body, err = s.describeInstances(f)
	case "CreateSnapshots":
		body, err = s.createSnapshots(f)
	case "CreateSnapshot":
		body, err = s.createSnapshot(f)
	case "DescribeSnapshots":
		body, err = s.describeSnapshots(f)
	case "DeleteSnapshot":
		body, err = s.deleteSnapshot(f)
	case "CreateVolume":
		body, err = s.createVolume(f)
	case "DescribeVolumes":
		body, err = s.describeVolumes(f)
	default:
		err = &apiError{http.StatusBadRequest, "InvalidAction", fmt.Sprintf("The action %s is not valid for this web service.", action)}
	}
	if err != nil {
		writeError(w, rid, err)
		return
	}
	body.set(rid)
	out, merr := xml.Marshal(body)
	if merr != nil {
		writeError(w, rid, &apiError{http.StatusInternalServerError, "InternalError", merr.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	fmt.Fprint(w, xml.Header)
	w.Write(out)
}

// response is an action's reply, an <ActionResponse> element (named by
// each reply's XMLName) with the namespace and the request id.
type response interface{ set(requestID string) }

type head struct {
	Xmlns     string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
}

func (h *head) set(rid string) { h.Xmlns, h.RequestID = xmlns, rid }

func writeError(w http.ResponseWriter, rid string, e *apiError) {
	type xmlErr struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	type response struct {
		XMLName   xml.Name `xml:"Response"`
		Errors    []xmlErr `xml:"Errors>Error"`
		RequestID string   `xml:"RequestID"`
	}
	out, _ := xml.Marshal(response{Errors: []xmlErr{{e.code, e.message}}, RequestID: rid})
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.status)
	fmt.Fprint(w, xml.Header)
	w.Write(out)
}

func missing(name string) *apiError {
	return &apiError{http.StatusBadRequest, "MissingParameter", fmt.Sprintf("The request must contain the parameter %s", name)}
}

func invalid(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "InvalidParameterValue", fmt.Sprintf(format, args...)}
}

func notFound(code, what, id string) *apiError {
	return &apiError{http.StatusBadRequest, code, fmt.Sprintf("The %s '%s' does not exist.", what, id)}
}

// list is the flattened list name.1, name.2, ...
func list(f url.Values, name string) []string {
	var l []string
	for i := 1; ; i++ {
		v, ok := f[fmt.Sprintf("%s.%d", name, i)]
		if !ok || len(v) == 0 {
			return l
		}
		l = append(l, v[0])
	}
}

// tags reads the TagSpecification.N list, which may name only rt.
func tags(f url.Values, rt string) (map[string]string, *apiError) {
	var t map[string]string
	for i := 1; ; i++ {
		p := fmt.Sprintf("TagSpecification.%d.", i)
		typ := f.Get(p + "ResourceType")
		if typ == "" {
			if f.Get(p+"Tag.1.Key") != "" {
				return nil, missing(p + "ResourceType")
			}
			return t, nil
		}
		if typ != rt {
			return nil, invalid("TagSpecification.%d: resource type %s is not %s", i, typ, rt)
		}
		for j := 1; ; j++ {
			k := f.Get(fmt.Sprintf("%sTag.%d.Key", p, j))
			if k == "" {
				break
			}
			if t == nil {
				t = map[string]string{}
			}
			t[k] = f.Get(fmt.Sprintf("%sTag.%d.Value", p, j))
		}
	}
}

func (s *Server) id(prefix string) string {
	s.next++
	return fmt.Sprintf("%s-%017x", prefix, s.next)
}

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }

// --- XML shapes (EC2 API reference, data types) ---

type tagXML struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func tagSet(t map[string]string) []tagXML {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []tagXML
	for _, k := range keys {
		out = append(out, tagXML{k, t[k]})
	}
	return out
}

// snapshotXML is the Snapshot type, whose state is named "status".
type snapshotXML struct {
	SnapshotID    string   `xml:"snapshotId"`
	VolumeID      string   `xml:"volumeId"`
	Status        string   `xml:"status"`
	StatusMessage string   `xml:"statusMessage,omitempty"`
	StartTime     string   `xml:"startTime"`
	Progress      string   `xml:"progress"`
	OwnerID       string   `xml:"ownerId"`
	VolumeSize    int32    `xml:"volumeSize"`
	Description   string   `xml:"description"`
	Encrypted     bool     `xml:"encrypted"`
	Tags          []tagXML `xml:"tagSet>item"`
}

// snapshotInfoXML is the SnapshotInfo type of CreateSnapshots, whose
// state is named "state".
type snapshotInfoXML struct {
	SnapshotID  string   `xml:"snapshotId"`
	VolumeID    string   `xml:"volumeId"`
	State       string   `xml:"state"`
	StartTime   string   `xml:"startTime"`
	Progress    string   `xml:"progress"`
	OwnerID     string   `xml:"ownerId"`
	VolumeSize  int32    `xml:"volumeSize"`
	Description string   `xml:"description"`
	Encrypted   bool     `xml:"encrypted"`
	Tags        []tagXML `xml:"tagSet>item"`
}

type attachmentXML struct {
	VolumeID   string `xml:"volumeId"`
	InstanceID string `xml:"instanceId"`
	Device     string `xml:"device"`
	Status     string `xml:"status"`
}

type volumeXML struct {
	VolumeID         string          `xml:"volumeId"`
	Size             int32           `xml:"size"`
	SnapshotID       string          `xml:"snapshotId"`
	AvailabilityZone string          `xml:"availabilityZone"`
	Status           string          `xml:"status"`
	CreateTime       string          `xml:"createTime"`
	Attachments      []attachmentXML `xml:"attachmentSet>item"`
	VolumeType       string          `xml:"volumeType"`
	Iops             int32           `xml:"iops,omitempty"`
	Throughput       int32           `xml:"throughput,omitempty"`
	Encrypted        bool            `xml:"encrypted"`
	Tags             []tagXML        `xml:"tagSet>item"`
}

const owner = "111122223333"

func (sn *Snapshot) xml() snapshotXML {
	return snapshotXML{
		SnapshotID: sn.ID, VolumeID: sn.VolumeID, Status: sn.State, StatusMessage: sn.Message,
		StartTime: now(), Progress: strconv.Itoa(sn.Progress) + "%", OwnerID: owner,
		VolumeSize: sn.SizeGiB, Description: sn.Description, Tags: tagSet(sn.Tags),
	}
}

func (v *Volume) xml() volumeXML {
	x := volumeXML{
		VolumeID: v.ID, Size: v.SizeGiB, SnapshotID: v.SnapshotID, AvailabilityZone: v.Zone,
		Status: v.State, CreateTime: now(), VolumeType: v.Type, Iops: v.IOPS,
		Throughput: v.Throughput, Tags: tagSet(v.Tags),
	}
	if v.Instance != "" {
		x.Attachments = []attachmentXML{{v.ID, v.Instance, v.Device, "attached"}}
	}
	return x
}
