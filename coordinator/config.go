package coordinator

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of the zero fields of Config.
const (
	DefaultTickInterval   = time.Second
	DefaultPollTimeout    = 2 * time.Second
	DefaultSafePointTTL   = 24 * time.Hour
	DefaultSessionTTL     = 10 * time.Second
	DefaultHTTPAddr       = "127.0.0.1:9597"
	DefaultConnectTimeout = 10 * time.Second
)

// Config configures a Coordinator. Zero fields take the defaults above; New
// calls Validate.
type Config struct {
	// PDAddrs are PD's client URLs; PD's etcd is reached on the same
	// addresses.
	PDAddrs []string
	// ID names this coordinator in the election and in logs (default
	// host-pid).
	ID string
	// TickInterval is the time between two checkpoint computations.
	TickInterval time.Duration
	// PollTimeout bounds one GetProgress call to one agent.
	PollTimeout time.Duration
	// SafePointTTL is the TTL of the PD service safepoint "pitr-<task>";
	// it is refreshed every tick, and a task paused for longer fails.
	SafePointTTL time.Duration
	// SessionTTL is the TTL of the election lease: a leader that dies or is
	// partitioned away is replaced after about this long.
	SessionTTL time.Duration
	// HTTPAddr serves /metrics and /healthz; "-" disables it.
	HTTPAddr string
	// MaxSlow is how many slow ranges each task's status lists.
	MaxSlow int
	// ConnectTimeout bounds the wait for PD and etcd at start.
	ConnectTimeout time.Duration

	// Etcd and PD, when set, are used instead of connecting to PDAddrs (the
	// Coordinator does not close them).
	Etcd *clientv3.Client
	PD   PD

	Logger hclog.Logger
	// Registerer receives the metrics (nil: a fresh registry); Gatherer
	// serves /metrics (nil: the Registerer when it is also a Gatherer).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// SetDefaults fills the zero fields.
func (c *Config) SetDefaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "coordinator"
		}
		c.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.PollTimeout == 0 {
		c.PollTimeout = DefaultPollTimeout
	}
	if c.SafePointTTL == 0 {
		c.SafePointTTL = DefaultSafePointTTL
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.MaxSlow == 0 {
		c.MaxSlow = DefaultMaxSlow
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// ErrConfig marks configuration mistakes (Validate's and LoadFile's errors).
var ErrConfig = errors.New("invalid coordinator config")

// Validate reports the first invalid field, after defaults.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if c.Etcd == nil || c.PD == nil {
		if len(c.PDAddrs) == 0 {
			return bad("PD addresses are required (--pd)")
		}
		for _, a := range c.PDAddrs {
			if strings.TrimSpace(a) == "" {
				return bad("empty PD address in %q", strings.Join(c.PDAddrs, ","))
			}
		}
	}
	if c.HTTPAddr != "-" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("http address %q: want host:port (or - to disable)", c.HTTPAddr)
		}
	}
	switch {
	case c.TickInterval < 10*time.Millisecond:
		return bad("tick interval %s is too short (at least 10ms)", c.TickInterval)
	case c.PollTimeout < 10*time.Millisecond:
		return bad("poll timeout %s is too short (at least 10ms)", c.PollTimeout)
	case c.SafePointTTL < time.Second:
		return bad("safepoint TTL %s is below PD's 1s granularity", c.SafePointTTL)
	case c.SessionTTL < time.Second:
		return bad("session TTL %s is below etcd's 1s granularity", c.SessionTTL)
	case c.MaxSlow < 0:
		return bad("max slow %d is negative", c.MaxSlow)
	case c.ConnectTimeout <= 0:
		return bad("connect timeout %s is not positive", c.ConnectTimeout)
	}
	return nil
}

// LoadFile reads a coordinator TOML file over c (defaults → file → flags).
// It understands the flat subset of TOML the example config uses: one
// "key = value" per line, # comments, strings, integers, booleans and
// one-line arrays of strings. Durations are strings ("1s", "24h"). Unknown
// keys are errors, so a typo is not silently ignored.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: read %s: %v", ErrConfig, path, err)
	}
	kv, err := parseFlatTOML(string(b))
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	for _, e := range kv {
		if err := c.set(e.key, e.val); err != nil {
			return fmt.Errorf("%w: %s:%d: %s: %v", ErrConfig, path, e.line, e.key, err)
		}
	}
	return nil
}

func (c *Config) set(key string, v any) error {
	str := func() (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("want a string, got %v", v)
		}
		return s, nil
	}
	dur := func(d *time.Duration) error {
		s, err := str()
		if err != nil {
			return err
		}
		if *d, err = time.ParseDuration(s); err != nil {
			return err
		}
		return nil
	}
	switch key {
	case "pd":
		switch x := v.(type) {
		case []string:
			c.PDAddrs = x
		case string:
			c.PDAddrs = splitList(x)
		default:
			return fmt.Errorf("want a list of addresses, got %v", v)
		}
	case "id":
		s, err := str()
		c.ID = s
		return err
	case "http_addr":
		s, err := str()
		c.HTTPAddr = s
		return err
	case "tick_interval":
		return dur(&c.TickInterval)
	case "poll_timeout":
		return dur(&c.PollTimeout)
	case "safepoint_ttl":
		return dur(&c.SafePointTTL)
	case "session_ttl":
		return dur(&c.SessionTTL)
	case "connect_timeout":
		return dur(&c.ConnectTimeout)
	case "max_slow":
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("want an integer, got %v", v)
		}
		c.MaxSlow = int(n)
	case "log_level":
		// Read by the command (it builds the logger); accepted here.
	default:
		return errors.New("unknown key")
	}
	return nil
}

// FileLogLevel returns the log_level of a coordinator TOML file ("" when
// unset), for the command that builds the logger before the Config.
func FileLogLevel(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: read %s: %v", ErrConfig, path, err)
	}
	kv, err := parseFlatTOML(string(b))
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	for _, e := range kv {
		if e.key == "log_level" {
			s, ok := e.val.(string)
			if !ok {
				return "", fmt.Errorf("%w: %s:%d: log_level: want a string", ErrConfig, path, e.line)
			}
			return s, nil
		}
	}
	return "", nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

type tomlEntry struct {
	key  string
	val  any // string, int64, bool or []string
	line int
}

// parseFlatTOML parses "key = value" lines (see LoadFile).
func parseFlatTOML(src string) ([]tomlEntry, error) {
	var out []tomlEntry
	seen := map[string]bool{}
	for n, line := range strings.Split(src, "\n") {
		n++
		line = strings.TrimSpace(stripComment(line))
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") {
			return nil, fmt.Errorf("line %d: tables are not supported; use top-level keys", n)
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want key = value", n)
		}
		k = strings.TrimSpace(k)
		if k == "" || strings.ContainsAny(k, " \t\"'.") {
			return nil, fmt.Errorf("line %d: bad key %q", n, k)
		}
		if seen[k] {
			return nil, fmt.Errorf("line %d: %s is set twice", n, k)
		}
		seen[k] = true
		val, err := parseTOMLValue(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %v", n, k, err)
		}
		out = append(out, tomlEntry{key: k, val: val, line: n})
	}
	return out, nil
}

// stripComment removes a # comment that is not inside a string.
func stripComment(line string) string {
	in := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\\' && in:
			i++
		case c == '"':
			in = !in
		case c == '#' && !in:
			return line[:i]
		}
	}
	return line
}

func parseTOMLValue(v string) (any, error) {
	switch {
	case v == "true":
		return true, nil
	case v == "false":
		return false, nil
	case strings.HasPrefix(v, `"`):
		s, err := strconv.Unquote(v)
		if err != nil {
			return nil, fmt.Errorf("bad string %s", v)
		}
		return s, nil
	case strings.HasPrefix(v, "["):
		if !strings.HasSuffix(v, "]") {
			return nil, errors.New("arrays must be on one line")
		}
		inner := strings.TrimSpace(v[1 : len(v)-1])
		out := []string{}
		for inner != "" {
			if !strings.HasPrefix(inner, `"`) {
				return nil, errors.New("only arrays of strings are supported")
			}
			end := 1
			for end < len(inner) && inner[end] != '"' {
				if inner[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(inner) {
				return nil, errors.New("unterminated string in array")
			}
			s, err := strconv.Unquote(inner[:end+1])
			if err != nil {
				return nil, fmt.Errorf("bad string %s", inner[:end+1])
			}
			out = append(out, s)
			inner = strings.TrimSpace(inner[end+1:])
			if strings.HasPrefix(inner, ",") {
				inner = strings.TrimSpace(inner[1:])
			} else if inner != "" {
				return nil, errors.New("want , between array elements")
			}
		}
		return out, nil
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(v, "_", ""), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("bad value %s (strings need quotes)", v)
	}
	return n, nil
}
