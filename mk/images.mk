# Container images (images/). Included by the top-level Makefile.
# No Docker engine and no base image from any registry: mmdebstrap makes the Debian root
# filesystem, pip installs the project pinned by constraints.txt into it, buildah writes an
# OCI archive under build/images/ (see images/build.sh). Needs root and the Debian packages
# of devenv/install-image-deps.sh (installed here; `make test` does not need them).
#   make images              build, or print the cached digest when the inputs are unchanged
#   make images-rebuild      build with the cache off
#   make images-repro        rebuild with the cache off and compare with the cached digest
#   make images-triton       the Triton image for the tests (pytriton's tritonserver, CPU)
IMAGE_REGISTRY ?= ghcr.io/modelseal
IMAGES_NICE ?= 10
export IMAGE_REGISTRY

.PHONY: images images-rebuild images-repro images-triton

images: venv ## build the Modelseal image (mmdebstrap + buildah) into build/images/, with SBOM; cached
	bash devenv/install-image-deps.sh
	IMAGES_PYTHON=$(PY) nice -n $(IMAGES_NICE) bash images/build.sh

images-triton: venv ## build the Triton test image (nvidia-pytriton's tritonserver, CPU) the same way; cached
	bash devenv/install-image-deps.sh
	IMAGES_PYTHON=$(PY) nice -n $(IMAGES_NICE) bash images/build.sh triton

images-rebuild: venv ## build the Modelseal image again with the cache off
	bash devenv/install-image-deps.sh
	IMAGES_PYTHON=$(PY) nice -n $(IMAGES_NICE) bash images/build.sh --force

images-repro: images ## rebuild with the cache off and check the digest is the same (reproducible)
	@cp build/images/modelseal-*.digest build/images/previous.digest; \
	for f in build/images/modelseal-*.oci.tar; do cp "$$f" build/images/previous.oci.tar; done; \
	IMAGES_PYTHON=$(PY) nice -n $(IMAGES_NICE) bash images/build.sh --force; \
	before="$$(cat build/images/previous.digest)"; after="$$(cat build/images/modelseal-*.digest)"; \
	if [[ "$$before" == "$$after" ]]; then echo "images-repro: same digest and size: $$after"; \
	else echo "images-repro: DIFFERENT: first $$before, second $$after" \
	  "(first archive kept as build/images/previous.oci.tar)" >&2; exit 1; fi
