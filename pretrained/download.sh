#!/usr/bin/env bash
# Download the released weights (data-formats.md §5) from Google Drive with gdown:
#   patch2pix_pretrained.pth  (id 1ZbJIE0LcZ3Oti-h8zU72JRL7LryVxJOh)
#   ncn_ivd_5ep.pth           (id 10GZ0x3CmObKzbAg1GKQhrkPeSLRpD4Rp)
# Usage: bash pretrained/download.sh [target_dir]   (default: this folder; also
#        $PATCH2PIX_PRETRAINED_DIR). Files already present are kept. $PATCH2PIX_GDOWN
#        overrides the gdown command (default: the venv's "python -m gdown", else gdown).
# Each file is downloaded into a private temporary folder inside the target and moved into
# place only when complete; on failure or interruption nothing is left behind.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=../scripts/download_lib.sh
source "$REPO/scripts/download_lib.sh"
TARGET="${1:-${PATCH2PIX_PRETRAINED_DIR:-$HERE}}"

make_download_tmp "$TARGET"

find_gdown

# gdrive_file <id> <file name>
gdrive_file() {
    local id="$1" name="$2"
    if [ -s "$TARGET/$name" ]; then
        echo "$TARGET/$name exists, kept"
        return 0
    fi
    local url="https://drive.google.com/uc?id=$id"
    echo "downloading $name from $url"
    if ! "${GDOWN[@]}" "${GDOWN_OPTS[@]}" -O "$TMP/$name" "$url" || [ ! -s "$TMP/$name" ]; then
        echo "error: could not download $name from Google Drive (id $id): network or" \
            "Google Drive unreachable. Nothing was written to $TARGET. Fetch $url by hand" \
            "and save it as $TARGET/$name." >&2
        rm -f "$TMP/$name"
        return 1
    fi
    if head -c 512 "$TMP/$name" | grep -qi "<html"; then
        echo "error: Google Drive returned a web page instead of $name (quota exceeded or" \
            "link changed): nothing was written. Fetch $url by hand." >&2
        rm -f "$TMP/$name"
        return 1
    fi
    mv "$TMP/$name" "$TARGET/$name"
    echo "saved $TARGET/$name"
}

status=0
gdrive_file 1ZbJIE0LcZ3Oti-h8zU72JRL7LryVxJOh patch2pix_pretrained.pth || status=1
gdrive_file 10GZ0x3CmObKzbAg1GKQhrkPeSLRpD4Rp ncn_ivd_5ep.pth || status=1
exit "$status"
