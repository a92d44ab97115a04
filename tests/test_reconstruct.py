"""Sequential reconstruction (transforms/reconstruct.py) and the segment runner it walks the
graph with (runtime/segments.py), and the defaults of the accuracy levers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.calibration.stats import find_consumers
from graphprune.pipeline.pipeline import analyze_model
from graphprune.runtime.segments import Segments, tap_model
from graphprune.runtime.taps import TapRunner
from graphprune.transforms.masking import masked_overrides
from graphprune.transforms.reconstruct import im2col
from graphprune.transforms.rewrite import keep_positions
from helpers import image_calib, run, run_taps

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "onnx"


def _rel_err(a, b):
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def test_segments_give_the_values_of_a_full_run():
    m = onnx.load(str(MODELS / "mobilenetv2_tiny.legacy.onnx"))
    view, dg = analyze_model(m)
    xs = [c.x for c in find_consumers(dg)]
    assert len(xs) > 3
    feeds = image_calib(4)
    full = run_taps(tap_model(m, xs), feeds, xs, batch=16)
    seg = Segments(m, feeds)
    for x in xs:  # one tensor per stage, in graph order
        got = list(seg.advance([x]))
        assert len(got) == len(full)
        for b, vals in enumerate(got):
            np.testing.assert_allclose(vals[x], full[b][x], rtol=1e-5, atol=1e-5)
    assert len(seg.kept) < len(xs)  # tensors nobody reads any more were let go


def test_segments_apply_overrides_and_updates_to_later_nodes_only():
    """A weight override reaches the nodes a call runs; `update` changes what later calls are
    fed (the runner behind the `Segments` protocol the transforms use)."""
    m = onnx.load(str(MODELS / "resnet_tiny.legacy.onnx"))
    view, dg = analyze_model(m)
    cons = find_consumers(dg)
    first, last = cons[0], cons[-1]
    feeds = image_calib(2)
    y0 = first.node.output[0]
    seg = TapRunner().segments(m, feeds, 16)
    full = run_taps(m, feeds, [first.x, last.x], batch=16)
    for got, want in zip(seg.advance([first.x]), full):
        np.testing.assert_allclose(got[first.x], want[first.x], rtol=1e-5, atol=1e-5)
    w = np.zeros_like(view.const_value(first.w))
    ys = list(seg.advance([y0], overrides={first.w: w}))
    assert len(ys) == len(full)
    for y in ys:  # a zero kernel leaves only the bias: constant over the image
        assert np.allclose(y[y0], y[y0][:, :, :1, :1], atol=1e-6)
    seg2 = TapRunner().segments(m, feeds, 16)
    list(seg2.advance([first.x]))
    seg2.update(first.x, lambda v: v * 0.0)
    for got, want in zip(seg2.advance([last.x]), full):
        assert not np.allclose(got[last.x], want[last.x])


@pytest.mark.parametrize("name", ["resnet_tiny.legacy", "vgg_flatten.dynamo"])
def test_masked_model_computes_what_the_pruned_model_computes(name):
    m = onnx.load(str(MODELS / f"{name}.onnx"))
    res = graphprune.prune(m, ratio=0.4, criterion="magnitude")
    view, _ = analyze_model(m)
    out = m.graph.output[0].name
    feeds = image_calib(2)
    (masked,) = [v[out] for v in run_taps(
        tap_model(m, [out], masked_overrides(view, res.graph, res.plan)),
        {"input": feeds["input"][:1]}, [out])]
    np.testing.assert_allclose(run(res.model, {"input": feeds["input"][:1]})[out], masked,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("geom", [dict(strides=[1, 1], pads=[1, 1, 1, 1]),
                                  dict(strides=[2, 2], pads=[1, 0, 1, 0]),
                                  dict(strides=[1, 2], pads=[2, 2, 2, 2], dilations=[2, 1])])
def test_im2col_matches_onnx_conv(geom):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **geom)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    y = run(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})["y"]
    d = geom.get("dilations", [1, 1])
    cols = im2col(x, {"kh": 3, "kw": 3, "k": 9, "strides": geom["strides"], "dil": d,
                      "pads": geom["pads"]})
    got = (cols @ w.reshape(5, -1).T).reshape(y.shape[0], y.shape[2], y.shape[3], 5)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet_tiny.legacy", "mobilenetv2_tiny.legacy"])
def test_reconstruction_beats_one_shot_compensation(name):
    """Refitting in graph order on the pruned model's own activations leaves a smaller error,
    at the output and at the last refitted layer, than compensating on the original's."""
    path = str(MODELS / f"{name}.onnx")
    m = onnx.load(path)
    cal = image_calib(8)
    out = m.graph.output[0].name
    results = {k: graphprune.prune(path, ratio=0.4, criterion="obspa", calib=cal, **o)
               for k, o in {"none": {"compensate": False}, "oneshot": {"reconstruct": False},
                            "seq": {"reconstruct": True, "correct": "none"}}.items()}
    seq = results["seq"].report["compensation"]
    assert seq["mode"] == "reconstruct" and seq["stages"] > 1 and seq["layers"]
    last = max(seq["layers"], key=lambda lay: lay["stage"])
    node = next(n for n in m.graph.node if (n.name or n.output[0]) == last["node"])
    y_name = node.output[0]
    errs = {}
    for k, res in results.items():
        keep = keep_positions(res.graph, res.plan).get((y_name, 1))
        ref_model = tap_model(m, [y_name, out])
        pruned = tap_model(res.model, [y_name, out])
        e_out = e_layer = 0.0
        for i in range(len(cal["input"])):
            f = {"input": cal["input"][i:i + 1]}
            (r,), (p,) = list(run_taps(ref_model, f, [y_name, out])), \
                list(run_taps(pruned, f, [y_name, out]))
            ry = r[y_name] if keep is None else np.take(r[y_name], keep, axis=1)
            e_layer += _rel_err(p[y_name], ry)
            e_out += _rel_err(p[out], r[out])
        errs[k] = (e_out, e_layer)
    assert errs["seq"][0] < errs["oneshot"][0] < errs["none"][0], errs
    assert errs["seq"][1] < errs["oneshot"][1], errs


def test_bias_goes_into_the_following_add():
    """MatMul → Add(bias) consumers (what dynamo exports for Linear) get their bias updated in
    place: no new node, no new parameter."""
    rng = np.random.default_rng(4)
    inits = {"w1": rng.standard_normal((6, 8)), "b1": rng.standard_normal(8),
             "w2": rng.standard_normal((8, 3)), "b2": rng.standard_normal(3)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]),
             helper.make_node("Add", ["h0", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y0"]),
             helper.make_node("Add", ["y0", "b2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.standard_normal((64, 6)) + 0.3).astype(np.float32)
    res = graphprune.prune(m, ratio=0.5, criterion="obspa", calib={"x": x}, correct="none")
    (lay,) = res.report["compensation"]["layers"]
    assert lay["bias"] == "updated" and lay["removed_inputs"] == 4
    assert len(res.model.graph.node) == len(m.graph.node)
    onnx.checker.check_model(res.model)
    oneshot = graphprune.prune(m, ratio=0.5, criterion="obspa", calib={"x": x},
                               reconstruct=False)
    ref = run(m, {"x": x})["y"]
    # one layer, nothing upstream: the same least squares as one-shot compensation, up to the
    # damping cross-validation picks
    assert _rel_err(run(res.model, {"x": x})["y"], ref) <= \
        1.1 * _rel_err(run(oneshot.model, {"x": x})["y"], ref)


def test_cli_levers(tmp_path):
    import json

    from click.testing import CliRunner

    from graphprune.cli.main import main

    out = tmp_path / "o.onnx"
    model = str(MODELS / "mobilenetv2_tiny.legacy.onnx")
    r = CliRunner().invoke(main, ["prune", model, "--criterion", "magnitude", "-o", str(out),
                                  "--calib-random", "4", "--reconstruct", "--correct", "meanvar",
                                  "--allocate", "--target-params", "0.3", "--json"],
                           standalone_mode=False)
    assert r.exit_code in (0, None), r.output
    rep = json.loads(r.output)
    comp = rep["compensation"]
    assert comp["mode"] == "reconstruct" and comp["layers"] and comp["correction"]["layers"]
    assert rep["params"]["after"] <= 0.7 * rep["params"]["before"]
    r = CliRunner().invoke(main, ["prune", model, "-o", str(out), "--reconstruct"])
    assert r.exit_code == 2 and "calibration data" in r.output
    r = CliRunner().invoke(main, ["prune", model, "-o", str(out), "--criterion", "obspa",
                                  "--calib-random", "4", "--no-reconstruct", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["compensation"]["mode"] == "obspa"


@pytest.mark.parametrize("opts,mode,corrected", [
    ({"criterion": "obspa", "calib": 4}, "reconstruct", False),  # data: reconstruction
    ({"criterion": "flap", "calib": 4}, "reconstruct", False),
    ({"criterion": "obspa", "calib": 4, "correct": "meanvar"}, "reconstruct", True),
    ({"criterion": "obspa", "calib": 4, "reconstruct": False}, "obspa", False),
    ({"criterion": "obspa", "calib": 4, "compensate": "flap"}, "flap", False),
    ({"criterion": "obspa", "calib": 4, "compensate": "none"}, None, False),
    ({"criterion": "magnitude", "calib": 4}, None, False),  # samples for nothing data-aware
    ({"criterion": "obspa"}, "obspa", False),  # data-free: one-shot OBS compensation
])
def test_lever_defaults(opts, mode, corrected):
    res = graphprune.prune(str(MODELS / "mobilenetv2_tiny.legacy.onnx"), ratio=0.3, **opts)
    comp = res.report.get("compensation")
    assert (comp or {}).get("mode") == mode
    assert ("correction" in (comp or {})) == corrected and "correction" not in res.report


def test_levers_refuse_what_they_cannot_do():
    path = str(MODELS / "resnet_tiny.legacy.onnx")
    for kw in ({"reconstruct": True}, {"correct": "meanvar"}):
        with pytest.raises(graphprune.errors.UserError, match="calibration data"):
            graphprune.prune(path, ratio=0.3, **kw)
    with pytest.raises(graphprune.errors.UserError, match="meanvar"):
        graphprune.prune(path, ratio=0.3, calib=2, correct="median")


def test_text_calibration_keeps_one_shot_and_measures_widths_by_default(tmp_path):
    """Statistics from --calib-text: no reconstruction unless asked for (on SmolLM2 it was
    ruinous at -30 % with uniform widths, and adds little after allocation); widths allocated
    from curves measured at the outputs (the layer-wise ones mislead there); asked for,
    reconstruction runs, and uniform widths on --no-allocate."""
    llm = MODELS / "llm" / "genai-fp32"
    text = tmp_path / "calib.txt"
    text.write_text("The capital of France is Paris. A tokenizer cuts text into pieces. " * 20)
    common = dict(criterion="flap", dims="heads,mlp", target_params=0.2, calib_text=str(text),
                  tokenizer=str(llm / "tokenizer.json"), seq_len=16)
    res = graphprune.prune(str(llm / "model.onnx"), **common)
    assert res.report["compensation"]["mode"] == "flap"
    assert res.report["target"]["allocate"] is True
    assert res.report["target"]["allocation"] == "measured"
    res = graphprune.prune(str(llm / "model.onnx"), reconstruct=True, allocate=False, **common)
    assert res.report["compensation"]["mode"] == "reconstruct"
    assert res.report["target"]["allocate"] is False
