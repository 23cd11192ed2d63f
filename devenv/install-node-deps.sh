#!/usr/bin/env bash
# Installs the Debian packages the real test node needs (modelseal_devenv/node.py), if any
# are missing. Idempotent like install-system-deps.sh: apt-get runs only when one is missing.
#
#   runc                          the OCI runtime containerd's runc shim calls
#   containernetworking-plugins   bridge, host-local, loopback, portmap (/usr/lib/cni)
#   iptables, conntrack           kube-proxy's iptables mode and the bridge's masquerade
#   docker-registry               the registry on 127.0.0.1 that images reach the node from
#   iproute2, util-linux          ip, nsenter, mount (kubelet and CNI call them)
#   buildah, skopeo, curl         the pause image (build-node.sh), pushing images, health checks
# kubelet, kube-proxy and containerd v2 are built from their Go modules (devenv/build-node.sh).
set -euo pipefail

# shellcheck source=devenv/apt-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-common.sh"

REQUIRED=(runc containernetworking-plugins iptables conntrack docker-registry iproute2 util-linux
          buildah skopeo curl)

apt_install_missing install-node-deps "${REQUIRED[@]}"
