package testkit

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// TB is what the harness needs of its caller: the part of testing.TB a
// command can implement too (Run's adapter does). Only the caller's
// goroutine may call Fatalf; the harness's own goroutines call Errorf.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	Cleanup(func())
	TempDir() string
}

var _ TB = (*runner)(nil)

// RunOptions configures Run's adapter.
type RunOptions struct {
	// Log receives Logf and Errorf lines, one a line (nil: discarded).
	Log io.Writer
	// Dir holds what TempDir makes; it must exist, and Run removes nothing
	// in it: the caller owns it (the demo may keep it). Empty: Run makes one
	// under the system's temporary directory and removes it afterwards.
	Dir string
}

// Run calls fn with a TB for code outside a test (the demo, the bench) and
// returns the first failure: fn's error, a Fatalf (which ends fn, as
// t.Fatalf ends a test) or an Errorf from any goroutine. Cleanups run after
// fn, last registered first, as in a test.
func Run(o RunOptions, fn func(tb TB) error) (err error) {
	r := &runner{log: o.Log, dir: o.Dir}
	if r.log == nil {
		r.log = io.Discard
	}
	if r.dir == "" {
		d, err := os.MkdirTemp("", "testkit-")
		if err != nil {
			return fmt.Errorf("make a working directory: %w", err)
		}
		r.dir = d
		defer os.RemoveAll(d)
	}
	defer func() {
		for i := len(r.cleanups) - 1; i >= 0; i-- {
			r.cleanups[i]()
		}
		if err == nil {
			err = r.err()
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			if f, ok := v.(fatal); !ok || f.r != r {
				panic(v) // a bug, or the Fatalf of an enclosing Run's TB
			}
		}
	}()
	if ferr := fn(r); ferr != nil {
		r.fail(ferr)
	}
	return nil
}

// fatal is the panic value by which Fatalf unwinds fn; Run recovers only
// its own runner's.
type fatal struct{ r *runner }

type runner struct {
	log io.Writer
	dir string

	mu       sync.Mutex
	first    error
	cleanups []func()
}

func (r *runner) Helper() {}

func (r *runner) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.log, format+"\n", args...)
}

func (r *runner) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first == nil {
		r.first = err
	}
}

func (r *runner) Errorf(format string, args ...any) {
	err := fmt.Errorf(format, args...)
	r.Logf("error: %v", err)
	r.fail(err)
}

func (r *runner) Fatalf(format string, args ...any) {
	r.fail(fmt.Errorf(format, args...))
	panic(fatal{r})
}

func (r *runner) Failed() bool { return r.err() != nil }

func (r *runner) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// TempDir makes a fresh directory under RunOptions.Dir; a failure to make
// one is fatal, as in a test.
func (r *runner) TempDir() string {
	d, err := os.MkdirTemp(r.dir, "tmp-")
	if err != nil {
		r.Fatalf("make a temporary directory: %v", err)
	}
	return d
}
