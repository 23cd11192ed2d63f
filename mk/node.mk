# The real test node (devenv/modelseal_devenv/node.py). Included by the top-level Makefile.
# kubelet, kube-proxy and containerd v2 are built from their Go modules and cached like the
# control plane (devenv/build-node.sh); runc, the CNI plugins and the registry are Debian's.
.PHONY: node

node: system-deps venv testservers ## build (or reuse) the real node: kubelet, kube-proxy, containerd v2, pause image
	bash devenv/install-image-deps.sh
	bash devenv/install-node-deps.sh
	bash devenv/build-node.sh
