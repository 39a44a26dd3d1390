"""Visdom's web-page assets from the npm registry, so that its page works without a network.

``python -m visdom.server`` first runs ``visdom.server.build.download_scripts``, which fetches
the page's scripts, styles and fonts from CDNs (unpkg, cdn.plot.ly, d3js.org, cdnjs) into
visdom's ``static/`` folder, and crashes where there is no network. Every one of those files
is published in an npm package; :data:`ASSETS` maps each file visdom 0.2.4 fetches to the
package and path it comes from, at the versions pinned in ``scripts/visdom_assets/``
(``package.json``, with URLs and sha512 hashes in ``package-lock.json``). :func:`install`
downloads those tarballs from the npm registry, checks their hashes and copies the files to
where the server serves them (once; a stamp records what was installed). It also writes
visdom's ``version.built`` marker, so ``python -m visdom.server`` finds everything in place
and does not download either.

``python -m utils.common.visdom_assets`` installs (``scripts/setup_env.sh`` runs it);
``--check`` only reports what is missing.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.common.cli import UsageError, make_parser, run_command
from utils.common.setup_helper import write_atomic

REPO = Path(__file__).resolve().parents[2]
LOCK_DIR = REPO / "scripts" / "visdom_assets"
STAMP = ".patch2pix_assets"
MATHJAX = "js/mathjax/2.7.5/"
_BS_FONT = "glyphicons-halflings-regular"

# npm package -> ((path in the package, path under visdom's static/), ...): the files of
# download_scripts in visdom 0.2.4 (visdom/server/build.py), under the names it gives them.
ASSETS: dict[str, tuple[tuple[str, str], ...]] = {
    "jquery": (("dist/jquery.min.js", "js/jquery.min.js"),),
    "bootstrap": (
        ("dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
        ("dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
        *(
            (f"dist/fonts/{_BS_FONT}.{ext}", f"fonts/{_BS_FONT}.{ext}")
            for ext in ("eot", "woff2", "woff", "ttf", "svg")
        ),
        # download_scripts keeps the URL fragment in the file name; the CSS requests the .svg
        (f"dist/fonts/{_BS_FONT}.svg", f"fonts/{_BS_FONT}.svg#glyphicons_halflingsregular"),
    ),
    "react": (("umd/react.production.min.js", "js/react-react.min.js"),),
    "react-dom": (("umd/react-dom.production.min.js", "js/react-dom.min.js"),),
    "react-modal": (("dist/react-modal.min.js", "js/react-modal.min.js"),),
    "plotly.js-dist-min": (("plotly.min.js", "js/plotly-plotly.min.js"),),  # cdn.plot.ly 2.11.1
    "sjcl": (("sjcl.js", "js/sjcl.js"),),
    "layout-bin-packer": (
        ("dist/layout-bin-packer.js.map", "js/layout-bin-packer.js.map"),
        ("dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
    ),
    "d3": (("d3.min.js", "js/d3.v3.min.js"),),  # d3js.org/d3.v3.min.js is 3.5.17
    "d3-selection-multi": (("build/d3-selection-multi.js", "js/d3-selection-multi.v1.js"),),
    "save-svg-as-png": (("lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),),
    "react-resizable": (("css/styles.css", "css/react-resizable-styles.css"),),
    "react-grid-layout": (("css/styles.css", "css/react-grid-layout-styles.css"),),
    "classnames": (("index.js", "fonts/classnames"),),  # unpkg's classnames@2.2.5 is index.js
    "mathjax": tuple(
        (p, MATHJAX + p)
        for p in (
            "config/Safe.js",
            "config/TeX-AMS-MML_HTMLorMML.js",
            "extensions/Safe.js",
            "jax/output/SVG/fonts/TeX/fontdata.js",
            "jax/output/SVG/jax.js",
            "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
            "jax/output/SVG/config.js",
            "MathJax.js",
        )
    ),
}


def static_dir() -> Path:
    """visdom's ``static/`` folder (what its server serves under ``/static``)."""
    spec = importlib.util.find_spec("visdom")
    if spec is None or spec.origin is None:
        raise UsageError("visdom is not installed (bash scripts/setup_env.sh installs it)")
    return Path(spec.origin).parent / "static"


def read_lock(lock_dir: Path = LOCK_DIR) -> dict[str, dict]:
    """``{package: {"version", "resolved", "integrity"}}`` of the pinned top-level packages.

    Checks that ``package.json`` pins exactly the packages of :data:`ASSETS` and that the
    lock resolves each to that version.
    """
    try:
        pins = json.loads((lock_dir / "package.json").read_text())["dependencies"]
        lock = json.loads((lock_dir / "package-lock.json").read_text())["packages"]
    except (OSError, KeyError, ValueError) as e:
        raise UsageError(f"{lock_dir}: cannot read package.json / package-lock.json: {e}") from e
    if set(pins) != set(ASSETS):
        raise UsageError(f"{lock_dir}/package.json: packages {sorted(pins)} != {sorted(ASSETS)}")
    out = {}
    for name, version in pins.items():
        entry = lock.get(f"node_modules/{name}", {})
        if entry.get("version") != version or "resolved" not in entry or "integrity" not in entry:
            raise UsageError(
                f"{lock_dir}/package-lock.json: no {name}@{version} with a URL and "
                "integrity (regenerate it: see scripts/visdom_assets/README.md)"
            )
        out[name] = {k: entry[k] for k in ("version", "resolved", "integrity")}
    return out


def lock_digest(lock_dir: Path = LOCK_DIR) -> str:
    """What an installation is stamped with: the pinned packages and the file map."""
    text = json.dumps([read_lock(lock_dir), ASSETS], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def missing_assets(static: Path | None = None) -> list[str]:
    """Paths (under ``static/``) of the assets that are not installed."""
    static = static_dir() if static is None else static
    return [dst for files in ASSETS.values() for _, dst in files if not (static / dst).is_file()]


def is_installed(static: Path | None = None, lock_dir: Path = LOCK_DIR) -> bool:
    """All assets present and stamped with the current pins."""
    static = static_dir() if static is None else static
    stamp = static / STAMP
    return (
        not missing_assets(static)
        and stamp.is_file()
        and stamp.read_text().strip() == lock_digest(lock_dir)
    )


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """Raise unless ``data`` has the Subresource-Integrity hash ``integrity`` (sha512-...)."""
    algo, _, want = integrity.partition("-")
    if algo not in ("sha512", "sha384", "sha256", "sha1"):
        raise UsageError(f"{what}: unsupported integrity {integrity!r}")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise UsageError(f"{what}: {algo} mismatch (got {got[:16]}..., lock has {want[:16]}...)")


def package_files(tgz: bytes, wanted: Sequence[str], what: str) -> dict[str, bytes]:
    """The files ``wanted`` (paths inside the package) of an npm tarball (``package/...``)."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for m in tar.getmembers():
            rel = m.name.split("/", 1)[-1]  # npm tarballs have one top folder, usually package/
            if m.isfile() and rel in wanted:
                f = tar.extractfile(m)
                assert f is not None
                out[rel] = f.read()
    absent = sorted(set(wanted) - set(out))
    if absent:
        raise UsageError(f"{what}: the package has no {absent}")
    return out


def _fetch(url: str, timeout: float = 120.0) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "patch2pix-visdom-assets"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except OSError as e:
        raise UsageError(f"cannot download {url}: {e}") from e


def install(
    static: Path | None = None,
    lock_dir: Path = LOCK_DIR,
    force: bool = False,
    fetch: Callable[[str], bytes] = _fetch,
    lprint: Callable[[str], object] = print,
) -> list[Path]:
    """Install every asset into ``static`` (default: visdom's); return the files written.

    Nothing is downloaded when the installation is complete and stamped with the current
    pins (unless ``force``). Each tarball's hash is checked against the lock before use;
    the stamp is written last, so an interrupted install is redone next time.
    """
    static = static_dir() if static is None else static
    if not force and is_installed(static, lock_dir):
        return []
    pins = read_lock(lock_dir)
    written = []
    (static / STAMP).unlink(missing_ok=True)
    for name, files in ASSETS.items():
        pin = pins[name]
        what = f"{name}@{pin['version']} ({pin['resolved']})"
        tgz = fetch(pin["resolved"])
        check_integrity(tgz, pin["integrity"], what)
        contents = package_files(tgz, [src for src, _ in files], what)
        for src, dst in files:
            path = static / dst
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                data = contents[src]
                write_atomic(path, lambda f, data=data: f.write(data))
            except OSError as e:  # e.g. a visdom installed system-wide, read-only
                raise UsageError(f"cannot write {path}: {e}") from e
            written.append(path)
        lprint(f"visdom assets: {name}@{pin['version']}: {len(files)} file(s)")
    import visdom  # download_scripts skips files that exist once this marker is current

    version, stamp = visdom.__version__.encode(), (lock_digest(lock_dir) + "\n").encode()
    write_atomic(static / "version.built", lambda f: f.write(version))
    write_atomic(static / STAMP, lambda f: f.write(stamp))
    return written


def _main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("utils.common.visdom_assets", __doc__.split("\n\n")[0])
    p.add_argument(
        "--check",
        action="store_true",
        help="only report whether the assets are installed (exit 1 if not)",
    )
    p.add_argument("--force", action="store_true", help="download and install again")
    p.add_argument(
        "--static",
        type=Path,
        default=None,
        help="install into this folder instead of visdom's static/",
    )
    a = p.parse_args(argv)
    static = static_dir() if a.static is None else a.static
    if a.check:
        missing = missing_assets(static)
        if missing or not is_installed(static):
            print(
                f"visdom assets not installed in {static}"
                + (
                    f" (missing {len(missing)}: {', '.join(missing[:4])} ...)"
                    if missing
                    else " (installed from other pins)"
                )
            )
            return 1
        print(f"visdom assets installed in {static}")
        return 0
    written = install(static, force=a.force)
    print(
        f"visdom assets: {len(written)} file(s) written to {static}"
        if written
        else f"visdom assets: already installed in {static}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("utils.common.visdom_assets", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
