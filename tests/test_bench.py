"""Benchmark numbers, fidelity on calibration data, and the CI gates (exit code 1)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.pipeline import measure as bench
from graphprune.errors import UserError
from graphprune.runtime.fidelity import compare_outputs, fidelity

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo.onnx"
FAST = dict(repeats=5, warmup=1)


def gp(*args):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def pruned():
    return graphprune.prune(str(DEMO), ratio=0.5).model


@pytest.fixture()
def demo(tmp_path):
    p = tmp_path / "demo.onnx"
    shutil.copy(DEMO, p)
    return p


def check_result(r: dict, fresh_process: bool = True):
    """`fresh_process` False: measured in this long-running process, whose heap may already
    hold the memory a tiny model needs (its peak can then equal the baseline)."""
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"]
    assert lat["mean"] > 0
    assert r["batch"] == 1
    assert r["throughput_per_s"] == pytest.approx(1e3 / lat["median"])
    if fresh_process:
        assert r["peak_rss_bytes"] > r["baseline_rss_bytes"] > 0
    else:
        assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 0
    assert r["file_bytes"] > 0 and r["params"] > 0 and r["macs"] > 0


def test_benchmark_one_model():
    r = bench.benchmark(str(DEMO), threads=1, **FAST)
    check_result(r)
    assert r["file_bytes"] == DEMO.stat().st_size
    assert r["threads"] == 1 and r["repeats"] == 5 and r["provider"] == "CPUExecutionProvider"
    assert r["params"] == 44090


def test_benchmark_in_process_and_from_proto(pruned):
    r = bench.benchmark(pruned, isolate=False, **FAST)
    check_result(r, fresh_process=False)
    assert r["model"] is None
    assert r["file_bytes"] == len(pruned.SerializeToString())


def test_pair_speedup_is_median_ratio(pruned):
    pair = bench.benchmark_pair(str(DEMO), pruned, **FAST)
    b, a, c = pair["before"], pair["after"], pair["compare"]
    check_result(b)
    check_result(a)
    assert c["speedup"] == pytest.approx(b["latency_ms"]["median"] / a["latency_ms"]["median"])
    assert c["macs_ratio"] == pytest.approx(b["macs"] / a["macs"])
    assert c["macs_ratio"] > 2
    assert a["file_bytes"] < b["file_bytes"]


def test_big_pairs_are_timed_one_after_the_other(pruned, monkeypatch):
    """Above the interleaving limit each model runs alone in its own processes, A B B A, half
    the repeats per pass; the numbers keep their keys and meaning."""
    from graphprune.runtime import bench as runtime_bench

    calls = []
    real = runtime_bench._in_child
    monkeypatch.setattr(runtime_bench, "INTERLEAVE_MAX_BYTES", 0)
    monkeypatch.setattr(runtime_bench, "_in_child", lambda fn, path, **kw: calls.append(
        (fn.__name__, Path(path).name, kw["repeats"])) or real(fn, path, **kw))
    pair = bench.benchmark_pair(str(DEMO), pruned, repeats=5, warmup=1)
    assert calls == [("measure", "demo.onnx", 3), ("measure", "model1.onnx", 3),
                     ("measure", "model1.onnx", 2), ("measure", "demo.onnx", 2)]
    b, a = pair["before"], pair["after"]
    assert b["latency_method"] == a["latency_method"] == "sequential"
    check_result(b)
    check_result(a)
    assert "samples_ms" not in b and pair["compare"]["speedup"] > 0


def test_bad_provider_and_settings():
    with pytest.raises(UserError, match="not available"):
        bench.benchmark(str(DEMO), provider="NoSuchExecutionProvider")
    with pytest.raises(UserError):
        bench.benchmark(str(DEMO), repeats=0)


def test_bench_cli_two_models_json(demo, tmp_path, pruned):
    other = tmp_path / "small.onnx"
    onnx.save(pruned, other)
    r = gp("bench", demo, other, "--json", "--repeats", "5", "--warmup", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["models"]) == 2
    assert data["compare"]["speedup"] > 0 and data["compare"]["macs_ratio"] > 2
    r = gp("bench", demo, "--repeats", "5")
    assert r.returncode == 0, r.stderr
    assert "latency median" in r.stdout and "MACs" in r.stdout and r.stderr == ""
    assert gp("bench", tmp_path / "missing.onnx").returncode == 2


def test_fidelity_metrics():
    ref = {"y": np.array([[1.0, 2.0], [3.0, 1.0]], dtype=np.float32)}
    same = compare_outputs(ref, ref)
    assert same["top1_agreement"] == 1.0 and same["drop"] == 0.0
    flipped = compare_outputs(ref, {"y": ref["y"][:, ::-1].copy()})
    assert flipped["top1_agreement"] == 0.0 and flipped["drop"] == 1.0
    assert compare_outputs(ref, ref, use_top1=False)["drop_metric"] == "cosine"


def test_fidelity_on_calibration_file(demo, tmp_path, pruned):
    x = np.random.default_rng(1).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    from graphprune.calibration.data import load_npz as load_calib

    calib = load_calib(tmp_path / "calib.npz", onnx.load(str(DEMO)))
    f = fidelity(onnx.load(str(DEMO)), pruned, calib=calib, calib_name="calib.npz")
    assert f["samples"] == 6 and f["inputs"] == "calib:calib.npz"
    assert f["drop_metric"] == "top1_agreement" and f["drop"] == 1 - f["top1_agreement"]
    rep = tmp_path / "r.json"
    r = gp(demo, "--ratio", "0.3", "--calib", tmp_path / "calib.npz", "--report", rep)
    assert r.returncode == 0, r.stderr
    assert json.loads(rep.read_text())["fidelity"]["samples"] == 6
    np.savez(tmp_path / "bad.npz", other=x)
    r = gp(demo, "--ratio", "0.3", "--calib", tmp_path / "bad.npz")
    assert r.returncode == 2 and "input" in r.stderr


def test_failed_gate_exits_1_and_still_writes(demo, tmp_path):
    rep, out = tmp_path / "r.json", tmp_path / "o.onnx"
    r = gp(demo, "--ratio", "0.5", "--max-drop", "0", "-o", out, "--report", rep)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphprune: gate failed: max-drop ")
    assert lines[0].endswith(" vs 0")
    assert out.exists() and rep.exists()
    data = json.loads(rep.read_text())
    assert data["gates"][0]["passed"] is False and data["fidelity"]["drop"] > 0


def test_speed_gate(demo, tmp_path):
    rep = tmp_path / "r.json"
    r = gp(demo, "--ratio", "0.5", "--min-speedup", "1000", "--repeats", "5", "--report", rep)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("graphprune: gate failed: min-speedup ")
    lat = json.loads(rep.read_text())["latency_ms"]
    assert lat["speedup"] == pytest.approx(lat["before"] / lat["after"])
    assert lat["macs_ratio"] > 2 and lat["p90_before"] >= lat["before"]


def test_passing_gates_exit_0(demo, tmp_path):
    r = gp(demo, "--ratio", "0.5", "--max-drop", "0.9", "--min-speedup", "0.001",
           "--repeats", "5", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [g["passed"] for g in data["gates"]] == [True, True]
    assert set(data["latency_ms"]) >= {"before", "after", "p90_before", "p90_after", "threads"}
