// Package check holds the tests of pitr's Kubernetes manifests
// (deploy/kubernetes): every kustomization renders with the kustomize Go
// API, every object and every YAML file decodes strictly into its API type
// (or, for TidbCluster, whose Go module is not served to us, against the
// CRD field list in testdata/tidbcluster-fields.txt), and the deployment
// invariants hold: no credentials in ConfigMaps; resources, probes and a
// non-root, read-only, capability-free securityContext on every container;
// the agent's ports named; its spill volume bounded.
//
// It is a module of its own so that the root module does not depend on
// kustomize and the Kubernetes API types. Run it with `make k8s-check`.
package check
