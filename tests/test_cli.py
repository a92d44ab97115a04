"""The command line: demo run, report contract, analyze, errors (one line, exit 2)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo.onnx"


def gp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture()
def demo(tmp_path):
    p = tmp_path / "demo.onnx"
    shutil.copy(DEMO, p)
    return p


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_prune_default_output_and_report(demo, tmp_path):
    before = sha(demo)
    rep = tmp_path / "report.json"
    r = gp(demo, "--ratio", "0.3", "--report", rep)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "demo.pruned.onnx"
    assert out.exists()
    assert sha(demo) == before, "input file must never change"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    data = json.loads(rep.read_text())
    for key in ("graphprune_version", "input", "output", "criterion", "target", "params", "macs",
                "file_bytes", "groups", "fidelity", "timings_s"):
        assert key in data
    assert data["params"]["after"] < data["params"]["before"]
    assert data["macs"]["after"] < data["macs"]["before"]
    assert data["file_bytes"]["after"] < data["file_bytes"]["before"]
    assert data["file_bytes"]["after"] == out.stat().st_size
    for g in data["groups"]:
        assert set(g) >= {"id", "kind", "size_before", "size_after", "members", "frozen_reason"}
    assert set(data["timings_s"]) >= {"load", "analyze", "score", "rewrite", "validate", "write"}
    assert "Params" in r.stdout and "MACs" in r.stdout
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_explicit_output_and_options(demo, tmp_path):
    out = tmp_path / "small.onnx"
    r = gp(demo, "--ratio", "0.5", "-o", out, "--global-rank", "--round-to", "4", "--criterion",
           "random", "--seed", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    assert out.exists() and r.stdout == ""


def test_json_output(demo, tmp_path):
    r = gp(demo, "--ratio", "0.2", "-o", tmp_path / "x.onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["criterion"] == "magnitude"


def test_protect_freezes_matching_groups(demo, tmp_path):
    r = gp(demo, "-o", tmp_path / "p.onnx", "--protect", "*", "--json")
    data = json.loads(r.stdout)
    assert data["params"]["after"] == data["params"]["before"]
    assert any("protected" in (g["frozen_reason"] or "") for g in data["groups"])


def test_deterministic_output(demo, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert gp(demo, "-o", a, "--quiet").returncode == 0
    assert gp(demo, "-o", b, "--quiet").returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_analyze_table_and_json(demo):
    r = gp("analyze", demo)
    assert r.returncode == 0 and "prunable" in r.stdout
    j = json.loads(gp("analyze", demo, "--json").stdout)
    assert any(g["prunable"] for g in j["groups"])
    assert all(g["frozen_reason"] for g in j["groups"] if not g["prunable"])


@pytest.mark.parametrize("args,needle", [
    (["missing.onnx"], "no such file"),
    (["{demo}", "--ratio", "1.5"], "--ratio"),
    (["{demo}", "--ratio", "-0.1"], "--ratio"),
    (["{demo}", "-o", "{demo}"], "equals the input"),
    (["{demo}", "-o", "{tmp}/nope/out.onnx"], "does not exist"),
    (["{garbage}"], "not a readable ONNX model"),
    (["{demo}", "--round-to", "0"], "--round-to"),
])
def test_bad_input_one_line_exit_2(demo, tmp_path, args, needle):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model" * 10)
    args = [a.format(demo=demo, tmp=tmp_path, garbage=garbage) for a in args]
    r = gp(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()


def test_debug_shows_traceback(tmp_path):
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"junk")
    r = gp(garbage, "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_help_documents_options():
    r = gp("--help")
    assert r.returncode == 0 and "analyze" in r.stdout
    r = gp("prune", "--help")
    for opt in ("--ratio", "--criterion", "--global-rank", "--round-to", "--protect", "--report",
                "--ratio-for", "--plan", "--config", "--steps", "--input-shapes"):
        assert opt in r.stdout
