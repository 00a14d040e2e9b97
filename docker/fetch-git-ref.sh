#!/bin/sh
# Check out one commit of a git repository (and the named submodules) into DEST, fetching only what it needs:
#   with-build-secrets fetch-git-ref REPO REF DEST [SUBMODULE_PATH...|--recursive]
# --recursive: every submodule, and theirs (PyTorch's third_party tree nests them).
# Why not `git clone --filter=blob:none`: a partial clone fetches blobs lazily during checkout, i.e. in a later
# command that may run outside the CA-bundle wrapper and fails behind a TLS-inspecting proxy. Here every network
# step is a full (shallow) fetch inside this one script, which the caller runs under with-build-secrets.
# DEST may already hold an earlier checkout (a build cache mount): the commit is reused when present.
set -eu
if [ "$#" -lt 3 ]; then
    echo "usage: fetch-git-ref REPO REF DEST [SUBMODULE_PATH...|--recursive]" >&2
    exit 2
fi
repo="$1" ref="$2" dest="$3"
shift 3
if [ ! -d "$dest/.git" ]; then
    git init -q "$dest"
    git -C "$dest" remote add origin "$repo"
fi
git -C "$dest" remote set-url origin "$repo"
if ! git -C "$dest" cat-file -e "$ref^{commit}" 2>/dev/null; then
    git -C "$dest" fetch --quiet --depth 1 origin "$ref"
    git -C "$dest" checkout --quiet --force FETCH_HEAD
else
    git -C "$dest" checkout --quiet --force "$ref"
fi
head="$(git -C "$dest" rev-parse HEAD)"
case "$ref" in
    *[!0-9a-f]*) ;;
    *) if [ "${#ref}" -eq 40 ] && [ "$head" != "$ref" ]; then
           echo "fetch-git-ref: $repo: asked for $ref, checked out $head" >&2
           exit 1
       fi;;
esac
for submodule in "$@"; do
    if [ "$submodule" = "--recursive" ]; then
        git -C "$dest" submodule update --init --recursive --depth 1
    else
        git -C "$dest" submodule update --init --depth 1 "$submodule"
    fi
done
echo "fetch-git-ref: $repo at $head" >&2
