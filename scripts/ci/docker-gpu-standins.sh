#!/usr/bin/env bash
# Stand-in vendor bases, so that CI can build every stage of Dockerfile.rocm and Dockerfile.cuda (no image registry
# is reachable here: rocm/dev-ubuntu-22.04, nvidia/cuda and ubuntu:22.04 cannot be pulled). All three are made from
# Ubuntu 22.04's own packages (debootstrap jammy: the vendor images' OS, so python3.10 and every apt step of the
# Dockerfiles install the real Ubuntu packages) plus a local, signed apt repository that stands in for AMD's and
# NVIDIA's, holding tiny packages with the vendor package names and the files the builds read:
#   $PREFIX/jammy:22.04               debootstrap jammy minbase, Ubuntu's apt sources, no CA store: ubuntu:22.04
#   $PREFIX/standin-rocm-dev:6.1.2    + AMD's apt source, key and pin (the stand-in repository) and `rocm-dev` from
#                                     it: /opt/rocm-6.1.2 (/opt/rocm), .info/version, hipconfig, roc-obj-ls
#   $PREFIX/standin-cuda-devel:12.1.1 + NVIDIA's apt source and keyring, nvcc and cuobjdump in /usr/local/cuda-12.1,
#                                     NVIDIA's ENV (PATH, LD_LIBRARY_PATH, CUDA_VERSION)
# Both vendor bases carry /usr/local/bin/ckit-standin-wheel (tests/images/standin/ckit_standin_wheel.py), the
# stand-in for the inside of the extension compiles. The stand-in tools are tests/images/standin/.
#   bash scripts/ci/docker-gpu-standins.sh          # make what is missing; prints KEY=value lines (tags, repo, port)
#   bash scripts/ci/docker-gpu-standins.sh serve    # serve the repository on 127.0.0.1:$PORT (foreground)
# The repository must be served whenever an image built FROM a stand-in base runs `apt-get update`.
# Needs root, debootstrap, dpkg-deb, apt-ftparchive, gpg and a running engine (docker-engine.sh's env).
set -euo pipefail
SELF="$(realpath "$0")"
cd "$(dirname "$SELF")/../.."

PREFIX="${CKIT_STANDIN_PREFIX:-ckit-ci}"
WORK="${CKIT_STANDIN_WORK:-/var/tmp/ckit-gpu-standins}"
PORT="${CKIT_STANDIN_PORT:-18631}"
UBUNTU_MIRROR="${CKIT_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
UBUNTU_SECURITY="${CKIT_UBUNTU_SECURITY:-http://security.ubuntu.com/ubuntu}"
# Ubuntu's archive keys, from Ubuntu's own package (Debian 12 does not ship them), pinned by the file's sha256.
KEYRING_DEB="ubuntu-keyring_2021.03.26_all.deb"
KEYRING_SHA256=0d0e7ed6b112f5d03eabf3c7eb01ebdacf9c57714b279e90495cfc58c8c4520f
JAMMY="$PREFIX/jammy:22.04"
ROCM_DEV="$PREFIX/standin-rocm-dev:6.1.2"
CUDA_DEVEL="$PREFIX/standin-cuda-devel:12.1.1"
REPO="$WORK/repo"
STANDIN=tests/images/standin
log() { echo "docker-gpu-standins: $*" >&2; }

if [[ "${1:-}" == "serve" ]]; then
    exec python3 -m http.server --bind 127.0.0.1 --directory "$REPO" "$PORT"
fi

have() { docker image inspect "$1" >/dev/null 2>&1; }

jammy_base() {
    have "$JAMMY" && return 0
    mkdir -p "$WORK"
    local deb="$WORK/$KEYRING_DEB" rootfs="$WORK/jammy-rootfs"
    [[ -f "$deb" ]] || python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$UBUNTU_MIRROR/pool/main/u/ubuntu-keyring/$KEYRING_DEB" "$deb"
    echo "$KEYRING_SHA256  $deb" | sha256sum -c --quiet
    rm -rf "$WORK/keyring" && dpkg-deb -x "$deb" "$WORK/keyring"
    rm -rf "$rootfs" && mkdir -p "$rootfs"
    log "debootstrap jammy (minbase) into $rootfs"
    debootstrap --variant=minbase --keyring="$WORK/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg" \
        jammy "$rootfs" "$UBUNTU_MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    # ubuntu:22.04's sources and trimming: main..multiverse of jammy, -updates, -security; no lists or caches.
    printf 'deb %s jammy main restricted universe multiverse\ndeb %s jammy-updates main restricted universe multiverse\ndeb %s jammy-security main restricted universe multiverse\n' \
        "$UBUNTU_MIRROR" "$UBUNTU_MIRROR" "$UBUNTU_SECURITY" > "$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    log "docker import as $JAMMY"
    tar -C "$rootfs" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' --message "debootstrap jammy minbase (stand-in for ubuntu:22.04)" - "$JAMMY" >&2
    rm -rf "$rootfs"
}

# deb NAME DEPENDS [SRC:DEST]...: one stand-in package (version of ROCm 6.1.2 / CUDA 12.1.1 packages) into the pool.
deb() {
    local name="$1" depends="$2" tree="$WORK/debs/$1" spec
    shift 2
    rm -rf "$tree" && mkdir -p "$tree/DEBIAN"
    for spec in "$@"; do
        if [[ "$spec" == link:* ]]; then  # link:TARGET:PATH
            IFS=: read -r _ target path <<< "$spec"
            mkdir -p "$tree/$(dirname "$path")" && ln -s "$target" "$tree/$path"
        else
            mkdir -p "$tree/$(dirname "${spec#*:}")" && cp -p "${spec%%:*}" "$tree/${spec#*:}"
        fi
    done
    mkdir -p "$tree/usr/share/doc/$name"
    echo "ckit stand-in for the vendor package $name (scripts/ci/docker-gpu-standins.sh)" > "$tree/usr/share/doc/$name/standin"
    printf 'Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: clinical-finetune-kit CI <ci@localhost>\n%sDescription: stand-in for %s\n' \
        "$name" "$VERSION" "${depends:+Depends: $depends
}" "$name" > "$tree/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip --build "$tree" "$POOL/${name}_${VERSION}_amd64.deb" >/dev/null
}

# sign_dist TOP PACKAGES_DIR RELEASE_DIR SUITE: Packages (of TOP/pool), Release and InRelease, signed with the
# throwaway key (so the runtime stage's copy of the base's apt keys is needed for real).
sign_dist() {
    local top="$1" packages="$2" release="$3" suite="$4"
    (cd "$top" && apt-ftparchive packages pool > "$packages/Packages" && gzip -kf "$packages/Packages")
    apt-ftparchive -o "APT::FTPArchive::Release::Origin=ckit-standin" -o "APT::FTPArchive::Release::Suite=$suite" \
        -o "APT::FTPArchive::Release::Codename=$suite" release "$release" > "$WORK/Release" \
        && mv "$WORK/Release" "$release/Release"
    gpg --homedir "$WORK/gnupg" --batch --yes --clearsign -o "$release/InRelease" "$release/Release"
}

inputs_hash() { cat "$SELF" "$STANDIN"/* | sha256sum | cut -d' ' -f1; }

apt_repository() {
    [[ -f "$REPO/.done" && "$(cat "$REPO/.done")" == "$(inputs_hash)" ]] && return 0
    rm -rf "$REPO" "$WORK/debs" && mkdir -p "$WORK/gnupg" && chmod 700 "$WORK/gnupg"
    if ! gpg --homedir "$WORK/gnupg" --list-secret-keys ckit-standin >/dev/null 2>&1; then
        gpg --homedir "$WORK/gnupg" --batch --passphrase '' --quick-gen-key ckit-standin ed25519 sign never 2>/dev/null
    fi
    gpg --homedir "$WORK/gnupg" --export ckit-standin > "$WORK/standin.gpg"
    local r=/opt/rocm-6.1.2
    # AMD: repo.radeon.com/rocm/apt/6.1.2 jammy main
    local rocm="$REPO/rocm/apt/6.1.2"
    POOL="$rocm/pool/main" VERSION="6.1.2.60102-119~22.04"
    mkdir -p "$POOL" "$rocm/dists/jammy/main/binary-amd64"
    deb rocm-core "" "$STANDIN/rocm-version:$r/.info/version" "link:rocm-6.1.2:opt/rocm"
    deb hip-dev rocm-core "$STANDIN/hipconfig:$r/bin/hipconfig" "$STANDIN/roc-obj-ls:$r/bin/roc-obj-ls"
    deb rocm-dev "hip-dev, rocm-core"
    local lib
    # The runtime and -dev packages Dockerfile.rocm installs (its torch-compile stage: the libraries PyTorch's
    # LoadHIP.cmake finds; the runtime: those a source-built torch links).
    local libs=(hip-runtime-amd hipblas hipblaslt hipcub hipfft hiprand hipsolver hipsparse miopen-hip rccl rocblas
        rocfft rocprim rocrand rocsolver rocsparse rocthrust roctracer rocm-smi-lib rocminfo)
    # The hip* wrappers depend on the roc* library they wrap, as AMD's packages do (the runtime relies on that for
    # rocBLAS and rocRAND: docs/images.md).
    local -A wraps=([hipblas]=rocblas [hiprand]=rocrand [hipsolver]=rocsolver [hipfft]=rocfft [hipsparse]=rocsparse)
    for lib in "${libs[@]}"; do deb "$lib" "rocm-core${wraps[$lib]:+, ${wraps[$lib]}}"; done
    for lib in hipblas hipblaslt hipcub hipfft hiprand hipsolver hipsparse miopen-hip rccl rocblas rocprim rocrand \
        rocsolver rocthrust roctracer; do deb "$lib-dev" "$lib, hip-dev"; done
    sign_dist "$rocm" "$rocm/dists/jammy/main/binary-amd64" "$rocm/dists/jammy" jammy
    # NVIDIA: developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64 / (a flat repository)
    local cuda="$REPO/cuda/ubuntu2204/x86_64"
    POOL="$cuda/pool" VERSION="12.1.105-1"
    mkdir -p "$POOL"
    deb cuda-nvcc-12-1 "" "$STANDIN/nvcc:usr/local/cuda-12.1/bin/nvcc" "link:cuda-12.1:usr/local/cuda"
    deb cuda-cuobjdump-12-1 "" "$STANDIN/cuobjdump:usr/local/cuda-12.1/bin/cuobjdump"
    sign_dist "$cuda" "$cuda" "$cuda" ./
    inputs_hash > "$REPO/.done"
}

# vendor_base TAG: the stand-in vendor base, made the way the vendor makes its image (apt from the vendor's repo).
vendor_base() {
    have "$1" && [[ "$(docker image inspect -f '{{ index .Config.Labels "ckit.standin.repo" }}' "$1")" == "$(cat "$REPO/.done")" ]] \
        && return 0
    local ctx="$WORK/context" url="http://127.0.0.1:$PORT"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$WORK/standin.gpg" "$STANDIN/ckit_standin_wheel.py" "$ctx/"
    if [[ "$1" == "$ROCM_DEV" ]]; then
        # AMD's ROCm 6.1 install guide: signed-by keyring in /etc/apt/keyrings, rocm.list, a 600 pin.
        # The comment names the repository's contents: the runtime stage bind-mounts the base's /etc/apt, so a
        # changed stand-in repository must change those files, or BuildKit reuses apt layers of the old one.
        printf '# ckit stand-in repository %s\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/rocm.gpg] %s/rocm/apt/6.1.2 jammy main\n' \
            "$(cat "$REPO/.done")" "$url" > "$ctx/rocm.list"
        printf 'Package: *\nPin: release o=ckit-standin\nPin-Priority: 600\n' > "$ctx/rocm-pin-600"
        cat > "$ctx/Dockerfile" <<EOF
FROM $JAMMY
COPY standin.gpg /etc/apt/keyrings/rocm.gpg
COPY rocm.list /etc/apt/sources.list.d/rocm.list
COPY rocm-pin-600 /etc/apt/preferences.d/rocm-pin-600
RUN apt-get update && apt-get install -y --no-install-recommends rocm-dev && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 ckit_standin_wheel.py /usr/local/bin/ckit-standin-wheel
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/rocm/bin
LABEL ckit.standin.repo="$(cat "$REPO/.done")"
EOF
    else
        echo "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] $url/cuda/ubuntu2204/x86_64/ /" \
            > "$ctx/cuda-ubuntu2204-x86_64.list"
        cat > "$ctx/Dockerfile" <<EOF
FROM $JAMMY
COPY standin.gpg /usr/share/keyrings/cuda-archive-keyring.gpg
COPY cuda-ubuntu2204-x86_64.list /etc/apt/sources.list.d/
RUN apt-get update && apt-get install -y --no-install-recommends cuda-nvcc-12-1 cuda-cuobjdump-12-1 \
    && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 ckit_standin_wheel.py /usr/local/bin/ckit-standin-wheel
ENV NVARCH=x86_64 CUDA_VERSION=12.1.1 \
    PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL ckit.standin.repo="$(cat "$REPO/.done")"
EOF
    fi
    log "building $1"
    docker buildx build --network host --progress plain -t "$1" --load "$ctx" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log" >&2; exit 1; }
}

tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v apt-ftparchive >/dev/null || missing+=(apt-utils)
    command -v gpg >/dev/null || missing+=(gnupg)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; }
}

tools
jammy_base
apt_repository
python3 -m http.server --bind 127.0.0.1 --directory "$REPO" "$PORT" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
sleep 1
vendor_base "$ROCM_DEV"
vendor_base "$CUDA_DEVEL"
echo "JAMMY=$JAMMY"
echo "ROCM_DEV=$ROCM_DEV"
echo "CUDA_DEVEL=$CUDA_DEVEL"
echo "REPO=$REPO"
echo "PORT=$PORT"
echo "WORK=$WORK"
