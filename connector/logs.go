package connector

import (
	"sort"

	"github.com/hashicorp/go-hclog"
	pclog "github.com/pingcap/log"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// RouteClientLogs sends the logs of the PD client and client-go (both log
// through github.com/pingcap/log's global zap logger, which by default
// prints to stdout) to l, so that stdout carries only a command's output.
// Their Info lines are internals (TSO streams starting, service
// discovery) and become Debug; Debug becomes Trace; Warn and Error stay.
// It replaces the process-wide logger; call it once, early.
func RouteClientLogs(l hclog.Logger) {
	core := &hclogCore{l: l}
	pclog.ReplaceGlobals(zap.New(core), &pclog.ZapProperties{
		Core: core, Syncer: zapcore.AddSync(nopWriter{}), Level: zap.NewAtomicLevelAt(zapLevel(l)),
	})
}

// hclogCore is a zapcore.Core writing to an hclog.Logger.
type hclogCore struct {
	l      hclog.Logger
	fields []zapcore.Field
}

func hcLevel(z zapcore.Level) hclog.Level {
	switch {
	case z < zapcore.InfoLevel:
		return hclog.Trace
	case z == zapcore.InfoLevel:
		return hclog.Debug
	case z == zapcore.WarnLevel:
		return hclog.Warn
	default:
		return hclog.Error
	}
}

// zapLevel is the lowest zap level l lets through.
func zapLevel(l hclog.Logger) zapcore.Level {
	for _, z := range []zapcore.Level{zapcore.DebugLevel, zapcore.InfoLevel, zapcore.WarnLevel} {
		if hcLevel(z) >= l.GetLevel() {
			return z
		}
	}
	return zapcore.ErrorLevel
}

func (c *hclogCore) Enabled(z zapcore.Level) bool {
	lvl := c.l.GetLevel()
	return lvl != hclog.Off && hcLevel(z) >= lvl
}

func (c *hclogCore) With(fs []zapcore.Field) zapcore.Core {
	return &hclogCore{l: c.l, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *hclogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *hclogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := make([]any, 0, 2*len(keys)+2)
	if e.LoggerName != "" {
		args = append(args, "component", e.LoggerName)
	}
	for _, k := range keys {
		args = append(args, k, enc.Fields[k])
	}
	c.l.Log(hcLevel(e.Level), e.Message, args...)
	return nil
}

func (c *hclogCore) Sync() error { return nil }

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
