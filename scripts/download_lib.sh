# Shared pieces of the download scripts (sourced, not run): finding gdown, and a temporary
# download folder inside the target that is removed on any exit, so that a failed or
# interrupted download never leaves a half-written file behind.
# Expects REPO (the repository root) to be set by the sourcing script.

# find_gdown: sets the array GDOWN (command) and GDOWN_OPTS (timeout / retry options).
# PATCH2PIX_GDOWN overrides the command (e.g. for tests).
find_gdown() {
    if [ -n "${PATCH2PIX_GDOWN:-}" ]; then
        GDOWN=("$PATCH2PIX_GDOWN")
    elif [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import gdown" 2>/dev/null; then
        GDOWN=("$REPO/.venv/bin/python" -m gdown)
    elif command -v gdown >/dev/null 2>&1; then
        GDOWN=(gdown)
    else
        echo "error: gdown not found (pip install gdown, or run scripts/setup_env.sh)" >&2
        exit 2
    fi
    local help
    help="$("${GDOWN[@]}" --help 2>&1 || true)"
    GDOWN_OPTS=()
    if grep -q -- "--timeout" <<<"$help"; then GDOWN_OPTS+=(--timeout 60); fi
    if grep -q -- "--retries" <<<"$help"; then GDOWN_OPTS+=(--retries 2); fi
}

# make_download_tmp TARGET: creates TARGET if needed and sets TMP to a fresh folder inside
# it; on exit TMP is removed, and TARGET too when this run created it and it stayed empty.
make_download_tmp() {
    CREATED_TARGET=0
    [ -d "$1" ] || CREATED_TARGET=1
    mkdir -p "$1"
    DOWNLOAD_TARGET="$1"
    TMP="$(mktemp -d "$1/.download.XXXXXX")"
    trap _download_cleanup EXIT
    trap 'exit 130' INT TERM
}

_download_cleanup() {
    rm -rf "$TMP"
    if [ "$CREATED_TARGET" = 1 ]; then rmdir "$DOWNLOAD_TARGET" 2>/dev/null || true; fi
}

# find_fetch: defines fetch URL FILE (curl, else wget; fails on HTTP errors); exits 2 when
# neither is installed.
find_fetch() {
    if command -v curl >/dev/null 2>&1; then
        FETCH_PROGRESS=(-sS)
        if [ -t 2 ]; then FETCH_PROGRESS=(--progress-bar); fi
        fetch() { curl -fL "${FETCH_PROGRESS[@]}" --connect-timeout 30 --retry 2 -o "$2" "$1"; }
    elif command -v wget >/dev/null 2>&1; then
        fetch() { wget -q --timeout=30 --tries=3 -O "$2" "$1"; }
    else
        echo "error: neither curl nor wget is installed" >&2
        exit 2
    fi
}
