"""The docs build with no broken reference, and the quickstart's commands work as shown."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(page: str, lang: str) -> list:
    with open(os.path.join(ROOT, "docs", page)) as f:
        text = f.read()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.mark.timeout(300)
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools come with pip install '.[test]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "guide" / "index.html").exists()


def test_every_docs_include_exists():
    for page in os.listdir(os.path.join(ROOT, "docs")):
        if page.endswith(".md"):
            with open(os.path.join(ROOT, "docs", page)) as f:
                for include in re.findall(r'--8<-- "([^"]+)"', f.read()):
                    assert os.path.exists(os.path.join(ROOT, include)), (page, include)


@pytest.mark.timeout(300)
def test_quickstart_commands(tmp_path):
    shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
    squares, reader = blocks("quickstart.md", "python")
    (tmp_path / "squares.py").write_text(squares)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    commands = [line for block in blocks("quickstart.md", "sh") for line in block.splitlines()
                if line.strip() and "pip install" not in line]
    assert commands[0].startswith("tracedmp run") and "python squares.py" in commands
    for command in commands:
        proc = subprocess.run(["bash", "-c", command.replace("python ", f"{sys.executable} ")],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
        if command == "python squares.py":
            assert proc.stdout == "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n"
            assert proc.stderr.startswith("tracedmp: tracing to ")
        if command.startswith("tracedmp explain"):
            assert proc.stdout.startswith("squares.square  by reference")
    proc = subprocess.run([sys.executable, "-c", reader], cwd=tmp_path, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0 and "pool.task builtins.tuple" in proc.stdout, proc.stderr
