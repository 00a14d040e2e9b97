# clinical-finetune-kit: images, runs, provisioning, tests.   make help
# Variables (override on the command line: make image-rocm TAG=2026.11 REGISTRY=registry.example.org/ml/):
REGISTRY     ?=
TAG          ?= latest
VENDOR       ?= cpu
IMAGE         = $(REGISTRY)clinical-finetune-kit:$(TAG)-$(VENDOR)
# The stack: every version, ref, base digest and GPU target, from ONE file. This Makefile is the one place that
# turns it into --build-arg values; the Dockerfiles' ARG names are the stack.env keys and have no defaults.
# Override a key for one build on the command line: make image-rocm ROCM_GPU_ARCHS=gfx942
include stack.env
ROCM_KEYS = ROCM_VERSION ROCM_BASE ROCM_RUNTIME_BASE ROCM_TORCH ROCM_TORCH_VERSION ROCM_TORCH_REPO ROCM_TORCH_REF \
	ROCM_TORCH_INDEX_URL ROCM_TRITON_VERSION ROCM_GPU_ARCHS ROCM_FLASH_ATTN_REPO ROCM_FLASH_ATTN_REF ROCM_BNB_REPO \
	ROCM_BNB_REF
# The ROCm torch switch (stack.env ROCM_TORCH): source compiles ROCM_TORCH_VERSION; prebuilt installs PyTorch's wheel,
# whose version every ROCm build argument, label and build-info then carries as ROCM_TORCH_VERSION.
ifeq ($(filter source prebuilt,$(ROCM_TORCH)),)
$(error stack.env: ROCM_TORCH must be source or prebuilt, got '$(ROCM_TORCH)')
endif
ifeq ($(ROCM_TORCH),prebuilt)
ROCM_TORCH_VERSION := $(ROCM_TORCH_PREBUILT_VERSION)
endif
CUDA_KEYS = CUDA_VERSION CUDA_DEVEL_BASE CUDA_RUNTIME_BASE CUDA_TORCH_VERSION CUDA_FLASH_ATTN_VERSION \
	CUDA_FLASH_ATTN_URL CUDA_FLASH_ATTN_SHA256 CUDA_ARCH_LIST
CPU_KEYS = CPU_BASE CPU_TORCH_VERSION CPU_TORCH_INDEX_URL
# Parallel compile jobs of the extension builds. Empty: FlashAttention's setup.py sizes it from free memory.
MAX_JOBS     ?=
# CPU image: a folder holding the torch CPU wheel (CI): the index is then not asked at all.
TORCH_WHEELS ?=
ifneq ($(TORCH_WHEELS),)
CPU_TORCH_INDEX_URL =
endif
# A folder written by `make wheelhouse`: every pip install of the image build then runs with --no-index from it.
WHEELHOUSE   ?=
ifneq ($(WHEELHOUSE),)
TORCH_WHEELS = $(WHEELHOUSE)/wheels
CPU_TORCH_INDEX_URL =
endif
# A folder of wheels exported by `make wheels-<vendor>`: the image build reuses them instead of compiling.
WHEELS       ?=
# Extra pyinfra flags for `make provision`, e.g. PROVISION_ARGS="--dry --sudo --limit node1".
PROVISION_ARGS ?=
# `make provision` runs in its own small environment (requirements/provision.txt: pyinfra + PyYAML, no torch).
PROVISION_PYTHON ?= .venv-provision/bin/python
# Extra CA certificates (TLS-inspecting proxy), passed as a BuildKit secret (never in a layer).
CA_BUNDLE    ?=
# Extra flags for `docker buildx build`, e.g. BUILD_FLAGS="--network host --progress plain".
BUILD_FLAGS  ?=
DOCKER       ?= docker
PYTHON       ?= .venv/bin/python
DIST         ?= dist
# File names of `make save` / `make load` in DIST: NAME.tar.gz, NAME.tar.gz.sha256, NAME.json.
SAVE_NAME    ?= clinical-finetune-kit-$(TAG)-$(VENDOR)

comma := ,
PLACEHOLDER_DIGEST := sha256:0000000000000000000000000000000000000000000000000000000000000000
# The commit the image is built from; with uncommitted changes (tracked or new, not ignored files) it says so:
# <commit>-dirty-<first 12 hex of the sha256 of the diff against HEAD and the new files' names and contents>, so a
# label, manifest or run report never claims a commit whose code it did not run. Override: make ... VCS_REF=x
VCS_REF := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VCS_DIRTY := $(shell test -n "$$(git status --porcelain 2>/dev/null)" && { git diff HEAD --binary; \
	git ls-files --others --exclude-standard | while read -r f; do echo "$$f"; cat -- "$$f"; done; } 2>/dev/null \
	| sha256sum | cut -c1-12)
ifneq ($(VCS_DIRTY),)
VCS_REF := $(VCS_REF)-dirty-$(VCS_DIRTY)
endif
# The source label names the public repository: a remote that is a local path (a worktree, a mirror) is not one,
# and credentials in a URL are dropped.
SOURCE_URL := $(shell git remote get-url origin 2>/dev/null | sed -E 's#//[^/@]*@#//#' | grep -E '^(https?|ssh|git)://|^[^/]+@[^/]+:' || true)
# vendor -> its stack keys as --build-arg values (quoted: GPU arch lists hold ';').
upper = $(if $(filter rocm,$(1)),ROCM,$(if $(filter cuda,$(1)),CUDA,CPU))
stack_args = $(foreach k,$($(call upper,$(1))_KEYS),--build-arg '$(k)=$($(k))')
COMMON_ARGS = $(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE)) $(BUILD_FLAGS) \
	$(if $(WHEELHOUSE),--build-context wheelhouse=$(abspath $(WHEELHOUSE)) --build-arg WHEELHOUSE=1)
APP_ARGS = --build-arg VCS_REF=$(VCS_REF) $(if $(SOURCE_URL),--build-arg SOURCE_URL=$(SOURCE_URL))
# ROCm: the exported folder also replaces the torch-wheel stage (with ROCM_TORCH=source it holds the compiled torch).
WHEELS_CONTEXT = $(if $(WHEELS),--build-context wheels=$(abspath $(WHEELS)))
ROCM_WHEELS_CONTEXT = $(if $(WHEELS),$(WHEELS_CONTEXT) --build-context torch-wheel=$(abspath $(WHEELS)))
TORCH_WHEELS_CONTEXT = $(if $(TORCH_WHEELS),--build-context torch-wheels=$(abspath $(TORCH_WHEELS)))
RUNTIME_IMAGE = clinical-finetune-kit-runtime:$(TAG)-$(1)
# Refuse a build whose vendor bases still carry the all-zero placeholder digest (make resolve-digests fills them).
define refuse_placeholders
	@for key in $(filter %_BASE,$($(call upper,$(1))_KEYS)); do \
		case " $(foreach k,$(filter %_BASE,$($(call upper,$(1))_KEYS)),$(k)=$($(k))) " in *" $$key="*"$(PLACEHOLDER_DIGEST) "*) \
			echo "$@: $$key in stack.env has the placeholder digest (all zeros): nothing is pinned yet." >&2; \
			echo "  Where a registry is reachable run 'make resolve-digests' (docker buildx imagetools inspect for every" >&2; \
			echo "  base tag, written into stack.env), review 'git diff stack.env', then 'make $@' again." >&2; exit 2;; esac; \
	done
endef
# The runtime stage of Dockerfile.<vendor> into a local tag, then the one app stage (Dockerfile.app) on top of it.
define build_image
	$(DOCKER) buildx build -f Dockerfile.$(1) --target runtime $(call stack_args,$(1)) $(if $(MAX_JOBS),--build-arg MAX_JOBS=$(MAX_JOBS)) \
		$(2) $(COMMON_ARGS) --load -t $(call RUNTIME_IMAGE,$(1)) .
	$(DOCKER) buildx build -f Dockerfile.app --build-arg RUNTIME_IMAGE=$(call RUNTIME_IMAGE,$(1)) \
		--build-arg IMAGE_LOCK=image-$(1).lock --build-arg KIT_VENDOR=$(1) \
		--build-arg 'KIT_STACK=$(foreach k,$($(call upper,$(1))_KEYS),$(k)=$($(k)))' $(APP_ARGS) $(COMMON_ARGS) --load -t $(REGISTRY)clinical-finetune-kit:$(TAG)-$(1) .
endef

.DEFAULT_GOAL := help
.PHONY: help env resolve-digests image-rocm image-cuda image-cpu wheels-rocm wheels-cuda push save load finetune \
	evaluate check shell provision demo test test-fast test-compat lint locks locks-check base-local wheelhouse parity

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: VENDOR=cpu|rocm|cuda REGISTRY TAG WHEELHOUSE WHEELS TORCH_WHEELS CA_BUNDLE BUILD_FLAGS MAX_JOBS, and any stack.env key"

ENV_UPDATE = DOCKER="$(DOCKER)" bash docker/compose-env.sh --update .env $(VENDOR) $(TAG) "$(REGISTRY)"
env: ## write or update .env for compose (UID/GID, video/render GIDs, KIT_VENDOR/KIT_TAG, image ID); your lines stay
	@$(ENV_UPDATE)

resolve-digests: ## pin the *_BASE tags in stack.env that have no digest yet (REFRESH=1: every one); prints the diff
	python3 docker/resolve_digests.py --docker "$(DOCKER)" $(if $(REFRESH),--refresh) stack.env

image-rocm: ## build the ROCm image (torch + FlashAttention compiles: hours; WHEELS=dist/wheels-rocm reuses wheels)
	$(call refuse_placeholders,rocm)
	$(call build_image,rocm,$(ROCM_WHEELS_CONTEXT))

image-cuda: ## build the CUDA image (WHEELS=dist/wheels-cuda reuses an exported FlashAttention wheel)
	$(call refuse_placeholders,cuda)
	$(call build_image,cuda,$(WHEELS_CONTEXT))

image-cpu: ## build the CPU image (CI, GPU-less machines; TORCH_WHEELS=DIR takes torch from a wheel folder)
	$(call refuse_placeholders,cpu)
	$(call build_image,cpu,$(TORCH_WHEELS_CONTEXT))

wheels-rocm: ## compile torch (ROCM_TORCH=source), FlashAttention (CK), bitsandbytes (HIP) once, export to dist/wheels-rocm
	$(call refuse_placeholders,rocm)
	$(DOCKER) buildx build -f Dockerfile.rocm --target wheels $(call stack_args,rocm) $(if $(MAX_JOBS),--build-arg MAX_JOBS=$(MAX_JOBS)) \
		$(COMMON_ARGS) --output type=local,dest=$(DIST)/wheels-rocm .

wheels-cuda: ## compile FlashAttention for the CUDA_ARCH_LIST targets once, export the wheel to dist/wheels-cuda
	$(call refuse_placeholders,cuda)
	$(DOCKER) buildx build -f Dockerfile.cuda --target wheels $(call stack_args,cuda) $(if $(MAX_JOBS),--build-arg MAX_JOBS=$(MAX_JOBS)) \
		$(COMMON_ARGS) --output type=local,dest=$(DIST)/wheels-cuda .

push: ## push $(IMAGE) (VENDOR=..., REGISTRY=host/path/ required)
	@test -n "$(REGISTRY)" || { echo "push: set REGISTRY=host/path/ (with the trailing slash)" >&2; exit 2; }
	$(DOCKER) push $(IMAGE)

wheelhouse: ## on a connected machine: every wheel + pinned source archive the VENDOR image needs, with SHA256SUMS (creates .venv)
	bash scripts/bootstrap.sh
	$(PYTHON) scripts/airgap/wheelhouse.py --vendor $(VENDOR) --output $(DIST)/wheelhouse

save: ## write $(IMAGE) to dist/ as .tar.gz + .sha256 + .json (image ID, digests, labels), for air-gapped hosts
	DOCKER="$(DOCKER)" bash scripts/airgap/image-tarball.sh save $(IMAGE) $(DIST) $(SAVE_NAME)

load: ## load $(IMAGE) from dist/: checks the sha256, then that the loaded image has the ID recorded by save
	DOCKER="$(DOCKER)" bash scripts/airgap/image-tarball.sh load $(IMAGE) $(DIST) $(SAVE_NAME)

base-local: ## no registry: make a Debian 12 + Python base from Debian packages (debootstrap) and print its tag
	@bash scripts/ci/docker-cpu-base.sh
	@echo "then build the CPU image on it (docs/airgap.md, 'The base image without a registry'):" >&2
	@echo "  make image-cpu CPU_BASE=$${CKIT_CPU_BASE_TAG:-ckit-ci/bookworm-python:3.11} BUILD_FLAGS=\"--network host\" CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt TORCH_WHEELS=DIR" >&2
	@echo "  BUILD_FLAGS=\"--network host\": an engine without a bridge network (leave it out where builds have one)" >&2
	@echo "  CA_BUNDLE: behind a TLS-inspecting proxy, its CA certificates (a build secret, never in a layer)" >&2
	@echo "  TORCH_WHEELS=DIR holding the torch CPU wheel, or WHEELHOUSE=dist/wheelhouse (make wheelhouse): needed where" >&2
	@echo "  $(CPU_TORCH_INDEX_URL) is unreachable; without either, pip retries it for about 80 s, then fails" >&2

# The run targets go through docker/compose/run.sh: it creates the bound folders as you first (else dockerd would
# make them root's), names a mistyped KIT_DATA_DIR, says to fine-tune before evaluating the demo run, and explains
# runc's "error setting rlimit type 8" with the setting that fixes it (KIT_MEMLOCK in .env). Each first rewrites
# .env's computed keys as `make env` does (the image ID above all), without printing the file.
COMPOSE = KIT_VENDOR=$(VENDOR) KIT_TAG=$(TAG) KIT_REGISTRY=$(REGISTRY) bash docker/compose/run.sh $(DOCKER) compose
ARGS ?=
finetune: ## docker compose run finetune (ARGS="--recipe recipes/X.yaml train.steps=10")
	@$(ENV_UPDATE) >/dev/null
	$(COMPOSE) run --rm finetune $(ARGS)

evaluate: ## docker compose run evaluate (ARGS="--model ... --data ... --output ..."); after make finetune
	@$(ENV_UPDATE) >/dev/null
	$(COMPOSE) run --rm evaluate $(ARGS)

check: ## docker compose run check: is this machine and image fit to train?
	@$(ENV_UPDATE) >/dev/null
	$(COMPOSE) run --rm check $(ARGS)

shell: ## a shell in the image, same mounts and devices as the jobs
	@$(ENV_UPDATE) >/dev/null
	$(COMPOSE) run --rm shell

provision: ## provision GPU hosts with pyinfra (PROVISION_ARGS="--dry" shows the plan; docs/provisioning.md)
	bash scripts/ci/provision-env.sh
	$(PROVISION_PYTHON) -m provision.run --data kit_image_name=$(REGISTRY)clinical-finetune-kit $(PROVISION_ARGS)

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

# The paths `make lint` (and so CI) checks with ruff: every Python folder of the kit. Keep them clean:
# `.venv/bin/ruff check --fix <folder>` fixes most findings (rules: pyproject.toml [tool.ruff]).
RUFF_PATHS = checks kit pipeline provision docker scripts tests
lint: ## ruff on RUFF_PATHS, hadolint the Dockerfiles, validate compose for every vendor
	bash scripts/bootstrap.sh
	$(PYTHON) -m ruff check $(RUFF_PATHS)
	.venv/bin/hadolint --config .hadolint.yaml Dockerfile.rocm Dockerfile.cuda Dockerfile.cpu Dockerfile.app
	for vendor in cpu rocm cuda; do \
		KIT_VENDOR=$$vendor KIT_VIDEO_GID=44 KIT_RENDER_GID=109 $(DOCKER) compose -f compose.yaml config --quiet || exit 1; \
		echo "compose config ($$vendor): ok"; \
	done

locks: ## regenerate requirements/image-*.lock from their .in files (needs PyPI)
	bash scripts/ci/docker-locks.sh

# Not in `make test`: a registry's answer at a fixed cutoff can change over time (a scheduled job, or before `make locks`).
locks-check: ## re-resolve every lock against PyPI at LOCK_EXCLUDE_NEWER, name each package that moved (needs PyPI)
	bash scripts/ci/docker-locks.sh --check

parity: ## lm-eval parity test on all 300 MedQA questions (installs lm-eval 0.4.13 into .lmeval-site first)
	bash scripts/bootstrap.sh
	bash scripts/ci/lmeval-env.sh
	KIT_REQUIRE_LMEVAL=1 KIT_PARITY_QUESTIONS=300 $(PYTHON) -m pytest tests/pipeline/test_lm_eval_parity.py $(ARGS)
