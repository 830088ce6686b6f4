package storage

import (
	"context"

	"github.com/hashicorp/go-hclog"
)

// StackOptions configures OpenStack.
type StackOptions struct {
	// Logger receives the backend's and the retries' lines (default:
	// discard).
	Logger hclog.Logger
	// Retry configures the retries (its Logger defaults to Logger).
	Retry RetryOptions
	// RateLimit bounds the payload bytes per second, uploads and downloads
	// together (0: none); Stack.SetLimit changes it while running.
	RateLimit int64
	// SharedLimit, when set, is the limit instead of RateLimit: one bucket
	// for every stack opened with it (see NewSharedLimit).
	SharedLimit *RateLimited
	// Metrics, when set, records every operation (shared by every stack of
	// the process that uses it).
	Metrics *MetricsSet
	// Open are the backend options (part size, concurrency).
	Open []Option
}

// Stack is a storage opened the documented way: the backend, then retries,
// then the rate limit, then metrics (see the package documentation: retry
// sits below the limiter so that re-sent bytes are paid for). It is what
// the agent, the coordinator and restore use.
type Stack struct {
	Storage
	limit *RateLimited
}

// OpenStack opens rawURL (see Open) and wraps it.
func OpenStack(ctx context.Context, rawURL string, o StackOptions) (*Stack, error) {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Retry.Logger == nil {
		o.Retry.Logger = o.Logger
	}
	b, err := Open(ctx, rawURL, append([]Option{Logger(o.Logger)}, o.Open...)...)
	if err != nil {
		return nil, err
	}
	var rl *RateLimited
	if o.SharedLimit != nil {
		rl = o.SharedLimit.Share(WithRetry(b, o.Retry))
	} else {
		rl = WithRateLimit(WithRetry(b, o.Retry), o.RateLimit, RateLimitOptions{})
	}
	st := &Stack{Storage: rl, limit: rl}
	if o.Metrics != nil {
		st.Storage = o.Metrics.Wrap(rl)
	}
	return st, nil
}

// NewSharedLimit is a rate limit of bytesPerSec (<= 0: none) with no
// storage of its own, for StackOptions.SharedLimit; SetLimit on it (or on
// any stack sharing it) changes it for all.
func NewSharedLimit(bytesPerSec int64) *RateLimited {
	return WithRateLimit(nil, bytesPerSec, RateLimitOptions{})
}

// SetLimit changes the rate limit at run time (<= 0: none).
func (s *Stack) SetLimit(bytesPerSec int64) { s.limit.SetLimit(bytesPerSec) }

// Limit returns the rate limit in bytes per second (0: none).
func (s *Stack) Limit() int64 { return s.limit.Limit() }
