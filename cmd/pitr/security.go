package main

import (
	"github.com/spf13/pflag"

	"github.com/pitr-io/pitr/connector"
)

// securityFile is the [security] table of the agent's and coordinator's
// TOML config, with TiKV's and TiCDC's key names.
type securityFile struct {
	CAPath        string   `toml:"ca-path"`
	CertPath      string   `toml:"cert-path"`
	KeyPath       string   `toml:"key-path"`
	CertAllowedCN []string `toml:"cert-allowed-cn"`
}

// tlsFlags are --ca, --cert and --key, BR's and TiCDC's names, on every
// command that talks to a cluster.
type tlsFlags struct{ ca, cert, key string }

func (t *tlsFlags) register(f *pflag.FlagSet) {
	f.StringVar(&t.ca, "ca", "", "TLS: PEM file of the CA that signed the cluster's certificates")
	f.StringVar(&t.cert, "cert", "", "TLS: PEM file of this client's certificate")
	f.StringVar(&t.key, "key", "", "TLS: PEM file of this client's private key")
}

// get returns the TLS set-up: each flag given overrides the config file's
// key (file may be nil).
func (t *tlsFlags) get(file *securityFile, changed func(string) bool) connector.TLS {
	var out connector.TLS
	if file != nil {
		out = connector.TLS{CA: file.CAPath, Cert: file.CertPath, Key: file.KeyPath}
	}
	if changed("ca") || out.CA == "" {
		out.CA = t.ca
	}
	if changed("cert") || out.Cert == "" {
		out.Cert = t.cert
	}
	if changed("key") || out.Key == "" {
		out.Key = t.key
	}
	return out
}
