"""`graphprune batch` and `sweep` on a local process pool and on a Dask cluster give what
sequential runs give (timings apart). The cluster is a small LocalCluster bound to 127.0.0.1,
closed at the end of the module."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = [ROOT / "models" / "onnx" / n for n in
          ("resnet_tiny.legacy.onnx", "se_net_tiny.dynamo.onnx", "vgg_flatten.legacy.onnx")]


def gp(*args):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    for m in MODELS:
        shutil.copy(m, d / m.name)
    return d


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  worker_dashboard_address=None) as c:
        yield c.scheduler_address


def reports(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.report.json")):
        r = json.loads(f.read_text())
        r.pop("timings_s")
        r["output"] = Path(r["output"]).name
        out[f.name] = r
    return out


def models(folder: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.pruned.onnx"))}


def run_batch(zoo: Path, out: Path, *extra) -> dict:
    out.mkdir()
    r = gp("batch", zoo, "--out", out, "--ratio", "0.3", "--global-rank", *extra)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 4  # three models and the batch report
    batch = json.loads((out / "batch.json").read_text())
    assert [Path(e["input"]).name for e in batch["models"]] == sorted(m.name for m in MODELS)
    return {"reports": reports(out), "models": models(out)}


@pytest.fixture(scope="module")
def sequential(zoo, tmp_path_factory):
    return run_batch(zoo, tmp_path_factory.mktemp("seq") / "out", "--jobs", "1")


def test_batch_on_a_process_pool_equals_sequential(zoo, sequential, tmp_path):
    got = run_batch(zoo, tmp_path / "out", "--jobs", "2")
    assert len(sequential["reports"]) == 3
    assert got == sequential


def test_batch_on_a_dask_cluster_equals_sequential(zoo, sequential, cluster, tmp_path):
    got = run_batch(zoo, tmp_path / "out", "--scheduler", cluster)
    assert got == sequential


def test_sweep_in_parallel_and_on_dask_equals_sequential(cluster):
    from graphprune.pipeline.sweep import run_sweep

    kw = dict(latency=False, criterion="obspa", calib_path=None)
    seq = run_sweep(str(MODELS[0]), [0.2, 0.4, 0.6], jobs=1, **kw)
    assert run_sweep(str(MODELS[0]), [0.2, 0.4, 0.6], jobs=2, **kw) == seq
    assert run_sweep(str(MODELS[0]), [0.2, 0.4, 0.6], scheduler=cluster, **kw) == seq


def test_batch_errors_and_unreachable_scheduler(zoo, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    shutil.copy(MODELS[0], tmp_path / MODELS[0].name)
    r = gp("batch", tmp_path, "--jobs", "2", "--ratio", "0.3", "--quiet")
    assert r.returncode == 2 and "1 of 2 models failed" in r.stderr
    assert (tmp_path / MODELS[0].name.replace(".onnx", ".pruned.onnx")).exists()
    r = gp("batch", MODELS[0], "--out", tmp_path, "--scheduler", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "cannot reach the Dask scheduler" in r.stderr
