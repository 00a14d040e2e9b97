# clinical-finetune-kit: images, runs, provisioning, tests.   make help
# Variables (override on the command line: make image-rocm TAG=2026.11 REGISTRY=registry.example.org/ml/):
REGISTRY     ?=
TAG          ?= latest
VENDOR       ?= cpu
IMAGE         = $(REGISTRY)clinical-finetune-kit:$(TAG)-$(VENDOR)
# Pins (defaults live in the Dockerfiles; set these only to build another combination: docs/images.md)
ROCM_VERSION ?=
ROCM_BASE    ?=
TORCH_VERSION ?=
GPU_ARCHS    ?=
MAX_JOBS     ?=
FLASH_ATTN_REF ?=
TORCH_CUDA_ARCH_LIST ?=
# CPU image: another base (CI passes a locally made one) and a folder holding the torch CPU wheel.
CPU_BASE     ?=
TORCH_WHEELS ?=
# A folder of wheels exported by `make wheels-<vendor>`: the image build reuses them instead of compiling.
WHEELS       ?=
# Extra pyinfra flags for `make provision`, e.g. PROVISION_ARGS="--dry --sudo --limit node1".
PROVISION_ARGS ?=
# Extra CA certificates (TLS-inspecting proxy) and a hub token file, passed as BuildKit secrets (never in layers).
CA_BUNDLE    ?=
HF_TOKEN_FILE ?=
# Extra flags for `docker buildx build`, e.g. BUILD_FLAGS="--network host --progress plain".
BUILD_FLAGS  ?=
DOCKER       ?= docker
PYTHON       ?= .venv/bin/python
DIST         ?= dist

comma := ,
VCS_REF := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
SOURCE_URL := $(shell git remote get-url origin 2>/dev/null | sed -E 's#//[^/@]*@#//#' || true)
build_arg = $(if $($(1)),--build-arg $(1)=$($(1)))
BUILD_ARGS = --build-arg VCS_REF=$(VCS_REF) $(if $(SOURCE_URL),--build-arg SOURCE_URL=$(SOURCE_URL)) \
	$(foreach v,ROCM_VERSION TORCH_VERSION GPU_ARCHS MAX_JOBS FLASH_ATTN_REF TORCH_CUDA_ARCH_LIST,$(call build_arg,$(v))) \
	$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE)) \
	$(if $(HF_TOKEN_FILE),--secret id=hf_token$(comma)src=$(HF_TOKEN_FILE)) \
	$(BUILD_FLAGS)
WHEELS_CONTEXT = $(if $(WHEELS),--build-context wheels=$(abspath $(WHEELS)))
# The digest placeholder in Dockerfile.rocm (all zeros): refused until a real digest is filled in.
ROCM_BASE_EFFECTIVE = $(or $(ROCM_BASE),$(shell sed -n 's/^ARG ROCM_BASE=//p' Dockerfile.rocm))

.DEFAULT_GOAL := help
.PHONY: help env image-rocm image-cuda image-cpu wheels-rocm wheels-cuda push save load finetune evaluate check \
	shell provision demo test test-fast test-compat lint locks

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: VENDOR=cpu|rocm|cuda REGISTRY TAG WHEELS CPU_BASE TORCH_WHEELS CA_BUNDLE HF_TOKEN_FILE BUILD_FLAGS and the pins"
	@echo "  ROCM_VERSION ROCM_BASE TORCH_VERSION GPU_ARCHS MAX_JOBS FLASH_ATTN_REF TORCH_CUDA_ARCH_LIST (docs/images.md)"

env: ## write .env for compose: your UID/GID, the host's video and render GIDs, KIT_VENDOR/KIT_TAG
	@bash docker/compose-env.sh $(VENDOR) $(TAG) "$(REGISTRY)" > .env.tmp && mv .env.tmp .env && cat .env

image-rocm: ## build the ROCm image (FlashAttention compile: hours; WHEELS=dist/wheels-rocm reuses wheels)
	@case "$(ROCM_BASE_EFFECTIVE)" in *sha256:0000000000000000000000000000000000000000000000000000000000000000*) \
		echo "image-rocm: ROCM_BASE has the placeholder digest ($(ROCM_BASE_EFFECTIVE))." >&2; \
		echo "  Look up the real one where a registry is reachable and pass it (or write it into Dockerfile.rocm):" >&2; \
		echo "  docker buildx imagetools inspect rocm/dev-ubuntu-22.04:6.1.2 --format '{{json .Manifest.Digest}}'" >&2; \
		echo "  make image-rocm ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@sha256:<digest>" >&2; exit 2;; esac
	$(DOCKER) buildx build -f Dockerfile.rocm --target app $(BUILD_ARGS) $(WHEELS_CONTEXT) \
		--build-arg ROCM_BASE=$(ROCM_BASE_EFFECTIVE) --load -t $(REGISTRY)clinical-finetune-kit:$(TAG)-rocm .

image-cuda: ## build the CUDA image (WHEELS=dist/wheels-cuda reuses an exported FlashAttention wheel)
	$(DOCKER) buildx build -f Dockerfile.cuda --target app $(BUILD_ARGS) $(WHEELS_CONTEXT) \
		--load -t $(REGISTRY)clinical-finetune-kit:$(TAG)-cuda .

image-cpu: ## build the CPU image (CI, GPU-less machines)
	$(DOCKER) buildx build -f Dockerfile.cpu --target app $(BUILD_ARGS) $(call build_arg,CPU_BASE) \
		$(if $(TORCH_WHEELS),--build-context torch-wheels=$(abspath $(TORCH_WHEELS)) --build-arg TORCH_INDEX_URL=) --load -t $(REGISTRY)clinical-finetune-kit:$(TAG)-cpu .

wheels-rocm: ## compile FlashAttention (CK) + bitsandbytes (HIP) once, export the wheels to dist/wheels-rocm
	@case "$(ROCM_BASE_EFFECTIVE)" in *sha256:0000000000000000000000000000000000000000000000000000000000000000*) \
		echo "wheels-rocm: ROCM_BASE has the placeholder digest: see 'make image-rocm'" >&2; exit 2;; esac
	$(DOCKER) buildx build -f Dockerfile.rocm --target wheels $(BUILD_ARGS) \
		--build-arg ROCM_BASE=$(ROCM_BASE_EFFECTIVE) --output type=local,dest=$(DIST)/wheels-rocm .

wheels-cuda: ## compile FlashAttention for sm80/sm90 once, export the wheel to dist/wheels-cuda
	$(DOCKER) buildx build -f Dockerfile.cuda --target wheels $(BUILD_ARGS) --output type=local,dest=$(DIST)/wheels-cuda .

push: ## push $(IMAGE) (VENDOR=..., REGISTRY=host/path/ required)
	@test -n "$(REGISTRY)" || { echo "push: set REGISTRY=host/path/ (with the trailing slash)" >&2; exit 2; }
	$(DOCKER) push $(IMAGE)

save: ## write $(IMAGE) to dist/ as a .tar.gz, for air-gapped hosts
	@mkdir -p $(DIST)
	$(DOCKER) save $(IMAGE) | gzip -1 > $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz.tmp
	mv $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz.tmp $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz
	sha256sum $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz > $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz.sha256

load: ## load dist/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz after checking its sha256
	sha256sum -c $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz.sha256
	$(DOCKER) load -i $(DIST)/clinical-finetune-kit-$(TAG)-$(VENDOR).tar.gz

COMPOSE = KIT_VENDOR=$(VENDOR) KIT_TAG=$(TAG) KIT_REGISTRY=$(REGISTRY) $(DOCKER) compose
ARGS ?=
finetune: env ## docker compose run finetune (ARGS="--recipe recipes/X.yaml train.steps=10")
	$(COMPOSE) run --rm finetune $(ARGS)

evaluate: env ## docker compose run evaluate (ARGS="--model ... --data ... --output ...")
	$(COMPOSE) run --rm evaluate $(ARGS)

check: env ## docker compose run check: is this machine and image fit to train?
	$(COMPOSE) run --rm check $(ARGS)

shell: env ## a shell in the image, same mounts and devices as the jobs
	$(COMPOSE) run --rm shell

provision: ## provision GPU hosts with pyinfra (PROVISION_ARGS="--dry" shows the plan; docs/provisioning.md)
	bash scripts/bootstrap.sh
	.venv/bin/pyinfra provision/inventory.py provision/deploy.py --data kit_image_name=$(REGISTRY)clinical-finetune-kit $(PROVISION_ARGS)

demo: ## the embedded demo on this machine's CPU: creates .venv when missing
	bash scripts/demo.sh

test: ## the full test suite, what CI runs: slow end-to-end, Docker and chroot tests included (creates .venv)
	bash scripts/bootstrap.sh
	$(PYTHON) -m pytest $(ARGS)

test-fast: ## the edit loop: every test except those marked slow, docker or chroot (seconds to a few minutes)
	bash scripts/bootstrap.sh
	$(PYTHON) -m pytest -m "not slow and not docker and not chroot" $(ARGS)

test-compat: ## the pipeline and checks tests on the images' stack (torch 2.3.1, Python 3.10) in .venv-torch23
	bash scripts/ci/compat-env.sh
	.venv-torch23/bin/python -m pytest tests/pipeline tests/checks $(ARGS)

# The paths `make lint` (and so CI) checks with ruff: the ones that pass today. Add a folder once
# `.venv/bin/ruff check <folder>` passes (rules: pyproject.toml [tool.ruff]).
RUFF_PATHS = checks kit tests/checks tests/kit tests/test_import_graph.py
lint: ## ruff on RUFF_PATHS, hadolint the Dockerfiles, validate compose for every vendor
	bash scripts/bootstrap.sh
	$(PYTHON) -m ruff check $(RUFF_PATHS)
	.venv/bin/hadolint --config .hadolint.yaml Dockerfile.rocm Dockerfile.cuda Dockerfile.cpu
	for vendor in cpu rocm cuda; do \
		KIT_VENDOR=$$vendor KIT_VIDEO_GID=44 KIT_RENDER_GID=109 $(DOCKER) compose -f compose.yaml config --quiet || exit 1; \
		echo "compose config ($$vendor): ok"; \
	done

locks: ## regenerate requirements/image-*.lock from their .in files (needs PyPI)
	bash scripts/ci/docker-locks.sh
