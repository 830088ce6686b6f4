package tikv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/kvproto/pkg/tikvpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const maxResponsesPerBatch = 128

type batchResp struct {
	id       uint64
	resp     *tikvpb.BatchCommandsResponse_Response
	feedback bool // attach health feedback (answer to GetHealthFeedback)
}

// BatchCommands serves client-go's multiplexed stream: every request of a
// BatchCommandsRequest runs concurrently and its response goes back with
// the same request id, batched with whatever else is ready.
func (s *Server) BatchCommands(stream tikvpb.Tikv_BatchCommandsServer) error {
	ctx := stream.Context()
	out := make(chan batchResp, 256)
	sendDone := make(chan error, 1)
	go func() { sendDone <- s.batchSend(ctx, stream, out) }()

	var workers sync.WaitGroup
	var recvErr error
	for {
		req, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		if len(req.RequestIds) != len(req.Requests) {
			recvErr = status.Errorf(codes.InvalidArgument, "%d request ids for %d requests", len(req.RequestIds), len(req.Requests))
			break
		}
		for i, r := range req.Requests {
			id := req.RequestIds[i]
			workers.Add(1)
			go func() {
				defer workers.Done()
				resp, feedback, err := s.handleBatch(ctx, r)
				if err != nil {
					s.log.Warn("batch command not served", "error", err)
					return
				}
				select {
				case out <- batchResp{id: id, resp: resp, feedback: feedback}:
				case <-ctx.Done():
				}
			}()
		}
	}
	workers.Wait()
	close(out)
	serr := <-sendDone
	if errors.Is(recvErr, io.EOF) {
		recvErr = nil
	}
	if recvErr != nil && status.Code(recvErr) == codes.Canceled {
		recvErr = nil
	}
	if recvErr == nil {
		return serr
	}
	return recvErr
}

// batchSend sends responses as they come, batching the ready ones. After a
// send error it drains out so workers never block.
func (s *Server) batchSend(ctx context.Context, stream tikvpb.Tikv_BatchCommandsServer, out <-chan batchResp) error {
	var sendErr error
	for first := range out {
		if sendErr != nil {
			continue
		}
		msg := &tikvpb.BatchCommandsResponse{}
		add := func(r batchResp) {
			msg.Responses = append(msg.Responses, r.resp)
			msg.RequestIds = append(msg.RequestIds, r.id)
			if r.feedback {
				msg.HealthFeedback = s.healthFeedback()
			}
		}
		add(first)
	more:
		for len(msg.Responses) < maxResponsesPerBatch {
			select {
			case r, ok := <-out:
				if !ok {
					break more
				}
				add(r)
			default:
				break more
			}
		}
		if err := stream.Send(msg); err != nil {
			sendErr = err
		}
	}
	return sendErr
}

func unsupported(name string) string {
	return fmt.Sprintf("%s is not supported by the playground", name)
}

// handleBatch runs one request of a batch. It returns an error only for a
// request it cannot answer in kind.
func (s *Server) handleBatch(ctx context.Context, r *tikvpb.BatchCommandsRequest_Request) (*tikvpb.BatchCommandsResponse_Response, bool, error) {
	type R = tikvpb.BatchCommandsResponse_Response
	switch c := r.Cmd.(type) {
	case *tikvpb.BatchCommandsRequest_Request_Get:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Get{Get: s.kvGet(c.Get)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_Scan:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Scan{Scan: s.kvScan(c.Scan)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_BatchGet:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_BatchGet{BatchGet: s.kvBatchGet(c.BatchGet)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_Prewrite:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Prewrite{Prewrite: s.kvPrewrite(c.Prewrite)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_Commit:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Commit{Commit: s.kvCommit(c.Commit)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_Cleanup:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Cleanup{Cleanup: s.kvCleanup(c.Cleanup)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_BatchRollback:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_BatchRollback{BatchRollback: s.kvBatchRollback(c.BatchRollback)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_CheckTxnStatus:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_CheckTxnStatus{CheckTxnStatus: s.kvCheckTxnStatus(c.CheckTxnStatus)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_ResolveLock:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_ResolveLock{ResolveLock: s.kvResolveLock(c.ResolveLock)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_ScanLock:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_ScanLock{ScanLock: s.kvScanLock(c.ScanLock)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_TxnHeartBeat:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_TxnHeartBeat{TxnHeartBeat: s.kvTxnHeartBeat(c.TxnHeartBeat)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_CheckSecondaryLocks:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_CheckSecondaryLocks{CheckSecondaryLocks: s.kvCheckSecondaryLocks(c.CheckSecondaryLocks)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_Coprocessor:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Coprocessor{Coprocessor: s.coprocessor(c.Coprocessor)}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_GetHealthFeedback:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_GetHealthFeedback{
			GetHealthFeedback: &kvrpcpb.GetHealthFeedbackResponse{HealthFeedback: s.healthFeedback()},
		}}, true, nil
	case *tikvpb.BatchCommandsRequest_Request_Empty:
		if d := c.Empty.GetDelayTime(); d > 0 {
			t := time.NewTimer(time.Duration(d) * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_Empty{Empty: &tikvpb.BatchCommandsEmptyResponse{TestId: c.Empty.GetTestId()}}}, false, nil
	// Not implemented, answered in kind so the client fails fast.
	case *tikvpb.BatchCommandsRequest_Request_PessimisticLock:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_PessimisticLock{PessimisticLock: &kvrpcpb.PessimisticLockResponse{
			Errors: []*kvrpcpb.KeyError{{Abort: unsupported("PessimisticLock")}},
		}}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_PessimisticRollback:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_PessimisticRollback{PessimisticRollback: &kvrpcpb.PessimisticRollbackResponse{
			Errors: []*kvrpcpb.KeyError{{Abort: unsupported("PessimisticRollback")}},
		}}}, false, nil
	case *tikvpb.BatchCommandsRequest_Request_DeleteRange:
		return &R{Cmd: &tikvpb.BatchCommandsResponse_Response_DeleteRange{DeleteRange: &kvrpcpb.DeleteRangeResponse{
			Error: unsupported("DeleteRange"),
		}}}, false, nil
	}
	return nil, false, fmt.Errorf("unsupported batch command %T", r.Cmd)
}
