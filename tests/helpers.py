"""Shared test utilities: running models and the consumer-zeroing equivalence oracle."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.runtime import session as ortb
from graphprune.runtime.taps import TapRunner
from graphprune.ops.registry import ROLE_IN
from graphprune.ir import GraphView, quant
from graphprune.transforms.untie import untie_shared_constants


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    return ortb.run(ortb.session(model), feeds)


def feeds_for(model: onnx.ModelProto, seed: int = 0, dynamic: int = 16) -> dict:
    return ortb.random_inputs(ortb.session(model), seed=seed, dynamic=dynamic)


def zero_consumers(original: onnx.ModelProto, result) -> onnx.ModelProto:
    """The original model with every consumer weight slice that reads a removed unit set to 0.

    Removing a unit must be exactly the same as cutting its outgoing connections, so the pruned
    model's outputs must equal this model's outputs. Units that no weight reads (the feature
    positions of attention heads that queries and keys contract against each other) are cut at
    their producers instead: the producers' slices of those units are set to 0.
    """
    m = onnx.ModelProto()
    m.CopyFrom(original)
    untie_shared_constants(m)  # the same per-reader copies the analysis names its members by
    view = GraphView(m)
    dg, plan = result.graph, result.plan
    edits: dict[str, np.ndarray] = {}
    parts: dict[str, quant.Parts] = {}
    for gid, kept in plan.keep.items():
        grp = dg.groups[gid]
        read = set()  # the units some weight reads
        for mem in grp.members:
            if mem.role == ROLE_IN:
                read.update(np.unique(grp.unit_of[(mem.tensor, mem.axis)]).tolist())
        for mem in grp.members:
            units = grp.unit_of[(mem.tensor, mem.axis)]
            gone = ~np.isin(units, kept)
            if mem.role != ROLE_IN:  # producers: only the units no weight reads
                gone &= ~np.isin(units, sorted(read))
            drop = np.flatnonzero(gone)
            if not len(drop):
                continue
            c = view.consts.get(mem.tensor)
            if c is not None and c.kind == "quantized":  # codes set to the zero point: exact 0
                p = parts.get(mem.tensor) or quant.read_parts(c.proto, view.const_value)
                parts[mem.tensor] = quant.zeroed(p, mem.axis, drop)
                continue
            val = edits.get(mem.tensor)
            if val is None:
                val = np.array(view.const_value(mem.tensor))
            idx = [slice(None)] * val.ndim
            idx[mem.axis] = drop
            val[tuple(idx)] = zero_of(view, mem.tensor, val)[tuple(idx)]
            edits[mem.tensor] = val
    for name, p in parts.items():
        qw = view.consts[name].proto
        ranks = {"codes": len(view.consts[qw.codes].shape),
                 "scales": len(view.consts[qw.scales].shape),
                 "zp": len(view.consts[qw.zero_points].shape) if qw.zero_points else 0}
        edits.update(quant.stored(p, ranks))
    for name, val in edits.items():
        c = view.consts[name]
        tensor = numpy_helper.from_array(val.astype(c.dtype), name)
        if c.kind == "initializer":
            c.proto.CopyFrom(tensor)
        else:  # Constant / ConstantOfShape: becomes a Constant holding the edited value
            node = c.proto
            node.op_type = "Constant"
            del node.input[:]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", tensor))
    return m


def zero_of(view: GraphView, name: str, val: np.ndarray) -> np.ndarray:
    """The stored values that mean 0 for a constant: 0, or for a quantized weight its zero
    point (broadcast along the axis it is given for)."""
    from graphprune.ir.dequant import _SLOTS, _expand
    from graphprune.ir import attr

    zero = np.zeros_like(val)
    for node in view.consumers.get(name, []):
        for k, i in enumerate(node.input):
            slot = _SLOTS.get(node.op_type, {}).get(k)
            if i != name or slot is None:
                continue
            ins = list(node.input) + [""] * 12
            if not ins[slot[1]]:
                return zero
            zp = np.asarray(view.const_value(ins[slot[1]]))
            axis = slot[2]
            if axis is None:
                axis = int(attr(node, "axis", 1))
            elif axis == "gemm":
                axis = 0 if int(attr(node, "transB", 0)) else 1
            block = int(attr(node, "block_size", 0) or 0)
            z = _expand(zp, val, axis % val.ndim, block)
            return np.broadcast_to(z, val.shape).astype(val.dtype)
    return zero


def assert_equivalent(original: onnx.ModelProto, result, atol=1e-4, rtol=1e-4, seed=0):
    """Pruned outputs == consumer-zeroed original outputs on random inputs."""
    feeds = feeds_for(original, seed=seed)
    ref = run(zero_consumers(original, result), feeds)
    out = run(result.model, feeds)
    assert list(ref) == list(out)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], atol=atol, rtol=rtol, err_msg=k)


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs/outputs have a symbolic batch `N` and whose constant Reshape
    targets say -1 for the batch: what exporters emit with dynamic axes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    view = GraphView(m)
    for node in m.graph.node:
        if node.op_type != "Reshape":
            continue
        for a in node.attribute:
            if a.name == "allowzero":
                a.i = 0
        c = view.consts.get(node.input[1])
        v = np.array(view.const_value(node.input[1]))
        if v[0] == 1:
            v[0] = -1
            new = numpy_helper.from_array(v, c.name)
            if c.kind == "initializer":
                c.proto.CopyFrom(new)
            else:
                c.proto.attribute[0].t.CopyFrom(new)
    del m.graph.value_info[:]
    return m


def image_calib(n: int = 8, seed: int = 0) -> dict:
    """`n` random 3x32x32 images as the calibration feeds of the bundled tiny CNNs."""
    return {"input": np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)}


def run_taps(model, feeds, names, batch=1) -> list[dict]:
    """The tapped values of every batch of `feeds`."""
    return [outs for _, outs in TapRunner().taps(model, names, feeds, batch)]
