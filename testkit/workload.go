package testkit

import (
	"context"
)

// Workload is a function running in the background until stopped: the
// hook by which a playground/workload Bank or Mixed (or anything else)
// runs beside the chaos.
type Workload struct {
	cancel context.CancelFunc
	done   chan error
	err    error
	ended  bool
}

// StartWorkload runs run in a goroutine until Stop; run must return nil
// when its context ends (Bank.Run and Mixed.Run do). A workload still
// running when the TB ends is stopped then.
func (c *Cluster) StartWorkload(run func(ctx context.Context) error) *Workload {
	ctx, cancel := context.WithCancel(c.Ctx)
	w := &Workload{cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- run(ctx) }()
	c.TB.Cleanup(func() { _ = w.Stop() })
	return w
}

// Ended reports, without waiting, whether the workload has returned
// before Stop, and with what.
func (w *Workload) Ended() (bool, error) {
	if w.ended {
		return true, w.err
	}
	select {
	case w.err = <-w.done:
		w.ended = true
		return true, w.err
	default:
		return false, nil
	}
}

// Stop ends the workload and returns its error.
func (w *Workload) Stop() error {
	w.cancel()
	if !w.ended {
		w.err, w.ended = <-w.done, true
	}
	return w.err
}
