// Command pitr is pitr's production binary: continuous log backup and
// point-in-time restore for TiKV. See DESIGN.md §7 for the CLI contract.
// The playground and the demo are in pitr-playground; this binary links
// neither (nor an etcd server).
package main

import "github.com/pitr-io/pitr/cmd/internal/cli"

// version is set at link time by make package/image
// (-ldflags "-X main.version=..."); "pitr --version" prints it.
var version = "dev"

func main() { cli.Main(newRootCmd()) }
