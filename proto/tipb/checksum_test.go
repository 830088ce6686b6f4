package tipb

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

// TestWireFormat pins the field numbers and types to tipb's
// proto/checksum.proto with hand-encoded bytes: a mistake here would make
// TiKV read another field than the one pitr wrote.
func TestWireFormat(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  proto.Message
		wire []byte
	}{
		{"response", &ChecksumResponse{Checksum: proto.Uint64(1), TotalKvs: proto.Uint64(2), TotalBytes: proto.Uint64(3)},
			[]byte{1<<3 | 0, 1, 2<<3 | 0, 2, 3<<3 | 0, 3}},
		{"response big checksum", &ChecksumResponse{Checksum: proto.Uint64(300)},
			[]byte{1<<3 | 0, 0xac, 0x02}},
		{"request", &ChecksumRequest{
			StartTsFallback: proto.Uint64(7),
			ScanOn:          ChecksumScanOn_Index.Enum(),
			Algorithm:       ChecksumAlgorithm_Crc64_Xor.Enum(),
			Rule:            &ChecksumRewriteRule{OldPrefix: []byte("o"), NewPrefix: []byte("nn")},
		}, []byte{1<<3 | 0, 7, 2<<3 | 0, 1, 3<<3 | 0, 0, 4<<3 | 2, 7, 1<<3 | 2, 1, 'o', 2<<3 | 2, 2, 'n', 'n'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := proto.Marshal(tc.msg)
			require.NoError(t, err)
			require.Equal(t, tc.wire, got)
			back := tc.msg.ProtoReflect().New().Interface()
			require.NoError(t, proto.Unmarshal(tc.wire, back))
			require.True(t, proto.Equal(tc.msg, back), "decoded %v", back)
		})
	}
}
