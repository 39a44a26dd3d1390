"""The README's commands run as written after the set-up step.

Every `python -m <module> ...` and `bash <script>` command in README.md (fenced shell blocks
and inline code spans) is extracted; each module must exist and `python -m <module> --help`
must exit 0, print a usage and name every flag the README gives it; each script must exist
and parse.
The README activates `.venv` once (`source .venv/bin/activate`) and then writes commands as
`python -m ...`, one way throughout.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Scripts of other projects that the README tells the user to run in *their* checkout.
EXTERNAL_SCRIPTS = {"preprocess_undistorted_megadepth.sh"}  # D2-Net's megadepth_utils/
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
FENCE = re.compile(r"^( *)```([\w-]*)\n(.*?)^\1```", re.M | re.S)
INLINE = re.compile(r"`((?:python -m|bash) [^`]+)`")
FLAG = re.compile(r"^-{1,2}[A-Za-z][\w-]*$")
MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")  # not a placeholder like <module>
SCRIPT = re.compile(r"^[\w./-]+\.sh$")


def split_markdown(text: str) -> tuple[list[str], str]:
    """Shell code blocks (continuations joined) and the text outside all fenced blocks."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(2).lower() in SHELL_LANGS:
            blocks.append(m.group(3).replace("\\\n", " "))
    return blocks, FENCE.sub("", text)


def commands_in(line: str) -> list[list[str]]:
    """The `python -m` / `bash` commands of one shell line, as token lists (comments dropped).

    Brackets of optional parts (`[--imsize 1024 ...]`) are removed; `&&`, `;` and `|`
    separate commands; placeholders (`python -m <module>`, `bash scripts/...`) are not
    commands.
    """
    try:
        tokens = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)
    except ValueError:
        return []
    cmds, cur = [], []
    for tok in tokens + [";"]:
        if tok in ("&&", ";", "||", "|"):
            if (
                len(cur) >= 3
                and cur[:2] == ["python", "-m"]
                and MODULE.match(cur[2])
                or len(cur) >= 2
                and cur[0] == "bash"
                and SCRIPT.match(cur[1])
            ):
                cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    return cmds


def readme_commands(text: str) -> list[list[str]]:
    """Every command of the README: shell blocks line by line, then inline code spans."""
    blocks, prose = split_markdown(text)
    cmds: list[list[str]] = []
    for block in blocks:
        for line in block.splitlines():
            cmds += commands_in(line)
    for m in INLINE.finditer(prose):
        cmds += commands_in(" ".join(m.group(1).split()))
    return cmds


def flags_of(cmd: list[str]) -> set[str]:
    return {t.split("=")[0] for t in cmd[3:] if FLAG.match(t.split("=")[0])}


def test_parser_on_known_text() -> None:
    text = (
        "Run `python -m a.b --x 1\n--yy` then\n\n```bash\npython -m c.d --p 1 \\\n"
        "    [--q 2 --r a|b]  # python -m not.this\ncd x && bash scripts/s.sh --z\n```\n"
        "and `python -m <module> ...` or `bash scripts/...` are placeholders.\n"
        "```python\npython -m e.f\n```\n```\npython -m g -lr 1\n```\n"
    )
    cmds = readme_commands(text)
    assert cmds == [
        ["python", "-m", "c.d", "--p", "1", "--q", "2", "--r", "a|b"],
        ["bash", "scripts/s.sh", "--z"],
        ["python", "-m", "g", "-lr", "1"],
        ["python", "-m", "a.b", "--x", "1", "--yy"],
    ]
    assert flags_of(cmds[0]) == {"--p", "--q", "--r"} and flags_of(cmds[2]) == {"-lr"}


def test_readme_uses_one_way_of_running() -> None:
    text = README.read_text()
    assert "source .venv/bin/activate" in text
    assert ".venv/bin/python" not in text, "write commands as `python -m ...` after activation"
    cmds = readme_commands(text)
    assert len({c[2] for c in cmds if c[0] == "python"}) >= 5  # the extraction finds them


def test_readme_scripts_exist() -> None:
    scripts = {c[1] for c in readme_commands(README.read_text()) if c[0] == "bash"}
    assert "scripts/setup_env.sh" in scripts
    for s in sorted(scripts - EXTERNAL_SCRIPTS):
        path = REPO / s
        assert path.is_file(), f"README runs `bash {s}`, which does not exist"
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{s}: {proc.stderr}"


# Runs `python -m <module> --help` for each module named on its command line, the way
# `python -m` does (runpy, run_name="__main__"), in one process so torch is imported once;
# prints {module: [exit code, stdout, stderr]} as JSON.
HELP_ALL = """
import contextlib, io, json, runpy, sys
res = {}
for mod in sys.argv[1:]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [mod, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(mod, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException as e:
            code = 1
            err.write(repr(e))
    res[mod] = [code, out.getvalue(), err.getvalue()]
sys.__stdout__.write(json.dumps(res))
"""


def help_texts(modules: list[str]) -> dict[str, tuple[int, str, str]]:
    """{module: (exit code, stdout, stderr)} of `python -m <module> --help`."""
    proc = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {m: tuple(v) for m, v in json.loads(proc.stdout).items()}


@pytest.mark.slow
def test_readme_modules_and_flags_exist() -> None:
    flags: dict[str, set[str]] = {}
    for c in readme_commands(README.read_text()):
        if c[0] == "python":
            flags.setdefault(c[2], set()).update(flags_of(c))
    missing = [m for m in flags if importlib.util.find_spec(m) is None]
    assert not missing, f"README names modules that do not exist: {missing}"
    problems = []
    for mod, (code, out, err) in help_texts(sorted(flags)).items():
        if code != 0 or "usage:" not in out:  # a parser, not a silent run
            problems.append(
                f"python -m {mod} --help: exit {code}, no usage: {out[-300:]} {err[-500:]}"
            )
            continue
        for flag in sorted(flags[mod]):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out):
                problems.append(f"python -m {mod}: README flag {flag} is not in --help")
    assert not problems, "\n".join(problems)
