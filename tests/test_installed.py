"""An installed alignkit (not the checkout) finds its own files: configs/demo.yaml, configs/constitution.md, the
annotation app's pages.

How: the package is built and installed the way `pip install .` does, but with `--no-deps --target SITE` into a
temporary folder, from a copy of the checkout (alignkit/, configs/, pyproject.toml, README.md; the copy keeps the
link alignkit/configs -> ../configs, so the build resolves it as it would in the checkout, and nothing is written
into the checkout). A fresh virtual environment would reinstall torch and every dependency (minutes), and they are
not what is tested: the dependencies come from this venv, while PYTHONPATH=SITE puts the installed alignkit ahead of
the editable one. Every command then runs from another working directory, where a path relative to the checkout
would not resolve: `alignkit demo --help`, `alignkit judge` on a two-pair file with tiny-llama as the judge (it reads
the shipped constitution), and `alignkit annotate serve` (started, its page and guidelines requested, stopped).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from netutil import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, environment, working directory): alignkit installed from a copy of the checkout."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    shutil.copytree(REPO / "alignkit", source / "alignkit", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "configs", source / "configs", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = root / "site"
    # setuptools from this venv when it is new enough (no download); else pip's isolated build fetches it
    isolation = [] if int(importlib.metadata.version("setuptools").split(".")[0]) < 77 else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation, "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return site, env, elsewhere


def _alignkit(installed, *args, **kwargs):
    site, env, cwd = installed
    return subprocess.run([sys.executable, "-m", "alignkit", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)


def test_the_installed_package_ships_its_configs_and_is_the_one_imported(installed):
    site, env, cwd = installed
    shipped = sorted(str(p.relative_to(site / "alignkit" / "configs")) for p in (site / "alignkit" / "configs").rglob("*") if p.is_file())
    assert shipped == sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*") if p.is_file())
    assert not (site / "alignkit" / "configs").is_symlink()  # real files in the installed package
    probe = ("import alignkit, alignkit.demo as d, alignkit.feedback.judge as j; "
             "print(alignkit.__file__); print(d.DEMO_CONFIG.is_file(), d.DEMO_CONFIG); print(j.DEFAULT_CONSTITUTION.is_file(), j.DEFAULT_CONSTITUTION)")
    lines = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(str(site) in line for line in lines), lines
    assert lines[1].startswith("True") and lines[2].startswith("True"), lines


def test_demo_help_runs_from_another_folder(installed):
    proc = _alignkit(installed, "demo", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--workdir" in proc.stdout


def test_judge_reads_the_shipped_constitution(installed):
    site, env, cwd = installed
    pairs = [{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
             {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not say."}]
    (cwd / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    proc = _alignkit(installed, "judge", "pairs.jsonl", "--model", "tiny-llama", "--out", "judged.jsonl", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (cwd / "judged.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"prompt", "chosen", "rejected", "strength"} <= set(r) for r in rows)


def _request(url: str, token: str | None = None, body: dict | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
        return response.read().decode()


def test_annotate_serve_serves_its_page_and_the_shipped_guidelines(installed):
    site, env, cwd = installed
    (cwd / "pairs.jsonl").write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "No."}) + "\n")
    port, admin = free_port(), "admin-token-for-the-test"
    server = subprocess.Popen([sys.executable, "-m", "alignkit", "annotate", "serve", "--db", "votes.sqlite", "--data", "pairs.jsonl",
                               "--port", str(port)], env={**env, "ALIGNKIT_ADMIN_TOKEN": admin}, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, page = time.time() + 120, None
        while page is None and time.time() < deadline and server.poll() is None:
            try:
                page = _request(base + "/")
            except OSError:
                time.sleep(0.2)
        assert page is not None, server.stdout.read() if server.poll() is not None else "the server did not answer"
        assert 'id="guidelines"' in page
        annotator = json.loads(_request(base + "/api/admin/annotators", admin, {"name": "ann"}))
        guidelines = json.loads(_request(base + "/api/guidelines", annotator["token"]))["text"]
        assert guidelines.startswith("# Constitution") and guidelines.strip() == (REPO / "configs" / "constitution.md").read_text().strip()
    finally:
        server.terminate()
        server.wait(timeout=30)
