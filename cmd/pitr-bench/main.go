// Command pitr-bench runs pitr's benchmarks (`make bench`) and prints one
// table: each figure beside the physical limit measured in the same run, so
// a number is read as a fraction of what this machine can do, not as an
// absolute that changes with the hardware.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Section is one block of the bench table.
type Section struct {
	Name string
	Run  func(ctx context.Context, env *Env) ([]Row, error)
}

// Row is one figure. Ratio is Value divided by the baseline's value (0 when
// the row has no baseline); Baseline names the row it is compared with.
type Row struct {
	Name     string
	Value    float64
	Unit     string
	Baseline string
	Ratio    float64
}

// Env is what every section gets.
type Env struct {
	Root string // module root
	Tmp  string // scratch dir, removed afterwards
	Logf func(format string, args ...any)
}

var sections []Section

func register(s Section) { sections = append(sections, s) }

func main() { os.Exit(run()) }

// run returns the exit status, so deferred clean-ups run before os.Exit.
func run() int {
	only := flag.String("only", "", "comma-separated section names to run (default all)")
	list := flag.Bool("list", false, "list sections and exit")
	flag.Parse()
	sort.Slice(sections, func(i, j int) bool { return sections[i].Name < sections[j].Name })
	if *list {
		for _, s := range sections {
			fmt.Println(s.Name)
		}
		return 0
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pitr-bench:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "pitr-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pitr-bench:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	env := &Env{Root: root, Tmp: tmp, Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "  "+f+"\n", a...) }}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	failed := false
	for _, s := range sections {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s\n", s.Name)
		start := time.Now()
		sdir := filepath.Join(tmp, s.Name)
		_ = os.MkdirAll(sdir, 0o755)
		senv := *env
		senv.Tmp = sdir
		rows, err := s.Run(ctx, &senv)
		if err != nil {
			fmt.Fprintf(os.Stderr, "pitr-bench: %s: %v\n", s.Name, err)
			failed = true
			continue
		}
		fmt.Fprintf(os.Stderr, "   (%s)\n", time.Since(start).Round(time.Millisecond))
		fmt.Fprintf(tw, "%s\t\t\t\t\n", strings.ToUpper(s.Name))
		for _, r := range rows {
			ratio := ""
			if r.Ratio > 0 {
				ratio = fmt.Sprintf("%.2f× %s", r.Ratio, r.Baseline)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t\n", r.Name, formatValue(r.Value), r.Unit, ratio)
		}
		_ = os.RemoveAll(sdir)
	}
	tw.Flush()
	if failed {
		return 1
	}
	return 0
}

// sizeMiB reads a section's size in MiB from the environment variable name
// (def when unset) and returns it in bytes.
func sizeMiB(name string, def int) (int64, error) {
	n := def
	if v := os.Getenv(name); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			return 0, fmt.Errorf("%s=%q: want a positive integer", name, v)
		}
	}
	return int64(n) << 20, nil
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}
