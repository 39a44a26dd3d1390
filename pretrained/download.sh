#!/usr/bin/env bash
# Download the released weights (docs/file-formats.md §5) from Google Drive with gdown:
#   patch2pix_pretrained.pth  (id 1ZbJIE0LcZ3Oti-h8zU72JRL7LryVxJOh)
#   ncn_ivd_5ep.pth           (id 10GZ0x3CmObKzbAg1GKQhrkPeSLRpD4Rp)
# Usage: bash pretrained/download.sh [target_dir]   (default: this folder; also
#        $PATCH2PIX_PRETRAINED_DIR). Files already present are kept. $PATCH2PIX_GDOWN
#        overrides the gdown command (default: the venv's "python -m gdown", else gdown).
#
#        bash pretrained/download.sh imagenet [target_dir]
#        torchvision's ImageNet ResNet-34 weights (resnet34-b627a593.pth, what a training run
#        without --pretrain/--ckpt/--resume starts from) into the torch cache, default
#        ${TORCH_HOME:-${XDG_CACHE_HOME:-~/.cache}/torch}/hub/checkpoints; curl or wget; the
#        SHA-256 prefix in the file name is checked. $PATCH2PIX_IMAGENET_URL and
#        $PATCH2PIX_IMAGENET_SHA256 (expected prefix) override the source (tests).
# Each file is downloaded into a private temporary folder inside the target and moved into
# place only when complete; on failure or interruption nothing is left behind.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=../scripts/download_lib.sh
source "$REPO/scripts/download_lib.sh"

IMAGENET_FILE="resnet34-b627a593.pth"

# imagenet_weights TARGET: fetch, check and move the ImageNet ResNet-34 weights into TARGET
imagenet_weights() {
    local target="$1" url="${PATCH2PIX_IMAGENET_URL:-https://download.pytorch.org/models/resnet34-b627a593.pth}"
    local want="${PATCH2PIX_IMAGENET_SHA256:-b627a593}"
    if [ -s "$target/$IMAGENET_FILE" ]; then
        echo "$target/$IMAGENET_FILE exists, kept"
        return 0
    fi
    find_fetch
    make_download_tmp "$target"
    echo "downloading $IMAGENET_FILE from $url"
    if ! fetch "$url" "$TMP/$IMAGENET_FILE" || [ ! -s "$TMP/$IMAGENET_FILE" ]; then
        echo "error: could not download $IMAGENET_FILE from $url: network or host" \
            "unreachable. Nothing was written. Fetch it by hand and save it as" \
            "$target/$IMAGENET_FILE (or pass --random_backbone to train from a random" \
            "backbone)." >&2
        return 1
    fi
    local got
    got="$(sha256sum "$TMP/$IMAGENET_FILE" | cut -c1-${#want})"
    if [ "$got" != "$want" ]; then
        echo "error: $IMAGENET_FILE from $url has SHA-256 prefix $got, expected $want:" \
            "nothing was written to $target." >&2
        return 1
    fi
    mv "$TMP/$IMAGENET_FILE" "$target/$IMAGENET_FILE"
    echo "saved $target/$IMAGENET_FILE"
}

if [ "${1:-}" = "imagenet" ]; then
    imagenet_weights "${2:-${TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/torch}/hub/checkpoints}"
    exit $?
fi

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
