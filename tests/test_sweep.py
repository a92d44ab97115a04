"""`graphprune sweep`: one row per ratio, files written, recommendation from --max-drop."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphprune.errors import UserError
from graphprune.pipeline.sweep import parse_ratios

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo.onnx"
RATIOS = [0.0, 0.2, 0.4, 0.6]


def gp(*args):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    model = d / "demo.onnx"
    shutil.copy(DEMO, model)
    r = gp("sweep", model, "--ratios", ",".join(map(str, RATIOS)), "--max-drop", "0.1",
           "--repeats", "5", "--out", d / "out")
    assert r.returncode == 0, r.stderr
    return d / "out", r


def test_sweep_files_and_monotone_macs(swept):
    out, r = swept
    data = json.loads((out / "sweep.json").read_text())
    rows = data["rows"]
    assert [row["ratio"] for row in rows] == RATIOS
    macs = [row["macs"] for row in rows]
    assert all(a >= b for a, b in zip(macs, macs[1:])), macs
    assert macs[0] == data["baseline"]["macs"] and macs[-1] < macs[0]
    assert rows[0]["cosine"] == pytest.approx(1.0) and rows[0]["drop"] == pytest.approx(0.0)
    for row in rows:
        assert row["speedup"] > 0 and row["latency_ms"] > 0
        assert row["macs_ratio"] == pytest.approx(data["baseline"]["macs"] / row["macs"])
    with (out / "sweep.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [float(t["ratio"]) for t in table] == RATIOS
    assert [int(t["macs"]) for t in table] == macs
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recommended_is_largest_ratio_within_max_drop(swept):
    out, r = swept
    data = json.loads((out / "sweep.json").read_text())
    ok = [row["ratio"] for row in data["rows"] if row["drop"] <= 0.1]
    assert data["recommended"] == max(ok)
    assert all(row["meets_max_drop"] == (row["drop"] <= 0.1) for row in data["rows"])
    assert f"recommended ratio: {max(ok)}" in r.stdout
    assert "ratio" in r.stdout.splitlines()[0]


def test_sweep_without_latency_json_and_bad_ratios(tmp_path):
    r = gp("sweep", DEMO, "--ratios", "0.5,0.3", "--no-latency", "--json", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [row["ratio"] for row in data["rows"]] == [0.3, 0.5]
    assert data["rows"][0]["speedup"] is None and data["recommended"] is None
    assert gp("sweep", DEMO, "--ratios", "0.5,1.5", "--out", tmp_path).returncode == 2
    with pytest.raises(UserError):
        parse_ratios("a,b")


def test_sweep_gate_fails_when_no_ratio_meets_max_drop(tmp_path):
    r = gp("sweep", DEMO, "--ratios", "0.5,0.9", "--no-latency", "--max-drop", "0",
           "--out", tmp_path, "--quiet")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("graphprune: gate failed: no ratio")
    assert (tmp_path / "sweep.json").exists()  # outputs are still written


def test_sweep_calibrates_data_aware_criteria(tmp_path):
    """--calib feeds the criterion too: the sweep then says it was calibrated."""
    import numpy as np

    from graphprune.pipeline.sweep import run_sweep

    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    import onnx

    name = onnx.load(str(DEMO)).graph.input[0].name
    np.savez(tmp_path / "c.npz", **{name: x})
    res = run_sweep(str(DEMO), [0.3], criterion="obspa", calib_path=tmp_path / "c.npz",
                    latency=False)
    assert res["calibration"]["calibrated"] and res["calibration"]["samples"] == 8
