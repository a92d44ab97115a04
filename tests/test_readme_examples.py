"""The extension examples of README "Extending graphprune" work as written: the op rule
registers and prunes equivalently through a graph, the criterion registers, scores every group
and ranks a dead unit last."""
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphprune
from graphprune.criteria import CRITERIA
from graphprune.ops.registry import RULES
from helpers import assert_equivalent

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Extending graphprune"):text.index("## Criteria")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture
def registered():
    """Run the README's code blocks; unregister what they added afterwards."""
    before_rules, before_criteria = dict(RULES), dict(CRITERIA)
    for code in _blocks():
        exec(compile(code, str(README), "exec"), {})
    yield
    RULES.clear()
    RULES.update(before_rules)
    CRITERIA.clear()
    CRITERIA.update(before_criteria)


def _model(dead: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 4)).astype(np.float32)
    if dead is not None:
        w1[:, dead] = 0
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_readme_criterion_scores_and_ranks_a_dead_unit_last(registered):
    _, dg = graphprune.analyze(_model(dead=3))
    (grp,) = dg.prunable_groups()
    assert int(np.argmin(CRITERIA["l1"](dg)[grp.id])) == 3
    res = graphprune.prune(_model(dead=3), ratio=0.5, criterion="l1")
    (entry,) = [g for g in res.report["groups"] if g["frozen_reason"] is None]
    assert entry["size_after"] == 3
    assert_equivalent(_model(dead=3), res)


def test_readme_op_rule_registers(registered):
    assert ("", "Softsign2") in RULES


def test_readme_criterion_function_prunes_with_calibration():
    (code,) = [b for b in _blocks() if "def l1_times_rms" in b]
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)
    x = {"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)}
    for calib in (None, x):
        res = graphprune.prune(_model(dead=3), ratio=0.5, criterion=ns["l1_times_rms"],
                               calib=calib)
        (entry,) = [g for g in res.report["groups"] if g["frozen_reason"] is None]
        assert entry["size_after"] == 3 and 3 not in entry["kept"]
        assert res.report["criterion"] == "l1_times_rms"
