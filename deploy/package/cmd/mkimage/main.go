// Command mkimage builds pitr's container image as an OCI image layout
// (dist/image-oci) from a static pitr binary, without a container daemon
// (make image). Load it with skopeo or crane; see README.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"github.com/pitr-io/pitr/deploy/package/image"
)

func main() {
	var o image.Options
	flag.StringVar(&o.Binary, "binary", "../../bin/pitr", "the static pitr binary (CGO_ENABLED=0)")
	flag.StringVar(&o.Root, "root", "../..", "the repository root")
	flag.StringVar(&o.Version, "version", "dev", "version, in the image's labels and tag")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH of the binary")
	flag.StringVar(&o.Layout, "out", "../../dist/image-oci", "OCI image layout directory (replaced)")
	flag.StringVar(&o.Tarball, "tarball", "", "also write a docker-loadable tarball here")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "mkimage: unexpected arguments (see mkimage -help)")
		os.Exit(2)
	}
	img, err := image.Build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	d, err := img.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("%s pitr:%s %s\n", o.Layout, image.Tag(o.Version), d)
}
