#!/usr/bin/env bash
# `make save` / `make load`: move an image to an air-gapped host as a tarball, with its identity recorded.
#   image-tarball.sh save IMAGE DIR [NAME] -> DIR/NAME.tar.gz, NAME.tar.gz.sha256 (sha256sum format) and NAME.json:
#                                        the image ID (the config digest, which `docker load` keeps), its
#                                        RepoDigests where it was pushed, and its labels (the kit's stack labels).
#   image-tarball.sh load IMAGE DIR [NAME] -> checks the tarball's sha256, loads it, and fails unless the loaded
#                                        image has the ID recorded at save time.
# NAME defaults to IMAGE with '/' and ':' replaced by '_' (make passes clinical-finetune-kit-TAG-VENDOR). Writes go through a temporary file and a rename: an interrupted
# save leaves no tarball that looks complete. DOCKER names the CLI (default: docker).
set -euo pipefail

DOCKER="${DOCKER:-docker}"
usage() { echo "usage: $0 save|load IMAGE DIR [NAME]" >&2; exit 2; }
[[ $# -eq 3 || $# -eq 4 ]] || usage
action="$1" image="$2" dir="$3"
name="${4:-$(printf '%s' "$image" | tr '/:' '__')}"
tarball="$dir/$name.tar.gz"

case "$action" in
save)
    image_id="$($DOCKER image inspect --format '{{.Id}}' "$image")" \
        || { echo "save: no image $image here: build it first (make image-VENDOR)" >&2; exit 2; }
    mkdir -p "$dir"
    $DOCKER save "$image" | gzip -1 > "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    (cd "$dir" && sha256sum "$name.tar.gz") > "$tarball.sha256.tmp"
    mv "$tarball.sha256.tmp" "$tarball.sha256"
    $DOCKER image inspect --format \
        '{"image": {{json .RepoTags}}, "id": {{json .Id}}, "repo_digests": {{json .RepoDigests}}, "labels": {{json .Config.Labels}}}' \
        "$image" | python3 -c '
import json, sys
record = json.load(sys.stdin)
record.update(name=sys.argv[1], tarball=sys.argv[2], tarball_sha256=open(sys.argv[3]).read().split()[0])
json.dump(record, sys.stdout, indent=2, sort_keys=True); print()' "$image" "$name.tar.gz" "$tarball.sha256" \
        > "$dir/$name.json.tmp"
    mv "$dir/$name.json.tmp" "$dir/$name.json"
    echo "saved $image ($image_id) -> $tarball"
    ;;
load)
    for file in "$tarball" "$tarball.sha256" "$dir/$name.json"; do
        [[ -f "$file" ]] || { echo "load: $file is missing (make save writes it beside the tarball)" >&2; exit 2; }
    done
    (cd "$dir" && sha256sum -c "$name.tar.gz.sha256") \
        || { echo "load: $tarball does not match $tarball.sha256: copy it again" >&2; exit 1; }
    expected="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$dir/$name.json")"
    $DOCKER load -i "$tarball"
    actual="$($DOCKER image inspect --format '{{.Id}}' "$image")"
    if [[ "$actual" != "$expected" ]]; then
        echo "load: $image has ID $actual after loading, but $dir/$name.json recorded $expected" >&2
        exit 1
    fi
    echo "loaded $image ($actual, as recorded at save time)"
    ;;
*) usage ;;
esac
