#!/bin/sh
# Unpack one source archive of the wheelhouse (`make wheelhouse`, scripts/airgap/wheelhouse.py) into DEST, after
# checking it: the GPU images' compile stages use this instead of the network when built with WHEELHOUSE=1.
#   wheelhouse-source FILE DEST [PINNED_SHA256]
# FILE is a name under $WHEELHOUSE_DIR/sources (default /wheelhouse, the `wheelhouse` build context). Its sha256
# must be the one SHA256SUMS records for sources/FILE, and PINNED_SHA256 when given (a checksum stack.env pins).
# Every member must lie under FILE's own top folder (FILE without .tar.gz), whose contents land in DEST.
# DEST may hold an earlier unpack of the same archive (a build cache mount): it is kept, with the objects a
# previous compile left there; any other content is replaced.
set -eu
if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: wheelhouse-source FILE DEST [PINNED_SHA256]" >&2
    exit 2
fi
file="$1" dest="$2" pinned="${3:-}"
house="${WHEELHOUSE_DIR:-/wheelhouse}"
archive="$house/sources/$file"
fail() {
    echo "wheelhouse-source: $*" >&2
    exit 1
}
[ -f "$archive" ] || fail "$archive is missing: build the wheelhouse from this commit's stack.env" \
    "(make wheelhouse VENDOR=rocm|cuda) and pass it with WHEELHOUSE=DIR"
[ -f "$house/SHA256SUMS" ] || fail "$house/SHA256SUMS is missing: not a folder written by make wheelhouse"
recorded="$(awk -v f="sources/$file" '$2 == f { print $1 }' "$house/SHA256SUMS")"
[ -n "$recorded" ] || fail "$house/SHA256SUMS has no line for sources/$file"
actual="$(sha256sum "$archive" | cut -d' ' -f1)"
[ "$actual" = "$recorded" ] || fail "$archive: sha256 $actual, SHA256SUMS records $recorded"
if [ -n "$pinned" ] && [ "$actual" != "$pinned" ]; then
    fail "$archive: sha256 $actual, stack.env pins $pinned"
fi
if [ -f "$dest/.wheelhouse-source" ] && [ "$(cat "$dest/.wheelhouse-source")" = "$actual" ]; then
    echo "wheelhouse-source: $file already unpacked in $dest" >&2
    exit 0
fi
top="${file%.tar.gz}"
outside="$(tar -tzf "$archive" | grep -v -e "^$top/" -e "^$top\$" | head -n 1 || true)"
[ -z "$outside" ] || fail "$archive: member '$outside' is not under $top/"
rm -rf "$dest"
mkdir -p "$dest"
tar -xzf "$archive" -C "$dest" --strip-components=1 --no-same-owner
echo "$actual" > "$dest/.wheelhouse-source"
echo "wheelhouse-source: $file ($actual) -> $dest" >&2
