// The etcd server, as etcd's own main package builds it: go.etcd.io/etcd/server/v3/etcdmain.
// A module of its own, so that etcd's dependencies are not unified with Kubernetes'.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
