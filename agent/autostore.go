package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
)

// TiKVAuto as the TiKV address (--tikv auto) makes the agent find the store
// on its own host in PD's store list, so one manifest or unit serves every
// host: a store matches when the host part of its address is
//   - one of this host's interface addresses, or
//   - this host's name, or a DNS name whose first label is it (a
//     StatefulSet pod "tikv-0" and its store "tikv-0.tikv-peer.ns.svc"), or
//   - a name that resolves to one of this host's addresses.
//
// Exactly one store must match: none (yet) is waited for like a store that
// has not registered, several is an error naming them.
const TiKVAuto = "auto"

// localNames are this host's name and interface addresses.
func localNames() []string {
	var out []string
	if h, err := os.Hostname(); err == nil && h != "" {
		out = append(out, h)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				out = append(out, ipn.IP.String())
			}
		}
	}
	return out
}

// storesOnHost returns the stores whose address is on the host named by
// names (hostnames and IP addresses).
func storesOnHost(ctx context.Context, stores []*metapb.Store, names []string) []*metapb.Store {
	hostNames, ips := map[string]bool{}, map[string]bool{}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips[ip.String()] = true
		} else if n != "" {
			hostNames[strings.ToLower(n)] = true
			hostNames[strings.ToLower(strings.SplitN(n, ".", 2)[0])] = true
		}
	}
	var out []*metapb.Store
	for _, s := range stores {
		host, _, err := net.SplitHostPort(s.GetAddress())
		if err != nil {
			continue
		}
		if storeOnHost(ctx, host, hostNames, ips) {
			out = append(out, s)
		}
	}
	return out
}

func storeOnHost(ctx context.Context, host string, hostNames, ips map[string]bool) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ips[ip.String()]
	}
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if hostNames[h] || hostNames[strings.SplitN(h, ".", 2)[0]] {
		return true
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resolved, err := net.DefaultResolver.LookupHost(rctx, h)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(resolved, func(a string) bool {
		ip := net.ParseIP(a)
		return ip != nil && ips[ip.String()] && !ip.IsLoopback()
	})
}

// autoStore picks this host's store for TiKVAuto (ok false: none yet).
func (a *Agent) autoStore(ctx context.Context, stores []*metapb.Store) (*metapb.Store, bool, error) {
	names := a.cfg.LocalNames
	if names == nil {
		names = localNames()
	}
	on := storesOnHost(ctx, stores, names)
	switch len(on) {
	case 0:
		return nil, false, nil
	case 1:
		return on[0], true, nil
	}
	addrs := make([]string, 0, len(on))
	for _, s := range on {
		addrs = append(addrs, fmt.Sprintf("%d at %s", s.GetId(), s.GetAddress()))
	}
	return nil, false, fmt.Errorf("%w: --tikv auto: %d stores are on this host (%s); give --tikv ADDR for the one this agent serves",
		ErrStoreNotFound, len(on), strings.Join(addrs, ", "))
}
