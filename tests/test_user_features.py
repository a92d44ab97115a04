"""Per-layer control, plans, recipes, iterative pruning, input shapes, providers, the summary
and the Python API's calibration readers and criterion callables, on real bundled graphs."""
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
from graphprune.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
ONNX = ROOT / "models" / "onnx"
RESNET = ONNX / "resnet_tiny.dynamo.onnx"  # parameter-named tensors: layer1.0.conv1.weight, ...
BERT = ONNX / "tx" / "bert.dynamo.onnx"  # symbolic batch and sequence


def gp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def widths(report: dict) -> dict[str, tuple[int, int]]:
    return {g["name"]: (g["size_before"], g["size_after"]) for g in report["groups"]
            if g["frozen_reason"] is None}


def without_timings(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("timings_s", "input", "output")}


@pytest.fixture()
def resnet(tmp_path):
    p = tmp_path / "resnet.onnx"
    shutil.copy(RESNET, p)
    return p


# ----------------------------------------------------------------------- per-layer control
def test_ratio_for_prunes_only_the_layers_it_names(resnet, tmp_path):
    r = gp(resnet, tmp_path / "o.onnx", "--ratio", "0", "--ratio-for", "layer3.*=0.5", "--json")
    assert r.returncode == 0, r.stderr
    w = widths(json.loads(r.stdout))
    for name, (before, after) in w.items():
        if name.startswith("layer3."):
            assert after == before // 2, (name, before, after)
        else:
            assert after == before, (name, before, after)
    assert any(n.startswith("layer3.") for n in w)


def test_ratio_for_op_type_and_last_pattern_wins():
    res = graphprune.prune(str(RESNET), ratio=0.0,
                           ratio_for={"op:Conv": 0.25, "layer1.*": 0.5})
    for name, (before, after) in widths(res.report).items():
        want = before // 2 if name.startswith("layer1.") else before - before // 4
        if name == "conv1.weight[0]":  # the stem's width is the layer1 residual stream
            want = before // 2
        assert after == want, (name, before, after)


@pytest.mark.parametrize("flag,value,needle", [
    ("--ratio-for", "layr3.*=0.5", "near matches: layer3."),
    ("--protect", "*clasifier*", "--protect '*clasifier*' matches no node"),
    ("--protect-op", "Cnv", "near matches: op:Conv"),
])
def test_unmatched_pattern_is_exit_2_with_near_matches(resnet, tmp_path, flag, value, needle):
    out = tmp_path / "o.onnx"
    r = gp(resnet, out, flag, value)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert gp(resnet, out, flag, value, "--allow-unmatched", "--quiet").returncode == 0


def test_protect_op_freezes_the_groups_of_that_op():
    res = graphprune.prune(str(RESNET), ratio=0.5, protect_op=["Gemm"])
    frozen = [g for g in res.report["groups"] if "--protect-op 'Gemm'" in (g["frozen_reason"] or "")]
    assert frozen and all(g["size_after"] == g["size_before"] for g in frozen)


def test_max_ratio_caps_every_group_under_global_rank():
    free = graphprune.prune(str(RESNET), ratio=0.6, global_rank=True)
    capped = graphprune.prune(str(RESNET), ratio=0.6, global_rank=True, max_ratio=0.5)
    assert any(a < b - b // 2 for b, a in widths(free.report).values())
    assert all(a >= b - b // 2 for b, a in widths(capped.report).values())
    tp = graphprune.prune(str(RESNET), target_params=0.6, global_rank=True, max_ratio=0.5)
    assert all(a >= b - b // 2 for b, a in widths(tp.report).values())


@pytest.mark.parametrize("global_rank", [False, True])
def test_target_macs_removes_that_share_of_the_macs(global_rank):
    res = graphprune.prune(str(RESNET), target_macs=0.4, global_rank=global_rank)
    m = res.report["macs"]
    assert 1 - m["after"] / m["before"] == pytest.approx(0.4, abs=0.05)
    assert res.report["target"]["macs"] == 0.4


# ----------------------------------------------------------------------------- plans
def test_saved_plan_reapplied_gives_a_byte_identical_model(resnet, tmp_path):
    a, b, plan = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "plan.json"
    r = gp(resnet, a, "--ratio", "0.4", "--global-rank", "--save-plan", plan, "--quiet")
    assert r.returncode == 0, r.stderr
    doc = json.loads(plan.read_text())
    assert doc["graphprune_plan"] == 1 and doc["model"]["fingerprint"].startswith("sha256:")
    assert any(g["keep"] for g in doc["groups"])
    r = gp(resnet, b, "--plan", plan, "--quiet")
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenetv2_tiny", "densenet_tiny",
                                  "shufflenetv2_tiny", "unet_tiny", "vgg_flatten", "se_net_tiny",
                                  "resnet_bottleneck"])
def test_plan_applies_to_the_other_export_with_the_same_widths(name):
    legacy = graphprune.prune(str(ONNX / f"{name}.legacy.onnx"), ratio=0.3, global_rank=True)
    dynamo = graphprune.apply(str(ONNX / f"{name}.dynamo.onnx"), legacy.prune_plan)
    w = lambda res: sorted((g["units"], len(g["keep"]) if g["keep"] else g["units"])  # noqa
                           for g in res.plan_document["groups"])
    assert w(legacy) == w(dynamo)
    gone = lambda res: res.report["params"]["before"] - res.report["params"]["after"]  # noqa
    assert gone(legacy) == gone(dynamo)  # (the exports differ by a few scalar constants)


def test_plan_of_another_model_is_refused(tmp_path):
    plan = tmp_path / "plan.json"
    graphprune.prune(str(RESNET), ratio=0.3).save_plan(plan)
    r = gp(ONNX / "mobilenetv2_tiny.dynamo.onnx", tmp_path / "o.onnx", "--plan", plan)
    assert r.returncode == 2 and "the plan does not fit this model" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_plan_api_edit_then_apply():
    plan = graphprune.plan(str(RESNET), ratio=0.3)
    g = plan["layer2.0.conv1.weight[0]"]
    assert g.units == 16 and len(g.keep) == 12 and len(g.scores) == 16
    g.keep = [0, 1, 2, 3]
    plan["layer1.0.conv1.weight[0]"].keep_top(2)
    with pytest.raises(UserError):
        g.keep = [99]
    res = graphprune.apply(str(RESNET), plan)
    w = widths(res.report)
    assert w["layer2.0.conv1.weight[0]"] == (16, 4) and w["layer1.0.conv1.weight[0]"] == (8, 2)
    kept = {x["name"]: x["kept"] for x in res.report["groups"]}
    assert kept["layer2.0.conv1.weight[0]"] == [0, 1, 2, 3]


def test_hand_edited_plan_file(resnet, tmp_path):
    plan = tmp_path / "plan.json"
    graphprune.prune(str(resnet), ratio=0.3).save_plan(plan)
    doc = json.loads(plan.read_text())
    for g in doc["groups"]:
        g["keep"] = None
    doc["groups"][0]["keep"] = [0, 1]
    plan.write_text(json.dumps(doc))
    r = gp(resnet, tmp_path / "o.onnx", "--plan", plan, "--json")
    assert r.returncode == 0, r.stderr
    changed = {n: w for n, w in widths(json.loads(r.stdout)).items() if w[0] != w[1]}
    assert changed == {doc["groups"][0]["name"]: (doc["groups"][0]["units"], 2)}


# ----------------------------------------------------------------------------- recipes
def test_config_equals_the_same_flags(resnet, tmp_path):
    flags = ["--ratio", "0.4", "--global-rank", "--round-to", "2", "--ratio-for",
             "layer3.*=0.25", "--protect", "fc*", "--max-ratio", "0.6", "--seed", "3"]
    a = tmp_path / "a.onnx"
    r = gp(resnet, a, *flags, "--report", tmp_path / "a.json", "--quiet")
    assert r.returncode == 0, r.stderr
    recipe = {"model": str(resnet), "output": str(tmp_path / "b.onnx"), "ratio": 0.4,
              "global_rank": True, "round-to": 2, "ratio_for": {"layer3.*": 0.25},
              "protect": ["fc*"], "max_ratio": 0.6, "seed": 3,
              "report": str(tmp_path / "b.json"), "quiet": True}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    r = gp("--config", tmp_path / "recipe.json")
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == (tmp_path / "b.onnx").read_bytes()
    ra, rb = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert without_timings(ra) == without_timings(rb)
    # a flag overrides the file
    r = gp("--config", tmp_path / "recipe.json", "--ratio", "0.1", "--json")
    assert json.loads(r.stdout)["target"]["ratio"] == 0.1


@pytest.mark.parametrize("recipe,needle", [
    ({"ratio": 1.5}, "ratio: 1.5 violates exclusiveMaximum 1"),
    ({"ratoi": 0.3}, "unknown recipe key 'ratoi'"),
    ({"ratios": "0.1,0.2"}, "'ratios' is not an option of `graphprune prune`"),
    ({"protect": "x"}, "protect: expected array"),
])
def test_bad_recipe_is_exit_2(resnet, tmp_path, recipe, needle):
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    r = gp(resnet, "--config", tmp_path / "r.json")
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_schema_covers_every_option_of_the_commands():
    from graphprune.cli.main import main
    from graphprune.cli.recipe import schema

    props = set(schema()["properties"])
    for name in ("prune", "sweep", "batch"):
        for p in main.commands[name].params:
            if getattr(p, "hidden", False) or p.name in ("config", "debug"):
                continue
            long = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            key = (long[0][2:] if long else p.name).replace("-", "_")
            assert key in props or (name, key) == ("prune", "out"), (name, key)


def test_schema_is_valid_json_schema_and_agrees_with_the_validator():
    jsonschema = pytest.importorskip("jsonschema")
    from graphprune.cli.recipe import schema, validate

    sch = schema()
    jsonschema.Draft202012Validator.check_schema(sch)
    for doc in ({"ratio": 0.3, "ratio_for": {"a*": 0.5}, "input_shapes": {"x": [1, 3]}},
                {"ratio": 1.0}, {"steps": 0}, {"protect": [1]}, {"zzz": 1},
                {"compensate": "obspa", "scheduler": "tcp://127.0.0.1:8786"},
                {"scheduler": "127.0.0.1"}, {"ratios": [0.1, 0.2]}, {"dims": ["heads", "x"]}):
        ok = jsonschema.Draft202012Validator(sch).is_valid(doc)
        assert ok == (validate(doc, sch) == []), doc


# ----------------------------------------------------------------------------- steps
@pytest.mark.parametrize("kw", [{"ratio": 0.5}, {"ratio": 0.5, "global_rank": True},
                                {"target_params": 0.5}, {"target_macs": 0.4}])
def test_steps_reach_the_target(kw):
    # one case with the default reconstruction in every step, the others one-shot (faster)
    kw = {**kw, "criterion": "obspa", "calib": 16,
          **({} if kw == {"ratio": 0.5} else {"reconstruct": False})}
    one = graphprune.prune(str(RESNET), **kw)
    four = graphprune.prune(str(RESNET), steps=4, **kw)
    if "ratio" in kw and not kw.get("global_rank"):
        assert widths(one.report) == widths(four.report)
    key, f = ("macs", kw["target_macs"]) if "target_macs" in kw else ("params", kw.get(
        "target_params"))
    if f is not None:
        c = four.report[key]
        assert 1 - c["after"] / c["before"] == pytest.approx(f, abs=0.06)
    u = four.report["summary"]
    assert u["units_before"] - u["units_after"] > 0
    assert four.report["target"]["steps"] == 4
    kept = {g["name"]: len(g["keep"]) for g in four.plan_document["groups"] if g["keep"]}
    assert kept == {n: a for n, (b, a) in widths(four.report).items() if a < b}


def test_steps_without_compensation_are_refused(resnet, tmp_path):
    r = gp(resnet, tmp_path / "o.onnx", "--steps", "3")
    assert r.returncode == 2 and "--steps needs compensation" in r.stderr


def test_steps_with_compensation_run_calibrated(resnet, tmp_path):
    r = gp(resnet, tmp_path / "o.onnx", "--ratio", "0.5", "--steps", "3", "--criterion",
           "obspa", "--calib-random", "16", "--no-reconstruct", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["calibration"]["calibrated"] and rep["compensation"]["layers"]
    assert all(a == b - b // 2 for b, a in widths(rep).values())


# --------------------------------------------------------------------- inputs and providers
def test_input_shapes_fix_macs_and_keep_the_models_own_dims(tmp_path):
    free = graphprune.prune(str(BERT), ratio=0.3)
    fixed = graphprune.prune(str(BERT), ratio=0.3, input_shapes={"input": (2, 32)})
    # without them the MACs are counted at batch 1 and a guessed 16 tokens, which the report
    # says; 2 x 32 tokens are four times as many (and attention grows with their square)
    assert free.report["macs"]["assumed"] == ["input[0] (batch) = 1", "input[1] (seq) = 16"]
    assert fixed.report["macs"]["before"] > 4 * free.report["macs"]["before"]
    assert fixed.report["macs"]["assumed"] == []
    dims = [d.dim_param for d in fixed.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    r = gp("analyze", BERT, "--input-shapes", "input:2x32", "--json")
    assert r.returncode == 0, r.stderr
    r = gp(BERT, tmp_path / "o.onnx", "--input-shapes", "ids:2x32")
    assert r.returncode == 2 and "no input 'ids' (inputs: input)" in r.stderr
    r = gp(BERT, tmp_path / "o.onnx", "--input-shapes", "input:2x0")
    assert r.returncode == 2


@pytest.mark.parametrize("cmd", [["{m}", "{o}"], ["bench", "{m}", "--repeats", "1"],
                                 ["sweep", "{m}", "--ratios", "0.3", "--out", "{d}"]])
def test_absent_provider_is_exit_2_naming_the_available(resnet, tmp_path, cmd):
    args = [a.format(m=resnet, o=tmp_path / "o.onnx", d=tmp_path / "sw") for a in cmd]
    r = gp(*args, "--provider", "TensorrtExecutionProvider")
    assert r.returncode == 2, r.stderr
    assert "not available" in r.stderr and "CPUExecutionProvider" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bench_reports_the_provider_of_every_node(resnet):
    r = gp("bench", resnet, "--repeats", "3", "--warmup", "1", "--provider", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["models"][0]
    placed = m["placement"]
    assert placed["by_provider"]["CPUExecutionProvider"] == len(placed["nodes"]) > 5
    assert m["providers"] == ["CPUExecutionProvider"]
    r = gp("bench", BERT, "--repeats", "2", "--warmup", "0", "--input-shapes", "input:1x64")
    assert r.returncode == 0 and "nodes run by" in r.stdout, r.stderr


# ----------------------------------------------------------------------------- CLI
def test_positional_output_and_the_summary_table(resnet, tmp_path):
    out = tmp_path / "small.onnx"
    r = gp(resnet, out, "--ratio", "0.3")
    assert r.returncode == 0, r.stderr and out.exists()
    text = r.stdout
    for needle in ("opset ", "IN: input", "OUT: output", "| Conv ", "Params", "MACs",
                   "Model size", "Fidelity", "Elapsed", "small.onnx"):
        assert needle in text, needle
    r = gp(resnet, out, "-o", tmp_path / "other.onnx")
    assert r.returncode == 2 and "two outputs" in r.stderr


def test_global_is_a_deprecated_alias(resnet, tmp_path):
    r = gp(resnet, tmp_path / "o.onnx", "--global", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["target"]["global"] is True
    assert "deprecated" in r.stderr


# ----------------------------------------------------------------------------- Python API
def _samples(n=8, seed=0):
    name = onnx.load(str(RESNET)).graph.input[0].name
    rng = np.random.default_rng(seed)
    return name, [{name: rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                  for _ in range(n)]


def test_calibration_from_feed_dicts_and_a_calibration_data_reader():
    name, items = _samples()

    class Reader:  # onnxruntime.quantization.CalibrationDataReader's protocol
        def __init__(self):
            self.it = iter(items)

        def get_next(self):
            return next(self.it, None)

    stacked = {name: np.concatenate([d[name] for d in items])}
    ref = graphprune.prune(str(RESNET), ratio=0.3, criterion="obspa", calib=stacked)
    for src in (items, iter(items), Reader()):
        res = graphprune.prune(str(RESNET), ratio=0.3, criterion="obspa", calib=src)
        assert res.report["calibration"]["samples"] == 8
        assert res.model.SerializeToString() == ref.model.SerializeToString()


def test_callable_criterion_sees_weights_and_statistics():
    _, items = _samples()
    seen = {}

    def last_channels_first(group, stats):
        seen[group.name] = (len(group.weights), sorted(stats))
        return np.arange(group.n_units, dtype=float)  # higher index = kept

    res = graphprune.prune(str(RESNET), ratio=0.5, criterion=last_channels_first, calib=items)
    assert res.report["criterion"] == "last_channels_first"
    for g in res.report["groups"]:
        if g["kept"] is not None:
            assert g["kept"] == list(range(g["size_before"] - g["size_after"], g["size_before"]))
    assert any(stats for _, stats in seen.values())
    with pytest.raises(UserError, match="scores for group"):
        graphprune.prune(str(RESNET), criterion=lambda g, s: [1.0])
