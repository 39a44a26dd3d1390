#!/usr/bin/env bash
# Download the pre-computed MegaDepth training pairs (docs/file-formats.md §2) from Google Drive
# (file id 1u8sfc23c9ZhXSA_IVct2l_T3JLrS5air) with gdown.
# Usage: bash data_pairs/download.sh [target_dir]   (default: this folder; also
#        $PATCH2PIX_PAIRS_DIR). The download keeps Google Drive's file name; a .npy file is
#        moved into the target, a .zip / .tar(.gz) archive has its .npy files extracted
#        there. Everything goes through a private temporary folder inside the target and is
#        moved into place only when complete; on failure or interruption nothing is left
#        behind. Existing pair files are kept. $PATCH2PIX_GDOWN overrides the gdown command
#        (default: the venv's "python -m gdown", else gdown). Without the network, generate
#        the pairs instead:
#        python -m data_pairs.prep_megadepth_training_pairs (see its --help).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=../scripts/download_lib.sh
source "$REPO/scripts/download_lib.sh"
TARGET="${1:-${PATCH2PIX_PAIRS_DIR:-$HERE}}"
FILE_ID=1u8sfc23c9ZhXSA_IVct2l_T3JLrS5air
URL="https://drive.google.com/uc?id=$FILE_ID"

make_download_tmp "$TARGET"

fail() {
    echo "error: $*" >&2
    echo "error: nothing was written to $TARGET. Fetch $URL by hand, or generate the pairs" \
        "with: python -m data_pairs.prep_megadepth_training_pairs" >&2
    exit 1
}

find_gdown
echo "downloading the pre-computed training pairs from $URL"
mkdir -p "$TMP/get"
if ! "${GDOWN[@]}" "${GDOWN_OPTS[@]}" -O "$TMP/get/" "$URL"; then
    fail "could not download the training pairs from Google Drive (id $FILE_ID):" \
        "network or Google Drive unreachable."
fi

shopt -s nullglob
got=("$TMP"/get/*)
[ "${#got[@]}" -gt 0 ] || fail "gdown finished without writing a file."
mkdir -p "$TMP/out"
for f in "${got[@]}"; do
    case "$f" in
        *.npy) mv "$f" "$TMP/out/" ;;
        *.zip)
            command -v unzip >/dev/null 2>&1 || fail "unzip is needed to extract $(basename "$f")."
            unzip -q "$f" -d "$TMP/x" || fail "$(basename "$f") is not a valid zip archive."
            ;;
        *.tar.gz | *.tgz | *.tar)
            mkdir -p "$TMP/x"
            tar -xf "$f" -C "$TMP/x" || fail "$(basename "$f") is not a valid tar archive."
            ;;
        *)
            if head -c 512 "$f" | grep -qi "<html"; then
                fail "Google Drive returned a web page (quota exceeded or link changed)."
            fi
            fail "unexpected download $(basename "$f") (expected .npy, .zip or .tar.gz)."
            ;;
    esac
done
if [ -d "$TMP/x" ]; then
    while IFS= read -r -d '' f; do mv "$f" "$TMP/out/"; done \
        < <(find "$TMP/x" -type f -name '*.npy' -print0)
fi
outs=("$TMP"/out/*.npy)
[ "${#outs[@]}" -gt 0 ] || fail "the download holds no .npy pair file."
for f in "${outs[@]}"; do
    name="$(basename "$f")"
    if [ -s "$TARGET/$name" ]; then
        echo "$TARGET/$name exists, kept"
    else
        mv "$f" "$TARGET/$name"
        echo "saved $TARGET/$name"
    fi
done
