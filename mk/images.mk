# Container images (images/). Included by the top-level Makefile.
#   make images        build base + operator/unsealer/gateway with the first container
#                      builder found (docker with a running engine, podman, buildah);
#                      without one, say so and succeed (nothing here needs the images)
#   make images-pin    re-resolve the pinned base image digests (needs registry access)
IMAGE_REGISTRY ?= ghcr.io/modelseal
IMAGE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE_REVISION ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
IMAGE_ROLES := operator unsealer gateway

.PHONY: images images-pin

images:
	@builder=""; \
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then builder=docker; \
	elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then builder=podman; \
	elif command -v buildah >/dev/null 2>&1; then builder="buildah"; fi; \
	if [[ -z "$$builder" ]]; then \
	  echo "images: no container builder here (docker engine not running, no podman or buildah);"; \
	  echo "images: skipped. Build on a machine with one: make images IMAGE_REGISTRY=$(IMAGE_REGISTRY)"; \
	  exit 0; \
	fi; \
	build() { if [[ "$$builder" == buildah ]]; then buildah bud "$$@"; else $$builder build "$$@"; fi; }; \
	created="$$(date -u +%Y-%m-%dT%H:%M:%SZ)"; \
	base="$(IMAGE_REGISTRY)/modelseal:$(IMAGE_VERSION)"; \
	echo "images: building $$base with $$builder"; \
	build -f images/base/Dockerfile -t "$$base" \
	  --build-arg VERSION=$(IMAGE_VERSION) --build-arg REVISION=$(IMAGE_REVISION) \
	  --build-arg CREATED="$$created" . ; \
	for role in $(IMAGE_ROLES); do \
	  echo "images: building $(IMAGE_REGISTRY)/modelseal-$$role:$(IMAGE_VERSION) on $$base"; \
	  build -f images/$$role/Dockerfile -t "$(IMAGE_REGISTRY)/modelseal-$$role:$(IMAGE_VERSION)" \
	    --build-arg BASE_IMAGE="$$base" --build-arg VERSION=$(IMAGE_VERSION) \
	    --build-arg REVISION=$(IMAGE_REVISION) . ; \
	done

images-pin:
	bash images/pin-bases.sh
