"""Fuzzing the whole command line with mutated real models.

Valid bundled models (models/onnx/*.onnx, models/demo.onnx) are mutated — nodes deleted,
reordered or given another op type, inputs swapped or rewired, input shapes, attributes and
initializer shapes/values perturbed, opsets changed, serialized bytes corrupted or truncated —
and pruned through the CLI (in-process). Whatever the input, graphprune must either write a
model that passes the ONNX checker and runs in ONNX Runtime, or exit 2 with one line on stderr
and nothing written: never a traceback, never an internal error, never an invalid file.

`benchmarks/fuzz_long.py` runs the same cases many more times with fresh randomness.

One known bug outside this suite's code is kept out with a documented `assume` in `cases`
(shape probing of CNNs with symbolic image sizes crashes ONNX Runtime in shape_probe.py);
remove it once that is fixed.
"""
from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from graphprune.runtime import session as ortb
from graphprune.cli.main import main
from graphprune.ir.sanity import check_model_relative

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models" / "onnx").glob("*.onnx")) + [ROOT / "models" / "demo.onnx"]
_BYTES: dict[Path, bytes] = {}
OUTCOMES: collections.Counter = collections.Counter()

OPS = ["Relu", "Sigmoid", "Identity", "Add", "Mul", "Sub", "Conv", "MatMul", "Gemm", "Transpose",
       "Flatten", "Concat", "Softmax", "Reshape", "BatchNormalization", "MaxPool",
       "GlobalAveragePool", "Split", "TopK", "NoSuchOp"]
STRUCTURAL = ["delete_node", "swap_nodes", "change_op", "swap_inputs", "rewire_input",
              "input_dim", "attr_int", "init_dims", "init_values", "drop_initializer",
              "drop_output", "extra_output", "opset", "init_dtype",
              # mutations that keep the model valid, so the analysis itself gets exercised
              "insert_unary", "symbolic_dims", "typed_output", "share_weight"]
UNARY = ["Relu", "Sigmoid", "Identity", "Neg", "Abs", "Tanh", "Softsign"]
BYTEWISE = ["corrupt_bytes", "truncate"]


class Blob(bytes):
    """Serialized model bytes that print short in failure reports."""

    def __repr__(self) -> str:
        import hashlib

        return f"<{len(self)} bytes sha256:{hashlib.sha256(self).hexdigest()[:16]}>"


def source(path: Path) -> bytes:
    if path not in _BYTES:
        _BYTES[path] = path.read_bytes()
    return _BYTES[path]


def _names(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    return sorted({i.name for i in g.input} | {t.name for t in g.initializer}
                  | {o for n in g.node for o in n.output if o})


def _value(t: onnx.TensorProto):
    """An initializer's value, or None when an earlier mutation made it unreadable."""
    try:
        return numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001
        return None


def mutate(m: onnx.ModelProto, kind: str, draw) -> None:
    """Apply one structural mutation in place. `draw(strategy)` draws from hypothesis."""
    g = m.graph
    nodes = g.node
    pick = lambda seq: draw(st.sampled_from(list(seq)))  # noqa: E731
    idx = lambda n: draw(st.integers(0, n - 1))  # noqa: E731
    if kind == "delete_node" and len(nodes) > 1:
        del nodes[idx(len(nodes))]
    elif kind == "swap_nodes" and len(nodes) > 1:
        i, j = idx(len(nodes)), idx(len(nodes))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif kind == "change_op":
        nodes[idx(len(nodes))].op_type = pick(OPS)
    elif kind == "swap_inputs":
        n = nodes[idx(len(nodes))]
        ins = list(n.input)[::-1]
        del n.input[:]
        n.input.extend(ins)
    elif kind == "rewire_input":
        n = nodes[idx(len(nodes))]
        if n.input:
            n.input[idx(len(n.input))] = pick(_names(m))
    elif kind == "input_dim":
        real = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
        if real and real[0].type.tensor_type.shape.dim:
            dims = real[0].type.tensor_type.shape.dim
            d = dims[idx(len(dims))]
            v = pick([0, 1, 2, 3, 7, 64, "N", None])
            if v is None:
                d.Clear()
            elif isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v
    elif kind == "attr_int":
        cands = [(n, a) for n in nodes for a in n.attribute
                 if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
        if cands:
            n, a = cands[idx(len(cands))]
            f = pick([lambda v: v + 1, lambda v: v - 1, lambda v: 0, lambda v: -1,
                      lambda v: 2 * v, lambda v: 3])
            if a.type == onnx.AttributeProto.INT:
                a.i = int(f(a.i))
            elif a.ints:
                k = idx(len(a.ints))
                a.ints[k] = int(f(a.ints[k]))
    elif kind == "init_dims" and g.initializer:
        t = g.initializer[idx(len(g.initializer))]
        dims = list(t.dims)
        how = pick(["permute", "grow", "flatten", "drop"])
        if how == "permute" and len(dims) > 1:
            dims = dims[1:] + dims[:1]
        elif how == "grow" and dims:
            dims[idx(len(dims))] += 1
        elif how == "flatten":
            dims = [int(np.prod(dims))] if dims else [1]
        elif how == "drop" and dims:
            dims = dims[:-1]
        del t.dims[:]
        t.dims.extend(dims)
    elif kind == "init_values" and g.initializer:
        t = g.initializer[idx(len(g.initializer))]
        a = _value(t)
        if a is None:
            return
        fill = pick([0, np.nan, np.inf, -1, 10 ** 6])
        if np.issubdtype(a.dtype, np.floating) or fill in (0, -1):
            t.CopyFrom(numpy_helper.from_array(np.full_like(a, fill), t.name))
    elif kind == "drop_initializer" and g.initializer:
        del g.initializer[idx(len(g.initializer))]
    elif kind == "drop_output" and len(g.output) > 0:
        del g.output[idx(len(g.output))]
    elif kind == "extra_output":
        outs = [o for n in nodes for o in n.output if o]
        name = pick(outs)
        if name not in {o.name for o in g.output}:
            g.output.append(helper.make_empty_tensor_value_info(name))
    elif kind == "opset":
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = pick([7, 9, 11, 13, 17, 18, 21, 99])
    elif kind == "insert_unary":
        outs = [o for n in nodes for o in n.output if o]
        t = pick(outs)
        new = t + "__fuzz"
        for n in nodes:
            for k, i in enumerate(n.input):
                if i == t:
                    n.input[k] = new
        for o in g.output:
            if o.name == t:
                o.name = new
        at = next(k for k, n in enumerate(nodes) if t in n.output)
        nodes.insert(at + 1, helper.make_node(pick(UNARY), [t], [new], name=new))
    elif kind == "symbolic_dims":  # batch (and sometimes spatial) sizes known only at run time
        spatial = draw(st.booleans())
        for i in g.input:
            dims = i.type.tensor_type.shape.dim
            for k, d in enumerate(dims):
                if k == 0 or (spatial and k >= 2 and len(dims) == 4):
                    d.dim_param = f"d{k}"
    elif kind == "typed_output":
        outs = [o for n in nodes for o in n.output if o]
        name = pick(outs)
        if name not in {o.name for o in g.output}:
            g.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    elif kind == "share_weight" and len(g.initializer) > 1:
        # point one weight input at another initializer of the same shape (a tied weight)
        by_shape: dict = {}
        for t in g.initializer:
            by_shape.setdefault(tuple(t.dims), []).append(t.name)
        tied = [v for v in by_shape.values() if len(v) > 1]
        if tied:
            a, b = pick(tied)[:2]
            for n in nodes:
                for k, i in enumerate(n.input):
                    if i == b:
                        n.input[k] = a
    elif kind == "init_dtype" and g.initializer:
        t = g.initializer[idx(len(g.initializer))]
        a = _value(t)
        if a is None:
            return
        to = pick([np.float16, np.float64, np.int64, np.int32])
        if draw(st.booleans()):
            t.CopyFrom(numpy_helper.from_array(a.astype(to), t.name))
        else:  # a type tag that no longer matches the stored bytes
            t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(to))


@st.composite
def cases(draw, kinds=tuple(STRUCTURAL + BYTEWISE)):
    path = draw(st.sampled_from(MODELS))
    raw = source(path)
    kind = draw(st.sampled_from(kinds))
    steps = [kind]
    if kind in BYTEWISE:
        data = bytearray(raw)
        if kind == "truncate":
            data = data[:draw(st.integers(0, len(data) - 1))]
        else:
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        out = bytes(data)
    else:
        m = onnx.load_from_string(raw)
        mutate(m, kind, draw)
        if draw(st.integers(0, 3)) == 0:  # sometimes a second mutation
            second = draw(st.sampled_from(STRUCTURAL))
            mutate(m, second, draw)
            steps.append(second)
        # Known bug, not in this suite's code: graphprune/shape_probe.py runs the model in ONNX
        # Runtime at 7 and 11 pixels when shape inference leaves sizes symbolic, and ORT's
        # pooling kernels divide by zero on the onnx wheel's AlexNet/ZFNet/Inception at those
        # sizes (SIGFPE kills the process). Only benchmarks/fuzz_long.py --light reaches it.
        assume(not (path.parent.name == "light" and _symbolic_spatial(m)))
        out = m.SerializeToString()
    flags = draw(st.sampled_from([["--ratio", "0.3"], ["--ratio", "0.9"],
                                  ["--ratio", "0.5", "--global-rank", "--round-to", "4"]]))
    return path.name, steps, Blob(out), flags


def _symbolic_spatial(m: onnx.ModelProto) -> bool:
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        if len(dims) == 4 and any(not d.HasField("dim_value") for d in list(dims)[2:]):
            return True
    return False


def run_case(name: str, steps: list[str], data: bytes, flags: list[str]) -> str:
    """Prune one mutated model; assert the contract. Returns 'pruned' or 'refused'."""
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "in.onnx", Path(d) / "out.onnx"
        src.write_bytes(data)
        r = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", *flags])
        where = f"{name} {steps} {flags}"
        left = sorted(f.name for f in Path(d).iterdir())
        if r.exit_code == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("graphprune: error: "), (where, r.stderr)
            assert left == ["in.onnx"], (where, left)
            assert src.read_bytes() == data, where
            OUTCOMES["refused"] += 1
            return "refused"
        if r.exit_code != 0:
            dbg = CliRunner().invoke(main, [str(src), "-o", str(out), "--quiet", "--debug", *flags])
            raise AssertionError(f"{where}: exit {r.exit_code}\n{r.stderr}\n{dbg.stderr}")
        assert left == ["in.onnx", "out.onnx"], (where, left)
        pruned = onnx.load(str(out))
        # valid relative to the input: the checker faults left are the input's own
        check_model_relative(pruned, onnx.load_from_string(data))
        sess = ortb.session(pruned)
        for dyn in (16, 1, 224, 64):  # the sizes validation tries
            try:
                ortb.run(sess, ortb.random_inputs(sess, dynamic=dyn))
                break
            except Exception:  # noqa: BLE001  (ORT raises several types)
                continue
        else:
            raise AssertionError(f"{where}: the written model does not run")
        OUTCOMES["pruned"] += 1
        return "pruned"


FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(cases(kinds=tuple(STRUCTURAL)))
def test_fuzz_structural_mutations(case):
    run_case(*case)


@settings(FUZZ, max_examples=50)
@given(cases(kinds=tuple(BYTEWISE)))
def test_fuzz_corrupted_bytes(case):
    run_case(*case)


def test_fuzz_exercised_both_outcomes():
    """The mutations must not all be refused (they would test nothing but the loader)."""
    if OUTCOMES["pruned"] + OUTCOMES["refused"] < 100:
        import pytest

        pytest.skip("run with the fuzz tests above")
    assert OUTCOMES["pruned"] >= 20 and OUTCOMES["refused"] >= 20, OUTCOMES
