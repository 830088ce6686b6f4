// Command mkdeb builds dist/pitr_<version>_<arch>.deb from a static pitr
// binary (make package). It runs from deploy/package, so paths default to
// the repository two levels up.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"github.com/pitr-io/pitr/deploy/package/deb"
)

func main() {
	var o deb.Options
	flag.StringVar(&o.Binary, "binary", "../../bin/pitr", "the static pitr binary")
	flag.StringVar(&o.Root, "root", "../..", "the repository root")
	flag.StringVar(&o.Version, "version", "dev", "version (git describe output is fine)")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "Debian architecture")
	flag.StringVar(&o.OutDir, "out", "../../dist", "output directory")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "mkdeb: unexpected arguments (see mkdeb -help)")
		os.Exit(2)
	}
	p, err := deb.Build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
	fmt.Println(p)
}
