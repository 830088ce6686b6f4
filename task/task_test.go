package task

import (
	"testing"

	"github.com/stretchr/testify/require"
	protobuf "google.golang.org/protobuf/proto"

	pitrpb "github.com/pitr-io/pitr/proto"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"nightly", true}, {"t_1-b", true}, {"", false}, {"a/b", false}, {"a b", false},
		{string(make([]byte, 65)), false},
	} {
		err := ValidateName(tc.name)
		if tc.ok {
			require.NoError(t, err, tc.name)
		} else {
			require.ErrorIs(t, err, ErrInvalidName, tc.name)
		}
	}
}

func TestRecordRoundTrip(t *testing.T) {
	in := &pitrpb.TaskRecord{
		Info:       &pitrpb.TaskInfo{Name: "t", StartTs: 42, Ranges: []*pitrpb.KeyRange{{StartKey: []byte("a")}}},
		StorageUrl: "s3://b/p", State: pitrpb.TaskState_TASK_STATE_RUNNING,
	}
	b, err := EncodeRecord(in)
	require.NoError(t, err)
	out, err := DecodeRecord(b)
	require.NoError(t, err)
	require.Equal(t, uint32(1), out.FormatVersion)
	require.Equal(t, uint64(42), out.Info.StartTs)

	in.FormatVersion = 99
	b, err = EncodeRecord(in) // stamps the current version
	require.NoError(t, err)
	_, err = DecodeRecord(b)
	require.NoError(t, err)

	future := &pitrpb.TaskRecord{FormatVersion: 2, Info: &pitrpb.TaskInfo{}}
	b, err = protoMarshal(future)
	require.NoError(t, err)
	_, err = DecodeRecord(b)
	require.ErrorIs(t, err, ErrFormat, "a newer format is refused")

	ts, err := DecodeTS(EncodeTS(1 << 60))
	require.NoError(t, err)
	require.Equal(t, uint64(1<<60), ts)
	_, err = DecodeTS([]byte{1})
	require.ErrorIs(t, err, ErrFormat)
	require.Equal(t, "/pitr/v1/agent/7", AgentKey(7))
	n, ok := NameFromKey(Key("x"))
	require.True(t, ok)
	require.Equal(t, "x", n)
}

func protoMarshal(r *pitrpb.TaskRecord) ([]byte, error) { return protobuf.Marshal(r) }
