// Package awsebs is the aws-ebs provider of volume-snapshot backups: EBS
// snapshots of the volumes of EC2 instances, and EBS volumes made from
// them, through the EC2 API (aws-sdk-go-v2 service/ec2).
//
// The calls are the ones BR makes for its EBS backups (pingcap/tidb
// br/pkg/aws/ebs.go): one CreateSnapshots per instance, excluding the boot
// volume and the instance's other data volumes, so that the volumes of a
// store are snapshotted at one point in time; DescribeSnapshots to follow
// them; CreateVolume and DescribeVolumes to restore; DeleteSnapshot.
//
// Every error is a one-line *volume.Error carrying EC2's error code.
// Throttling is retried by the SDK's standard retryer, not here.
//
// awsebs imports only package volume.
package awsebs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"

	"github.com/pitr-io/pitr/volume"
)

// Name is the provider's name as --provider spells it.
const Name = "aws-ebs"

// Defaults of Config.
const (
	// BR allows 9 retries (10 attempts) with the SDK's backoff, "at least
	// 30s in total" (br/pkg/aws/ebs.go NewEC2Session).
	DefaultMaxAttempts = 10
	// BR polls pending snapshots and creating volumes every 5 seconds.
	DefaultPollInterval = 5 * time.Second
	// The SDK's own cap on the backoff between attempts.
	DefaultMaxBackoff = 20 * time.Second
	// The volume type of CreateVolume when CreateOptions.Type is "".
	DefaultVolumeType = "gp3"
)

// Config configures the EC2 client. The zero value uses the standard AWS
// chain (environment, shared config, instance role) for region and
// credentials, and the endpoint it resolves, which honours
// AWS_ENDPOINT_URL_EC2 and AWS_ENDPOINT_URL.
type Config struct {
	// Region overrides the region of the standard chain.
	Region string
	// Endpoint overrides the EC2 endpoint (LocalStack, a test server); it
	// takes precedence over the endpoint environment variables.
	Endpoint string
	// MaxAttempts of each EC2 call, retries of throttling and transient
	// faults included; 0: DefaultMaxAttempts.
	MaxAttempts int
	// MaxBackoff caps the jittered exponential backoff between attempts;
	// 0: DefaultMaxBackoff. Tests set it tiny.
	MaxBackoff time.Duration
	// PollInterval between two looks at a volume being created;
	// 0: DefaultPollInterval.
	PollInterval time.Duration
	// Credentials override the standard chain's (static keys in tests).
	Credentials aws.CredentialsProvider
}

// Provider is the aws-ebs volume.Provider.
type Provider struct {
	ec2  *ec2.Client
	poll time.Duration
}

var _ volume.Provider = (*Provider)(nil)

// New loads the AWS configuration and makes the EC2 client.
func New(ctx context.Context, c Config) (*Provider, error) {
	attempts := c.MaxAttempts
	if attempts <= 0 {
		attempts = DefaultMaxAttempts
	}
	backoff := c.MaxBackoff
	if backoff <= 0 {
		backoff = DefaultMaxBackoff
	}
	poll := c.PollInterval
	if poll <= 0 {
		poll = DefaultPollInterval
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = attempts
				o.MaxBackoff = backoff
				o.Backoff = retry.NewExponentialJitterBackoff(backoff)
				// The client-side retry quota would turn a long spell of
				// throttling into errors without EC2's code; our calls are
				// few (one per store) and the attempts are bounded anyway.
				o.RateLimiter = ratelimit.None
				o.Retryables = append(o.Retryables, retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
					var ae smithy.APIError
					if errors.As(err, &ae) && extraThrottleCodes[ae.ErrorCode()] {
						return aws.TrueTernary
					}
					return aws.UnknownTernary
				}))
			})
		}),
	}
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	if c.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(c.Credentials))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, &volume.Error{Provider: Name, Op: "load AWS config", Err: err}
	}
	if cfg.Region == "" {
		return nil, &volume.Error{Provider: Name, Op: "load AWS config", Message: "no region: set --region or AWS_REGION"}
	}
	client := ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	})
	return &Provider{ec2: client, poll: poll}, nil
}

// Name implements volume.Provider.
func (p *Provider) Name() string { return Name }

// extraThrottleCodes are EC2's throttling codes the SDK's standard retryer
// does not know (it knows RequestLimitExceeded, Throttling and the other
// generic ones).
var extraThrottleCodes = map[string]bool{
	// Snapshots of one volume too close together.
	"SnapshotCreationPerVolumeRateExceeded": true,
	// Too many pending snapshots in the account; BR waits for some to
	// complete and tries again (br/pkg/aws/ebs.go createSnapshotsWithRetry).
	"PendingSnapshotLimitExceeded": true,
}

// retryable reports whether an EC2 error code is throttling or a transient
// fault, that a later try may get past.
func retryable(code string) bool {
	if extraThrottleCodes[code] {
		return true
	}
	switch code {
	case "RequestLimitExceeded", "Throttling", "ThrottlingException", "EC2ThrottledException",
		"RequestThrottled", "InternalError", "Unavailable", "ServiceUnavailable", "RequestTimeout":
		return true
	}
	return false
}

// notFoundCodes are EC2's codes for an id it does not know.
var notFoundCodes = map[string]bool{
	"InvalidSnapshot.NotFound":   true,
	"InvalidVolume.NotFound":     true,
	"InvalidInstanceID.NotFound": true,
}

// fail makes err, returned by the SDK for op, one *volume.Error with EC2's
// code and message; an unknown id also wraps volume.ErrNotFound.
func fail(op string, err error) error {
	e := &volume.Error{Provider: Name, Op: op, Err: err}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		e.Code = ae.ErrorCode()
		e.Message = ae.ErrorMessage()
		e.Retryable = retryable(e.Code)
		if notFoundCodes[e.Code] {
			e.Err = fmt.Errorf("%w: %w", volume.ErrNotFound, err)
		}
	}
	return e
}

// errorCode is EC2's error code in err, "" if none.
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// failf is an error of ours (not EC2's) for op, in the same shape.
func failf(op, format string, args ...any) error {
	return &volume.Error{Provider: Name, Op: op, Message: fmt.Sprintf(format, args...)}
}
