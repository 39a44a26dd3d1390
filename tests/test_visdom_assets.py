"""Visdom's page assets from npm (utils/common/visdom_assets.py) and the offline server command.

The pins are checked against what the installed visdom's ``download_scripts`` fetches; the
installer runs on hand-made npm tarballs (no network): files land under visdom's names, a
second run downloads nothing, a tarball whose hash differs from the lock is refused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from utils.common import visdom_assets as va
from utils.common import visdom_server
from utils.common.cli import UsageError


def test_pins_are_what_visdom_downloads() -> None:
    """Every CDN URL of visdom 0.2.4's download_scripts maps to the pinned package file."""
    import visdom.server.build as build

    src = Path(build.__file__).read_text()
    pins = json.loads((va.LOCK_DIR / "package.json").read_text())["dependencies"]
    lock = va.read_lock()
    assert {n: e["version"] for n, e in lock.items()} == pins
    unpkg = re.findall(r'"%s([\w.-]+)@([\d.]+)(?:/([^"]*))?"', src)  # "%s" is unpkg.com
    assert len(unpkg) >= 13
    files = {(name, path) for name, entries in va.ASSETS.items() for path, _ in entries}
    for name, version, path in unpkg:
        assert pins[name] == version, name
        if path and not path.endswith("/"):
            assert (name, path) in files, (name, path)
    for path in re.findall(r'"%sfonts/([\w.-]+)', src):  # bootstrap@3.3.7/dist/fonts/...
        assert ("bootstrap", "dist/fonts/" + path.split("#")[0]) in files
    assert "plotly-2.11.1.min.js" in src and pins["plotly.js-dist-min"] == "2.11.1"
    assert "d3.v3.min.js" in src and pins["d3"].startswith("3.")
    assert "mathjax/2.7.5/" in src and pins["mathjax"] == "2.7.5"
    mathjax = set(re.findall(r'"((?:config|extensions|jax)/[\w/.-]+\.js|MathJax\.js)\?', src))
    assert mathjax == {p for p, _ in va.ASSETS["mathjax"]}
    # and the names download_scripts gives them: the page's index.html loads these
    names = set(re.findall(r':\s*"([^"]+)",?\s*(?:#.*)?$', src, re.M))
    installed = {Path(dst).name for entries in va.ASSETS.values() for _, dst in entries}
    assert len(names) == 21 and names <= installed, names - installed


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("package/" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def fake_registry(tmp_path: Path):
    """A lock folder for hand-made tarballs of every package, and their URL -> bytes."""
    tarballs, pins, lock = {}, {}, {"": {"dependencies": {}}}
    for name, entries in va.ASSETS.items():
        tgz = _tarball({src: f"{name}:{src}".encode() for src, _ in entries})
        url = f"https://registry.example/{name}/-/{name}-1.0.0.tgz"
        tarballs[url] = tgz
        pins[name] = "1.0.0"
        lock[f"node_modules/{name}"] = {"version": "1.0.0", "resolved": url, "integrity": _sri(tgz)}
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    (lock_dir / "package.json").write_text(json.dumps({"dependencies": pins}))
    (lock_dir / "package-lock.json").write_text(json.dumps({"packages": lock}))
    return lock_dir, tarballs


def test_install_places_files_once(fake_registry, tmp_path: Path) -> None:
    lock_dir, tarballs = fake_registry
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return tarballs[url]

    static = tmp_path / "static"
    written = va.install(static, lock_dir, fetch=fetch, lprint=lambda *_: None)
    n_files = sum(len(e) for e in va.ASSETS.values())
    assert len(written) == n_files and len(fetched) == len(va.ASSETS)
    assert (static / "js/plotly-plotly.min.js").read_bytes() == b"plotly.js-dist-min:plotly.min.js"
    css = (static / "css/bootstrap.min.css").read_bytes()
    assert css == b"bootstrap:dist/css/bootstrap.min.css"
    assert (static / "js/mathjax/2.7.5/MathJax.js").read_bytes() == b"mathjax:MathJax.js"
    assert (static / "fonts/glyphicons-halflings-regular.svg").is_file()
    assert va.missing_assets(static) == [] and va.is_installed(static, lock_dir)
    # idempotent: nothing fetched the second time
    assert va.install(static, lock_dir, fetch=fetch, lprint=lambda *_: None) == []
    assert len(fetched) == len(va.ASSETS)
    # a missing file is noticed and the next install restores it
    (static / "js/d3.v3.min.js").unlink()
    assert va.missing_assets(static) == ["js/d3.v3.min.js"]
    assert len(va.install(static, lock_dir, fetch=fetch, lprint=lambda *_: None)) == n_files


def test_install_refuses_a_tarball_that_differs_from_the_lock(
    fake_registry, tmp_path: Path
) -> None:
    lock_dir, tarballs = fake_registry
    static = tmp_path / "static"

    def fetch(url: str) -> bytes:
        return tarballs[url] + (b"x" if "/jquery/" in url else b"")

    with pytest.raises(UsageError, match=r"jquery@1\.0\.0 .*sha512 mismatch"):
        va.install(static, lock_dir, fetch=fetch, lprint=lambda *_: None)
    assert not va.is_installed(static, lock_dir)


def test_package_without_the_file_is_an_error() -> None:
    tgz = _tarball({"dist/other.js": b""})
    with pytest.raises(UsageError, match=r"jquery@9: the package has no \['dist/jquery.min.js'\]"):
        va.package_files(tgz, ["dist/jquery.min.js"], "jquery@9")


def test_lock_must_pin_every_package(fake_registry) -> None:
    lock_dir, _ = fake_registry
    pkg = json.loads((lock_dir / "package.json").read_text())
    del pkg["dependencies"]["sjcl"]
    (lock_dir / "package.json").write_text(json.dumps(pkg))
    with pytest.raises(UsageError, match="package.json: packages"):
        va.read_lock(lock_dir)


def test_server_without_assets_is_a_one_line_error(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(visdom_server, "missing_assets", lambda: ["js/jquery.min.js"])
    rc = visdom_server.main(["--port", "8097", "--env_path", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("utils.common.visdom_server: error: visdom's page assets are missing")
    assert "python -m utils.common.visdom_assets" in err
    assert visdom_server.main(["--port", "70000"]) == 2
    assert "--port 70000: not a port number" in capsys.readouterr().err
    assert visdom_server.visdom_argv(8097, "localhost", Path("e"), bind_local=True) == [
        "visdom",
        "-port",
        "8097",
        "--hostname",
        "localhost",
        "-env_path",
        "e",
        "-logging_level",
        "INFO",
        "-bind_local",
    ]


def test_install_writes_each_file_atomically(
    fake_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails part-way leaves the asset that was there, whole, and no temporary
    file in visdom's static folder (plain ``python -m visdom.server`` skips existing files)."""
    import utils.common.setup_helper as sh

    lock_dir, tarballs = fake_registry
    static = tmp_path / "static"
    va.install(static, lock_dir, fetch=tarballs.__getitem__, lprint=lambda *_: None)
    before = {p: p.read_bytes() for p in static.rglob("*") if p.is_file()}

    def disk_full(src, dst):  # the temporary file is complete; the rename fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sh.os, "replace", disk_full)
    with pytest.raises(UsageError, match="cannot write .*No space left"):
        va.install(static, lock_dir, fetch=tarballs.__getitem__, force=True, lprint=lambda *_: None)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in static.rglob("*") if p.is_file()}
    # the stamp is removed first (an interrupted install is redone); nothing else changed
    assert after == {p: b for p, b in before.items() if p != static / va.STAMP}
