"""``lrp``: Layer-wise Relevance Propagation importance ("Pruning by Explaining", Yeom et al. 2021).

Weight magnitude says how big a filter is; activation statistics say how much signal flows
through it. LRP asks what the network's *decision* owes to each unit: the logit of the target
class is redistributed backward, layer by layer, onto the neurons that produced it, so that
(up to what biases and the stabilizer absorb) the relevance entering a layer equals the
relevance leaving it. A filter whose output maps carry little relevance over a few samples per
class can go with the least effect on the predictions, which is what the paper found to beat
weight- and gradient-based criteria without fine-tuning.

How it runs on an ONNX graph (numpy; relevance in float64, conv products in float32 like the
activations ORT computed):

1. *Forward*: the model runs in ONNX Runtime on the calibration feeds in batches (``BATCH``
   samples, or the model's static batch) with every intermediate tensor exposed as an extra
   graph output, as `graphprune.calib.collect_stats` does. Only one batch of activations and
   relevances is alive at a time.
2. *Initial relevance*: the target-class logit, zero elsewhere. The target is the label when the
   calibration has labels (``--labels``), else the predicted class. A Softmax/LogSoftmax at the
   output is skipped (relevance starts at its input, the logits). For outputs of rank > 2 the
   class axis is 1 (``[N, K, H, W]`` segmentation maps), or the last axis in graphs with attention
   (``[B, S, V]``), with the predicted class at every position; a rank ≤ 1 output is its own
   relevance.
3. *Backward*: nodes are visited in reverse graph order; each op type has one rule in `RULES`
   mapping the relevance of its outputs to its inputs, and relevance arriving at a tensor from
   several consumers (skip connections) is summed. ``z`` below is the op's pre-activation,
   ``stab(z) = z + ε·sign(z)`` (sign(0) = +1) keeps the division finite, and ε = ``EPS``.

   - **Conv** (any group count, depthwise included; 1-, 2- and 3-D): the *z⁺ rule*
     R_i = Σ_j z⁺_ij / Σ_i' z⁺_i'j · R_j over the positive contributions only
     (z⁺_ij = x_i⁺ w_ij⁺ + x_i⁻ w_ij⁻, which equals x_i w_ij⁺ after a ReLU). It never divides by
     a cancelling sum, so relevance stays positive and stable through deep conv stacks — the
     rule the paper uses for convolutions. ``conv_rule="epsilon"`` selects the ε-rule instead.
     The *first* layer (input = graph input) uses z⁺ too, with the sign split above so
     normalized pixels of either sign are handled (``first_rule="w2"`` gives the input-free w²
     rule). That choice only shapes the relevance map of the input image, which no unit score
     reads, so the criterion skips layers that read only graph inputs altogether.
   - **BatchNormalization** after a Conv/Gemm (its only consumer) is *folded* into that layer
     (W' = γ/σ·W, b' = γ/σ·(b − μ) + β) so z⁺ sees the real effective filter; the BN node then
     passes relevance through. A BN that cannot be folded (after a Concat, pre-activation) is a
     per-channel affine map under the ε-rule R_x = (a·x) / stab(a·x + c) · R_y.
   - **Gemm / MatMul** with a constant weight: ε-rule R_i = x_i Σ_j w_ij R_j / stab(z_j) with
     the bias inside z (the bias absorbs its share, as in Montavon et al. 2019).
   - **Add / Sum / Sub** (residual joins, bias adds): each input gets its share
     ±x_k / stab(Σ ±x) · R; constant inputs absorb theirs; broadcast inputs get the sum over the
     broadcast axes.
   - **GlobalAveragePool / AveragePool / ReduceMean / ReduceSum**: the ε-rule of the averaging
     (each input's share of its window mean).
   - **MaxPool / GlobalMaxPool**: winner-take-all — all relevance of a window goes to its arg-max
     (the first one on ties), since only that input influenced the output.
   - **Relu, LeakyRelu, Clip, Sigmoid, HardSwish and other elementwise activations, Identity,
     Dropout, Cast**: pass-through (the activation is not a redistribution step).
     **Reshape / Flatten / Squeeze / Unsqueeze / Transpose**: the relevance is reshaped/transposed
     like the tensor. **Concat / Split**: routed to the matching slices.
   - **Slice, Gather, Pad, Tile, Expand, Resize/Upsample (nearest), DepthToSpace,
     SpaceToDepth**: pure data movement; relevance is routed back to the source positions. The
     index map is computed by running the node in ORT on a tensor of position numbers, so every
     attribute and input (negative steps, runtime starts, nearest modes) means exactly what ORT
     does.
   - **Mul / Div** by a constant: pass-through. A product of two activations where one is
     broadcast (SE gates, RMSNorm's 1/rms, rotary tables) gives all relevance to the full-size
     signal and none to the gate (the signal-take-all rule of Arras et al. 2017); x·f(x) spelled
     out as a subgraph (Swish, decomposed GELU) gives all to x, like any activation; two
     unrelated full-size factors (SwiGLU) share it half and half (uniform rule, AttnLRP).
   - **LayerNormalization**: ε-rule with σ held constant per sample (Ali et al. 2022), which
     makes it linear. **Attention**: the Softmax probabilities act as constant weights of the
     probabilities·V MatMul (V gets all; no relevance enters the scores), other MatMuls of two
     activations split each contribution half and half.

   Any other op (or a rule that cannot apply to a node) stops the propagation there;
   `calib_ctx.notes` names it. Tensors upstream of it only receive what
   reaches them along other paths.
4. *Unit score*: for every prunable group, Σ|R| over samples and positions of the *output of each
   layer that produces the group's units* (Conv/Gemm/MatMul holding a ROLE_OUT member: conv
   filters, linear rows; after BN folding that is the BN output), mapped to units with
   ``g.unit_of``; groups without such a layer use the input of the consumer layers (ROLE_IN).
   Each group is L1-normalized (÷ its sum) so ``--global`` compares groups. A group none of whose
   tensors receives relevance is scored by `magnitude` and noted.

Without calibration data the model is explained on ``RANDOM_SAMPLES`` seeded random inputs (a
note says so): random inputs show which units the network *can* route decisions through, but
real samples, 5–10 per class as in the paper, are what the criterion is meant for.
"""
from __future__ import annotations

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ...analysis.build import has_attention
from ...calibration.data import Calibration
from ...calibration.stats import Runner
from ...errors import UserError
from ...ir import GraphView
from . import flow, layers  # noqa: F401  (register the rules)
from .flow import IndexMaps
from .kernels import CONV_RULES, EPS, f64, label_of
from .layers import LAYER_OPS, bn_affine
from .step import RULES, Step

BATCH = 16


@dataclass
class LRPConfig:
    """Rule choices. `eps`: ε of the ε-rules (and the z⁺ denominator guard); `conv_rule`:
    "zplus" or "epsilon" for convolutions; `first_rule`: "zplus", "w2" or "epsilon" for a conv
    reading a graph input; `fold_bn`: fold BatchNorm into the preceding Conv/Gemm/MatMul."""

    eps: float = EPS
    conv_rule: str = "zplus"
    first_rule: str = "zplus"
    fold_bn: bool = True

    def check(self) -> None:
        if self.conv_rule not in CONV_RULES or self.first_rule not in CONV_RULES:
            raise UserError(f"lrp: conv rules are {sorted(CONV_RULES)}; got "
                            f"{self.conv_rule!r}/{self.first_rule!r}")
        if not self.eps > 0:
            raise UserError(f"lrp: eps must be > 0, got {self.eps}")



def _fold_targets(view: GraphView) -> tuple[dict, set]:
    """BatchNorms that follow a Conv/Gemm/MatMul (their only consumer): {layer output:
    (scale, shift)} and the set of folded BN outputs."""
    fold, folded = {}, set()
    for bn in view.graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        x = bn.input[0]
        p = view.producer.get(x)
        aff = bn_affine(view, bn)
        if (p is None or p.op_type not in LAYER_OPS or aff is None
                or len(view.consumers.get(x, [])) != 1 or x in view.graph_outputs
                or len(p.input) < 2 or p.input[1] not in view.consts
                or p.input[0] in view.consts):
            continue
        if p.op_type != "Conv" and view.rank(x) != 2:  # channel axis 1 must be the last axis
            continue
        fold[x] = aff
        folded.add(bn.output[0])
    return fold, folded


class Explainer:
    """LRP over one ONNX graph: forward in ORT, backward in numpy (see the module docstring)."""

    def __init__(self, view: GraphView, runner: Runner, model: onnx.ModelProto | None = None,
                 cfg: LRPConfig | None = None, attention: bool | None = None,
                 input_relevance: bool = True):
        self.view = view
        self.runner = runner
        # False: skip the layers that only read graph inputs (the input's relevance map is an
        # explanation, but no unit score reads it; on a 224² stem it is ~10% of the work)
        self.input_relevance = input_relevance
        self.model = model if model is not None else view.model  # the runner reads weights
        # kept on disk from there
        self.cfg = cfg or LRPConfig()
        self.cfg.check()
        self.attention = has_attention(view) if attention is None else attention
        self.fold, self.folded_bn = _fold_targets(view) if self.cfg.fold_bn else ({}, set())
        self.index_maps = IndexMaps(self.model, runner)
        self.stopped: dict[tuple[str, str], list[str]] = {}  # (op, why) -> nodes where R stopped
        self.samples = 0

    # ------------------------------------------------------------------ forward
    def _fetch(self) -> list[str]:
        """Every tensor computed by a main-graph node (constants excluded)."""
        seen, out = set(self.view.graph_inputs), []
        for node in self.view.graph.node:
            for o in node.output:
                if o and o not in seen and o not in self.view.consts:
                    seen.add(o)
                    out.append(o)
        return out

    def batches(self, cal: Calibration, batch: int = BATCH):
        """(activations, labels) per batch: feeds plus every intermediate tensor."""
        start = 0
        for sub, outs in self.runner.taps(self.model, self._fetch(), cal.feeds, batch):
            m = len(next(iter(sub.values())))
            acts = dict(sub)
            acts.update(outs)
            labels = None if cal.labels is None else cal.labels[start:start + m]
            yield acts, labels
            start += m

    # ------------------------------------------------------------------ backward
    def seed(self, acts: dict, labels) -> dict[str, np.ndarray]:
        """Initial relevance: the target-class logit of the first float output (see module doc)."""
        out = next((o for o in self.view.graph_outputs if o in acts
                    and np.issubdtype(np.asarray(acts[o]).dtype, np.floating)), None)
        if out is None:
            return {}
        p = self.view.producer.get(out)
        if p is not None and p.op_type in ("Softmax", "LogSoftmax") and p.input[0] in acts:
            out = p.input[0]
        y = f64(acts[out])
        if y.ndim <= 1:
            return {out: y.copy()}
        axis = 1 if y.ndim == 2 or not self.attention else y.ndim - 1
        if labels is not None and y.ndim == 2:
            t = np.asarray(labels, dtype=np.int64)
            bad = np.flatnonzero((t < 0) | (t >= y.shape[1]))
            if len(bad):
                raise UserError(f"--labels: class ids must be in [0, {y.shape[1]}) for output "
                                f"'{out}', got {int(t[bad[0]])}")
        else:
            t = y.argmax(axis)
        shape = [1] * y.ndim
        shape[axis] = y.shape[axis]
        hit = np.arange(y.shape[axis]).reshape(shape) == np.expand_dims(t, axis)
        return {out: np.where(hit, y, 0.0)}

    def backward(self, acts: dict, seed: dict, sink: Callable[[str, np.ndarray], None]) -> None:
        """Propagate `seed` to every tensor it reaches; `sink(name, R)` sees each tensor's final
        relevance once (when all its consumers are done), after which it is dropped."""
        rel = dict(seed)
        for node in reversed(self.view.graph.node):
            r_out = [rel.pop(o, None) if o else None for o in node.output]
            if all(r is None for r in r_out):
                continue
            for o, r in zip(node.output, r_out):
                if r is not None:
                    sink(o, r)
            if not self.input_relevance and self._reads_only_inputs(node):
                continue
            r_in, why = self._apply(node, acts, r_out)
            if r_in is None:
                self.stopped.setdefault((label_of(node), why), []).append(
                    node.name or node.output[0])
                continue
            for name, r in zip(node.input, r_in):
                if r is None or not name or name in self.view.consts:
                    continue
                rel[name] = rel[name] + r if name in rel else r
            for o in node.output:  # every reader of these is done: free the activation
                acts.pop(o, None)
        for name, r in rel.items():
            sink(name, r)

    def _reads_only_inputs(self, node) -> bool:
        live = [i for i in node.input if i and i not in self.view.consts]
        return bool(live) and all(i in self.view.graph_inputs for i in live)

    def _apply(self, node, acts, r_out) -> tuple[list | None, str]:
        """(relevance per input, "") or (None, why propagation stops at this node)."""
        fn = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if fn is None:
            return None, "has no relevance rule"
        try:
            r_in = fn(Step(self, node, acts, r_out))
        except (ValueError, IndexError, TypeError) as e:  # shapes a rule does not handle
            return None, f"rule failed ({type(e).__name__}: {str(e)[:120]})"
        return r_in, "" if r_in is not None else "rule does not apply"

    def run(self, cal: Calibration, sink, batch: int = BATCH) -> None:
        for acts, labels in self.batches(cal, batch):
            seed = self.seed(acts, labels)
            self.samples += len(next(iter(acts.values())))
            if seed:
                self.backward(acts, seed, sink)

    def notes(self) -> list[str]:
        out = []
        for (op, why), names in sorted(self.stopped.items()):
            uniq = list(dict.fromkeys(names))
            out.append(f"lrp: {op} {why} at {len(uniq)} node(s) (e.g. '{uniq[0]}'); relevance "
                       "stops there")
        return out


def relevance_sums(view: GraphView, runner: Runner, feeds: dict, labels=None,
                   batch: int = BATCH, **cfg) -> dict[str, float]:
    """Σ of the relevance of every tensor that receives some, over all samples and positions.

    With ε-rules, zero biases and no unknown ops this is (nearly) the same number for every
    tensor on a path from the output to the input: the conservation property the tests check.
    """
    ex = Explainer(view, runner, view.model, LRPConfig(**cfg))
    sums: dict[str, float] = {}

    def sink(name, r):
        sums[name] = sums.get(name, 0.0) + float(np.sum(r))

    ex.run(Calibration({k: np.asarray(v) for k, v in feeds.items()},
                       None if labels is None else np.asarray(labels)), sink, batch)
    return sums
