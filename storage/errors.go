package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"
)

// opError is the error every backend returns. It matches its sentinel kind
// (ErrNotFound, ..., ErrTransient) and its cause with errors.Is/As, and its
// message has every credential the backend knows about redacted.
type opError struct {
	op   string // "put", "get", ...
	key  string // relative key, may be empty (list)
	kind error  // one of the sentinels, or nil for unclassified failures
	err  error  // cause; may be nil when kind says it all
	red  *redactor
}

func (e *opError) Error() string {
	kind := ""
	if e.kind != nil {
		kind = strings.TrimPrefix(e.kind.Error(), "storage: ")
	}
	msg := e.op
	if e.key != "" {
		msg += fmt.Sprintf(" %q", e.key)
	}
	switch {
	case e.err == nil:
		msg += ": " + kind
	case e.kind == nil || e.kind == ErrTransient:
		msg += ": " + e.err.Error()
		if e.kind == ErrTransient {
			msg += " (transient)"
		}
	default:
		// The sentinel says what happened; keep the cause for the detail.
		msg += ": " + kind + ": " + e.err.Error()
	}
	return e.red.redact("storage: " + msg)
}

func (e *opError) Unwrap() []error {
	var errs []error
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

// IsTransient reports whether err is worth retrying: it is marked
// ErrTransient, or it is a network failure (timeout, connection refused or
// reset, broken pipe, unexpected EOF). Cancellation, NotFound,
// AlreadyExists, Permission, InvalidKey and InvalidRange never are.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	for _, perm := range []error{ErrNotFound, ErrAlreadyExists, ErrPermission, ErrInvalidKey,
		ErrInvalidRange, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, perm) {
			return false
		}
	}
	if errors.Is(err, ErrTransient) {
		return true
	}
	return isNetworkFailure(err)
}

func isNetworkFailure(err error) bool {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, os.ErrDeadlineExceeded):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) || errors.Is(err, net.ErrClosed) {
		return true
	}
	// The AWS SDK's "failed to send request" (the connection broke before a
	// response arrived).
	var se *smithyhttp.RequestSendError
	if errors.As(err, &se) {
		return true
	}
	// net/http reports a connection the server closed without answering
	// as a *url.Error wrapping a bare io.EOF.
	var ue *url.Error
	return errors.As(err, &ue) && errors.Is(ue.Err, io.EOF)
}

// httpStatus digs the HTTP status out of an SDK error, or returns 0.
func httpStatus(err error) int {
	var sc interface{ HTTPStatusCode() int } // aws smithy ResponseError
	if errors.As(err, &sc) {
		return sc.HTTPStatusCode()
	}
	var az *azcore.ResponseError
	if errors.As(err, &az) {
		return az.StatusCode
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		return ge.Code
	}
	return 0
}

// apiCode returns the service's error code ("SlowDown", "BlobNotFound"), if any.
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	var az *azcore.ResponseError
	if errors.As(err, &az) {
		return az.ErrorCode
	}
	return ""
}

// classify maps a backend error to one of the sentinels (or nil).
// conditional is true for CreateIfAbsent's conditional write, where a failed
// precondition means "already exists".
func classify(err error, conditional bool) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil // the caller's context ended; not the store's fault
	}
	switch apiCode(err) {
	case "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
		"InternalError", "ServiceUnavailable", "XMinioServerNotInitialized", "ServerBusy",
		"OperationTimedOut", "ConditionalRequestConflict":
		return ErrTransient
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthenticationFailed",
		"AuthorizationFailure", "AuthorizationPermissionMismatch", "InvalidSecurity", "ExpiredToken":
		return ErrPermission
	case "NoSuchKey", "BlobNotFound":
		return ErrNotFound
	case "PreconditionFailed", "ConditionNotMet", "BlobAlreadyExists":
		if conditional {
			return ErrAlreadyExists
		}
	case "InvalidRange":
		return ErrInvalidRange
	}
	switch st := httpStatus(err); {
	case st == 412 && conditional:
		return ErrAlreadyExists
	case st == 409 && conditional:
		// A concurrent conditional write is in flight (AWS
		// ConditionalRequestConflict); the retry will see the winner.
		return ErrTransient
	case st == 401 || st == 403:
		return ErrPermission
	case st == 404:
		return ErrNotFound
	case st == 416:
		return ErrInvalidRange
	case st == 408 || st == 429 || st >= 500:
		return ErrTransient
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound:
		return ErrNotFound
	case gcerrors.PermissionDenied:
		return ErrPermission
	case gcerrors.AlreadyExists:
		if conditional {
			return ErrAlreadyExists
		}
	case gcerrors.FailedPrecondition:
		if conditional {
			return ErrAlreadyExists
		}
	case gcerrors.ResourceExhausted:
		return ErrTransient
	}
	if isNetworkFailure(err) {
		return ErrTransient
	}
	return nil
}
