"""Apply a graphprune plan (made on the module's ONNX export) to the module itself.

Every weight axis that shrinks in the graph is a parameter or buffer axis of the module, so the
same kept positions are selected along the same axis (ONNX and PyTorch lay out Conv, Linear /
Gemm(transB=1) and BatchNorm tensors identically). Module attributes that describe sizes
(`in_channels`, `groups`, `num_features`, ...) are then re-derived from the new tensors.
"""
from __future__ import annotations

import onnx
import torch
from torch import nn

from ..transforms.rewrite import keep_positions


class MappingError(ValueError):
    """A tensor the plan shrinks is not a parameter or buffer of the module."""


def _owners(module: nn.Module):
    """name -> tensor, and id(tensor) -> every (submodule, attribute, is_param) holding it."""
    by_name, holders = {}, {}
    for prefix, mod in module.named_modules(remove_duplicate=False):
        for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is None:
                continue
            by_name.setdefault(f"{prefix}.{attr}" if prefix else attr, t)
            holders.setdefault(id(t), []).append((mod, attr, attr in mod._parameters))
    return by_name, holders


def _conv_groups(model: onnx.ModelProto) -> dict[str, int]:
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1:
            g = next((a.i for a in n.attribute if a.name == "group"), 1)
            out[n.input[1]] = int(g)
    return out


def _fix_attributes(module: nn.Module, groups_by_weight: dict[str, int]) -> None:
    for name, m in module.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.modules.conv._ConvNd):
            m.groups = groups_by_weight.get(f"{name}.weight" if name else "weight", m.groups)
            if m.transposed:
                m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
            else:
                m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
            ref = w if w is not None else getattr(m, "running_mean", None)
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.GroupNorm) and w is not None:
            m.num_channels = w.shape[0]
        elif isinstance(m, nn.LayerNorm) and w is not None:
            m.normalized_shape = tuple(w.shape)
        elif isinstance(m, nn.PReLU):
            m.num_parameters = w.numel()
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = w.shape


SIZE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features",
              "num_features", "num_channels", "normalized_shape", "num_parameters",
              "num_embeddings", "embedding_dim")


def snapshot(module: nn.Module) -> list:
    """What `apply_plan` changes, so a failed prune can be undone with `restore`."""
    return [(m, dict(m._parameters), dict(m._buffers),
             {k: m.__dict__[k] for k in SIZE_ATTRS if k in m.__dict__})
            for m in module.modules()]


def restore(snap: list) -> None:
    for m, params, buffers, attrs in snap:
        m._parameters.clear()
        m._parameters.update(params)
        m._buffers.clear()
        m._buffers.update(buffers)
        m.__dict__.update(attrs)


def _add_cut(cuts: dict, name: str, axis: int, pos) -> None:
    for a, p in cuts.get(name, []):
        if a == axis:
            if len(p) != len(pos) or (p != pos).any():
                raise MappingError(
                    f"'{name}' (axis {axis}) is shared by layers the plan shrinks differently; "
                    f"the module holds one tensor for them. Protect it with "
                    f"protect=['{name}*'] or prune the ONNX model instead")
            return
    cuts.setdefault(name, []).append((axis, pos))


def apply_plan(module: nn.Module, result) -> nn.Module:
    """Shrink `module` in place to match `result` (a PruneResult of its `export_onnx` graph).

    A constant the analysis untied (`name__useK`, one copy per extra reader of a tensor the
    module shares between layers) maps back to the tensor it copies; the module can follow only
    when every reader keeps the same positions of it.

    Raises MappingError, before changing anything, when a shrinking tensor is not a parameter
    or buffer (e.g. a constant the exporter computed), or when a shared parameter would have to
    shrink differently for its readers, since the module could not follow.
    """
    keep = keep_positions(result.graph, result.plan)
    by_name, holders = _owners(module)
    copies = getattr(result, "copies", None) or {}
    cuts: dict[str, list] = {}
    for gid in result.plan.keep:
        for mem in result.graph.groups[gid].members:
            pos = keep.get((mem.tensor, mem.axis))
            if pos is None:
                continue
            name = mem.tensor
            while name not in by_name and name in copies:
                name = copies[name]
            if name not in by_name:
                raise MappingError(
                    f"'{mem.tensor}' (axis {mem.axis}) shrinks in the ONNX graph but is not a "
                    f"parameter or buffer of the module (an exporter-made constant?); "
                    f"protect it with protect=['{mem.tensor}'] or prune the ONNX model instead")
            _add_cut(cuts, name, mem.axis, pos)
    with torch.no_grad():
        for name, axis_cuts in cuts.items():
            old = by_name[name]
            new = old.detach()
            for axis, pos in axis_cuts:
                new = new.index_select(axis, torch.as_tensor(pos, dtype=torch.long,
                                                             device=new.device))
            new = new.clone()
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            for mod, attr, is_param in holders[id(old)]:
                (mod._parameters if is_param else mod._buffers)[attr] = new
    _fix_attributes(module, _conv_groups(result.model))
    return module
