#!/usr/bin/env bash
# Download the PhotoTourism (IMW2020 training) validation scenes of docs/file-formats.md §4 and
# pre-compute their overlapping pairs:
#   reichstag sacre_coeur st_peters_square taj_mahal temple_nara_japan
# from https://www.cs.ubc.ca/research/kmyi_data/imw2020/TrainingData/<scene>.tar.gz,
# extracted into <target>/<scene>/dense/{images,sparse}, then
#   python -m data_pairs.precompute_immatch_val_ovs --data_root <target>
# Usage: bash data/prepare_immatch_val_data.sh [target_dir]
#        (default: data/immatch_benchmark/val_dense; also $PATCH2PIX_VAL_DIR;
#        $PATCH2PIX_VAL_SCENES overrides the scene list; $PATCH2PIX_VAL_URL the base URL).
# Scenes already extracted are kept. Each archive is downloaded (curl, else wget) and
# extracted in a private temporary folder inside the target and moved into place only when
# complete; on failure or interruption nothing is left behind.
# Without the network: python -m data_pairs.make_synthetic --out data writes a synthetic
# validation scene in the same layout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=../scripts/download_lib.sh
source "$REPO/scripts/download_lib.sh"
TARGET="${1:-${PATCH2PIX_VAL_DIR:-$REPO/data/immatch_benchmark/val_dense}}"
BASE_URL="${PATCH2PIX_VAL_URL:-https://www.cs.ubc.ca/research/kmyi_data/imw2020/TrainingData}"
read -r -a SCENES <<<"${PATCH2PIX_VAL_SCENES:-reichstag sacre_coeur st_peters_square taj_mahal temple_nara_japan}"

if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi

find_fetch

make_download_tmp "$TARGET"

# get_scene <scene>: download, check, extract and move one scene into place
get_scene() {
    local scene="$1" url="$BASE_URL/$1.tar.gz"
    if [ -f "$TARGET/$scene/dense/sparse/images.bin" ]; then
        echo "$TARGET/$scene exists, kept"
        return 0
    fi
    echo "downloading $url"
    if ! fetch "$url" "$TMP/$scene.tar.gz"; then
        echo "error: could not download $url (network or host unreachable);" \
            "nothing was written for $scene" >&2
        return 1
    fi
    rm -rf "$TMP/x"
    mkdir -p "$TMP/x"
    if ! tar -xzf "$TMP/$scene.tar.gz" -C "$TMP/x"; then
        echo "error: $scene.tar.gz is not a valid .tar.gz archive; nothing was written" >&2
        return 1
    fi
    rm -f "$TMP/$scene.tar.gz"
    local src
    src="$(find "$TMP/x" -type d -path "*/dense/sparse" -print -quit)"
    if [ -z "$src" ] || [ ! -d "$(dirname "$src")/images" ]; then
        echo "error: $scene.tar.gz holds no dense/{images,sparse} folders; nothing was written" >&2
        return 1
    fi
    src="$(dirname "$(dirname "$src")")"  # the folder holding dense/
    rm -rf "${TARGET:?}/$scene"
    mv "$src" "$TARGET/$scene"
    echo "extracted $TARGET/$scene"
}

failed=()
for scene in "${SCENES[@]}"; do
    get_scene "$scene" || failed+=("$scene")
done

present=0
for scene in "${SCENES[@]}"; do
    [ -f "$TARGET/$scene/dense/sparse/images.bin" ] && present=$((present + 1))
done
if [ "$present" -gt 0 ]; then
    args=()
    for scene in "${SCENES[@]}"; do
        [ -f "$TARGET/$scene/dense/sparse/images.bin" ] && args+=("$scene")
    done
    (cd "$REPO" && "$PY" -m data_pairs.precompute_immatch_val_ovs --data_root "$TARGET" \
        --scenes "${args[@]}")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: ${#failed[@]} scene(s) could not be prepared: ${failed[*]}." \
        "Without the network, 'python -m data_pairs.make_synthetic --out data' writes a" \
        "synthetic validation scene in the same layout." >&2
    exit 1
fi
echo "validation data ready under $TARGET"
