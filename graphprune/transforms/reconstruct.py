"""Sequential reconstruction: refit every consumer on the partly pruned model's activations.

One-shot compensation (`transforms.compensate`, mode ``obspa``) fits each consumer on statistics of
the *unpruned* model, so a layer never sees the error its upstream layers already make. Here the
consumers are refitted in graph order, stage by stage (a stage: consumers whose inputs do not
depend on one another), each by least squares so that its output on the partly pruned model's
activations matches the original model's output:

    min over W′, b′  Σ_samples ‖W′ x′_K + b′ − (W x + b)‖² + λ ‖W′ − W_K‖²

x: the consumer's input in the original model, x′_K: in the pruned-so-far model, restricted to
the kept input positions K; λ = `damp` × mean diag of E[x′_K x′_Kᵀ] pulls the solution towards
the original kept weights where the data say little. The sufficient statistics are two running
sums per consumer, E[x̃′ x̃′ᵀ] and the cross term E[x̃′ xᵀ] (x̃′ = [x′_K, 1]); the solution is one
Cholesky solve. Conv consumers (2-D, group 1) are fitted on im2col patches, so the kernel
offsets are fitted jointly; wider ones (C·k² > `MAX_IM2COL`) and other ranks use the channel
Gram matrix with kernel offsets as separate rows, as `transforms.compensate` does.

The partly pruned model is never rewritten: the *masked* model (every weight slice that reads a
removed unit set to zero, full widths kept) computes exactly what the pruned model computes (the
test suite checks this equivalence), so its activations come from the original graph with edited
weights, walked stage by stage through the runner's `Segments` (`calibration.stats`): every node
of the original and of the masked model runs once in all, fed with the tensors kept from the
stages before.

Consumers whose input is unchanged (nothing removed upstream and none of their own inputs) are
left alone. At the end the new weights and biases are written into the working model; the
rewrite then slices the removed columns away as usual. A consumer without a bias gets one: the
constant of a following ``Add`` when there is one, else a new bias like `transforms.compensate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..analysis.graph import DependencyGraph
from ..calibration.stats import CalibContext, Consumer
from ..ir import GraphView, attr
from . import correct as corr
from .compensate import _add_to_bias, _insert_after
from .masking import BATCH, find_bias, masked_overrides
from .rewrite import Rewriter, keep_positions
from .select import Plan

DAMP = 1e-2
DAMP_DEFAULT: float | str = "auto"
EVERY_LAYER = False
DAMP_GRID = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
CV_ROWS = 128  # output rows the damping is chosen on
MAX_IM2COL = 4608  # widest C·kh·kw fitted on im2col patches
MAX_WIDTH = 8192  # wider consumer inputs are not refitted (their Gram would not fit)


@dataclass
class Layer:
    """One consumer being refitted."""

    c: Consumer
    kept: np.ndarray  # kept input positions (all of them when nothing is removed)
    n_in: int
    out_keep: np.ndarray | None  # kept output channels (None: all)
    conv: dict | None = None  # im2col geometry (2-D Conv only)
    bias_kind: str = "new"  # "input" | "add" | "new"
    bias_name: str = ""
    bias_shape: tuple = ()
    stage: int = 0
    # running sums, one per fold (calibration batches alternate between two folds)
    n: np.ndarray | None = None
    gram: np.ndarray | None = None  # Σ x̃′ x̃′ᵀ over kept columns + 1, per fold
    cross: np.ndarray | None = None  # Σ x̃′ xᵀ over all input columns, per fold
    damp: float = 0.0  # the damping used (chosen by cross-validation with damp="auto")
    # the solution
    new_w: np.ndarray | None = None
    d_out: np.ndarray | None = None  # bias change per output channel

    def cols(self) -> np.ndarray:
        """Kept columns of the matrix view (im2col: every kernel offset of a kept channel)."""
        if self.conv is None:
            return self.kept
        k = self.conv["k"]
        return (self.kept[:, None] * k + np.arange(k)[None, :]).reshape(-1)


def _conv_geometry(view: GraphView, c: Consumer, w_shape) -> dict | None:
    node = c.node
    if c.op != "Conv" or len(w_shape) != 4:
        return None
    kh, kw = int(w_shape[2]), int(w_shape[3])
    cin = int(w_shape[1])
    if cin * kh * kw > MAX_IM2COL:
        return None
    strides = list(attr(node, "strides", [1, 1]))
    dil = list(attr(node, "dilations", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID"):
        shp = view.shape(c.x)
        if shp is None or not all(isinstance(d, int) for d in shp[2:]):
            return None
        pads = [0, 0, 0, 0]
        for a, (size, k, s, d) in enumerate(zip(shp[2:], (kh, kw), strides, dil)):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[a], pads[a + 2] = lo, total - lo
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    if kh == kw == 1 and strides == [1, 1] and pads == [0, 0, 0, 0]:
        return None  # the channel view is exact
    return {"kh": kh, "kw": kw, "k": kh * kw, "strides": strides, "dil": dil, "pads": pads}


def im2col(x: np.ndarray, g: dict) -> np.ndarray:
    """(N, C, H, W) → (N·Ho·Wo, C·kh·kw) patches, columns ordered (channel, kh, kw) like the
    flattened Conv weight."""
    (pt, pl, pb, pr), (sh, sw), (dh, dw) = g["pads"], g["strides"], g["dil"]
    kh, kw = g["kh"], g["kw"]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (ekh, ekw), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, Ho, Wo, kh, kw
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def _rows(layer: Layer, a: np.ndarray) -> np.ndarray:
    if layer.conv is not None:
        return im2col(a, layer.conv)
    return np.moveaxis(a, layer.c.x_axis, -1).reshape(-1, a.shape[layer.c.x_axis])


def _matrix(layer: Layer, w: np.ndarray) -> np.ndarray:
    """Rows (outputs) × input columns, matching `_rows`."""
    if layer.conv is not None:
        return w.reshape(w.shape[0], -1)
    return layer.c.matrix(w)


def _row_outputs(layer: Layer, shape) -> np.ndarray:
    if layer.conv is not None:
        return np.arange(shape[0])
    return layer.c.row_outputs(shape)


def _unmatrix(layer: Layer, m: np.ndarray, shape) -> np.ndarray:
    if layer.conv is not None:
        return m.reshape(shape)
    return layer.c.unmatrix(m, shape)


def linear_layers(view: GraphView) -> list[Consumer]:
    """Every Conv (group 1), Gemm and MatMul with a constant floating-point weight, as
    consumers (whether or not a prunable group reaches their input)."""
    out = []
    for node in view.graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        x, w = node.input[0], node.input[1]
        if w not in view.consts or x in view.consts or view.consts[w].kind == "constant_of_shape" \
                or not np.issubdtype(np.dtype(view.consts[w].dtype), np.floating):
            continue
        bias = node.input[2] if len(node.input) > 2 else ""
        rank = len(view.consts[w].shape)
        if node.op_type == "Conv" and int(attr(node, "group", 1)) == 1 and rank >= 3:
            out.append(Consumer(node, "Conv", x, 1, w, 1, bias, 0))
        elif node.op_type == "Gemm" and rank == 2 and float(attr(node, "alpha", 1.0)) == 1.0:
            ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
            out.append(Consumer(node, "Gemm", x, 0 if ta else 1, w, 1 if tb else 0, bias,
                                0 if tb else 1))
        elif node.op_type == "MatMul" and rank == 2 and view.rank(x) is not None:
            out.append(Consumer(node, "MatMul", x, view.rank(x) - 1, w, 0, "", 1))
    return out


def reconstruct(view: GraphView, dg: DependencyGraph, plan: Plan, ctx: CalibContext,
                damp: float | None = None, batch: int = BATCH, correct: str | None = None,
                every_layer: bool | None = None) -> dict:
    """Refit the consumers in graph order (see the module docstring), in place on
    `view.model`. With `correct` ("meanvar" or "mean", see `transforms.correct`), every changed
    layer's output statistics are corrected in the same walk, right after its refit, so the
    layers downstream are refitted on corrected inputs. With `every_layer`, layers whose input
    has no prunable unit (a transformer's q/k/v and up projections under heads/MLP pruning)
    are refitted too, all columns kept. Returns a summary for the report."""
    damp = DAMP_DEFAULT if damp is None else damp
    every_layer = EVERY_LAYER if every_layer is None else every_layer
    feeds = ctx.calibration.feeds if ctx.calibration is not None else None
    if feeds is None:
        raise ValueError("sequential reconstruction needs calibration samples")
    keep = keep_positions(dg, plan)
    original = view.model
    overrides = masked_overrides(view, dg, plan)
    zeroed = set(overrides)
    layers: dict[str, Layer] = {}
    skipped: list[str] = []
    seen_w: dict[str, int] = {}
    cands = list(ctx.consumers)
    if every_layer:
        have = {c.node.output[0] for c in cands}
        cands += [c for c in linear_layers(view) if c.node.output[0] not in have]
    for c in cands:
        seen_w[c.w] = seen_w.get(c.w, 0) + 1
    for c in cands:
        label = c.node.name or c.node.output[0]
        if seen_w[c.w] > 1:
            skipped.append(f"{label}: weight shared with another consumer")
            continue
        w_shape = view.consts[c.w].shape
        n_in = int(w_shape[c.w_axis])
        if n_in > MAX_WIDTH:
            skipped.append(f"{label}: {n_in} inputs, wider than {MAX_WIDTH}")
            continue
        kept = keep.get((c.w, c.w_axis))
        kind, bname, bshape = find_bias(view, c, int(w_shape[c.out_axis]))
        if kind == "none":
            skipped.append(f"{label}: bias is not a constant of a known shape")
            continue
        layers[c.node.output[0]] = Layer(
            c, np.arange(n_in) if kept is None else np.asarray(kept), n_in,
            keep.get((c.w, c.out_axis)), _conv_geometry(view, c, w_shape), kind, bname, bshape)
    prods = {}
    if correct:
        prods = {p.y: p for p in corr.find_producers(view)}
    dirty = corr.producer_stages(view, prods, zeroed, layers)
    todo = [l for l in layers.values() if l.c.x in dirty or len(l.kept) < l.n_in]
    zeroed |= {l.c.w for l in todo}
    dirty = corr.producer_stages(view, prods, zeroed, layers)
    fixes = [p for p in prods.values() if p.y in dirty]
    adds: dict[str, np.ndarray] = {}
    stages = sorted({l.stage for l in todo} | {p.stage for p in fixes})
    walk = ctx.runner.segments
    ref, edited = walk(original, feeds, batch), walk(original, feeds, batch)
    for s in stages:
        stage = [l for l in todo if l.stage == s]
        taps = sorted({l.c.x for l in stage})
        if taps:
            for b, (xo, xe) in enumerate(zip(ref.advance(taps),
                                             edited.advance(taps, overrides, adds))):
                for l in stage:
                    _accumulate(l, xo[l.c.x], xe[l.c.x], b % 2)
            for l in stage:
                _solve(view, l, damp, overrides, adds)
                l.gram = l.cross = None  # the sums are not needed any more
        fix = [p for p in fixes if p.stage == s]
        if fix:
            corr.measure(view, fix, ref, edited, overrides, adds, correct, keep)
    done = _write(view, [l for l in todo if l.new_w is not None], overrides, keep)
    out = {"mode": "reconstruct", "stages": len(stages), "layers": done, "skipped": skipped,
           "damp": damp}
    if fixes:
        fv = GraphView(view.model, view.shapes)
        out["correction"] = {"mode": correct, "layers": corr.write(view, fv, fixes, keep)}
    return out


def _accumulate(l: Layer, x: np.ndarray, xp: np.ndarray, fold: int) -> None:
    """Add one batch to the layer's sums of `fold` (products in float32, sums in float64)."""
    ro = _rows(l, np.asarray(x, np.float32))
    rp = _rows(l, np.asarray(xp, np.float32))[:, l.cols()]
    rp = np.concatenate([rp, np.ones((len(rp), 1), np.float32)], axis=1)
    if l.gram is None:
        l.n = np.zeros(2)
        l.gram = np.zeros((2, rp.shape[1], rp.shape[1]))
        l.cross = np.zeros((2, rp.shape[1], ro.shape[1]))
    l.n[fold] += len(rp)
    l.gram[fold] += rp.T @ rp
    l.cross[fold] += rp.T @ ro


def _fit(g: np.ndarray, rhs_data: np.ndarray, prior: np.ndarray, damp: float) -> np.ndarray:
    """argmin of E‖W̃ x̃′ − W x‖² + λ‖W̃ − prior‖² given E[x̃′x̃′ᵀ] = g and W E[x x̃′ᵀ] =
    rhs_data, λ = damp × mean diag of g's weight block (not the bias entry)."""
    k = len(g) - 1
    lam = damp * float(np.mean(np.diag(g)[:k])) if k else 0.0
    lam = lam if lam > 0 else damp
    a = g.copy()
    a[np.arange(k), np.arange(k)] += lam
    a[k, k] += 1e-8 * max(float(a[k, k]), 1.0)
    rhs = rhs_data + lam * prior
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, lower=True), rhs.T).T
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs.T, rcond=None)[0].T


def _choose_damp(l: Layer, wr: np.ndarray, prior: np.ndarray) -> float:
    """The damping of DAMP_GRID with the smallest held-out error (fit on one fold, measured
    on the other, both ways); DAMP when a fold is empty."""
    if l.n.min() == 0:
        return DAMP
    if len(wr) > CV_ROWS:  # the error is a sum over rows: evenly spaced rows estimate it
        pick = np.linspace(0, len(wr) - 1, CV_ROWS).round().astype(int)
        wr, prior = wr[pick], prior[pick]
    g = l.gram / l.n[:, None, None]
    rhs = [wr @ (l.cross[f] / l.n[f]).T for f in (0, 1)]
    best, best_err = DAMP, np.inf
    for d in DAMP_GRID:
        err = 0.0
        for f in (0, 1):
            w = _fit(g[f], rhs[f], prior, d)
            v = 1 - f  # E‖w x̃′ − W x‖² on the other fold, up to a constant
            err += float(np.sum((w @ g[v]) * w) - 2.0 * np.sum(w * rhs[v]))
        if err < best_err:
            best, best_err = d, err
    return best


def _solve(view: GraphView, l: Layer, damp, overrides: dict, adds: dict) -> None:
    """New weight (kept columns) and bias of one layer; recorded in `overrides` / `adds` so
    the next stages run on them."""
    c = l.c
    w = np.asarray(view.const_value(c.w))
    wm = _matrix(l, w.astype(np.float64))
    rows_out = _row_outputs(l, w.shape)
    rows = np.arange(len(wm)) if l.out_keep is None else \
        np.flatnonzero(np.isin(rows_out, l.out_keep))
    cols = l.cols()
    k = len(cols)
    wr = wm[rows]
    prior = np.concatenate([wm[np.ix_(rows, cols)], np.zeros((len(rows), 1))], axis=1)
    l.damp = _choose_damp(l, wr, prior) if damp == "auto" else float(damp)
    n = l.n.sum()
    sol = _fit(l.gram.sum(0) / n, wr @ (l.cross.sum(0) / n).T, prior, l.damp)
    # rows of removed outputs stay as the masked model has them (zero where those units are
    # cut at their producer: attention head positions no weight reads)
    new = _matrix(l, np.asarray(overrides.get(c.w, w), dtype=np.float64)).copy()
    new[:, np.setdiff1d(np.arange(wm.shape[1]), cols)] = 0.0
    new[np.ix_(rows, cols)] = sol[:, :k]
    d_out = np.bincount(rows_out[rows], weights=sol[:, k], minlength=w.shape[c.out_axis])
    l.new_w = _unmatrix(l, new, w.shape).astype(w.dtype)
    l.d_out = d_out
    overrides[c.w] = l.new_w
    if l.bias_kind in ("input", "add"):
        b = np.asarray(overrides[l.bias_name] if l.bias_name in overrides
                       else view.const_value(l.bias_name))
        scale = float(attr(c.node, "beta", 1.0)) if (c.op == "Gemm" and l.bias_kind == "input") \
            else 1.0
        overrides[l.bias_name] = (b.astype(np.float64) + (d_out / scale).reshape(b.shape)
                                  ).astype(b.dtype)
    else:
        shape = (len(d_out),) + (1,) * (len(w.shape) - 2) if c.op == "Conv" else (len(d_out),)
        adds[c.node.output[0]] = d_out.reshape(shape).astype(w.dtype)


def _write(view: GraphView, layers: list[Layer], overrides: dict, keep) -> list[dict]:
    """Write the refitted weights and biases into the working model."""
    rw = Rewriter(view, {})
    new_nodes: list = []
    done = []
    for l in layers:
        c = l.c
        rw.write_const(c.w, l.new_w)
        if l.bias_kind in ("input", "add"):
            rw.write_const(l.bias_name, overrides[l.bias_name])
            how = "updated"
        else:
            how = _add_to_bias(view, rw, c, l.d_out, keep, new_nodes) or "unchanged"
        done.append({"node": c.node.name or c.node.output[0], "op": c.op, "stage": l.stage,
                     "removed_inputs": int(l.n_in - len(l.kept)),
                     "fit": "im2col" if l.conv is not None else "channels",
                     "damp": l.damp, "bias": how})
    _insert_after(view, new_nodes)
    return done
