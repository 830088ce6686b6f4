package storage

import (
	"bytes"
	"context"
	"errors"
)

// ConditionalWriteForTest does CreateIfAbsent's conditional upload without
// the Exists pre-check, to prove the server enforces the condition.
func ConditionalWriteForTest(ctx context.Context, s Storage, key string, data []byte) error {
	b, ok := s.(*blobStorage)
	if !ok {
		return errors.New("not a gocloud backend")
	}
	if b.conditional == nil {
		return errors.New("backend has no conditional write")
	}
	return b.write(ctx, "create", key, bytes.NewReader(data), int64(len(data)), b.conditional)
}
