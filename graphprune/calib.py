"""Calibration data and the activation statistics the data-aware criteria need.

Where inputs come from (`load_calibration`):

- a ``.npz`` file: arrays keyed by graph input name, samples along axis 0 (the same format
  `--calib` uses for fidelity);
- a folder of images (``.png .jpg .jpeg .bmp .gif .tif .tiff .webp``, sorted by name): each image
  is converted to RGB (or grayscale when the model takes one channel), its shorter side resized
  to the model's input size, center-cropped to H×W, scaled to [0, 1], normalized with the
  ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) when
  ``preprocess="imagenet"`` (single-channel models use the mean of those numbers), and laid out
  NCHW;
- an integer N: N seeded standard-normal samples (shape check only; no real distribution).

What is measured (`collect_stats`): for every *consumer* — a Conv (group 1), Gemm or MatMul whose
constant weight has a contraction axis (ROLE_IN) in a prunable group — running sums over the
channels of its activation input: count, Σx, Σx² and the channel Gram matrix Σ x xᵀ. For a Conv
every spatial position of every sample counts as one sample of the C-vector, so the Gram matrix
is C×C (the im2col Gram would be C·k² wide). The model runs in ONNX Runtime in batches with the
consumer inputs exposed as extra outputs; only the sums are kept, never the activations, so
memory is one batch of activations plus C² per consumer input.

Data-free statistics (`data_free_stats`) stand in when there is no calibration data: when the
consumer's input comes (through Relu / Identity / Clip / Dropout) from a BatchNormalization,
each channel is a Gaussian with mean β and variance γ² (what the BN was trained to output),
pushed analytically through the ReLU (rectified-Gaussian moments), channels independent;
otherwise zero mean and identity covariance.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from math import erf, pi, sqrt
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .dependency import ROLE_IN, DependencyGraph
from .errors import UserError
from .ir import GraphView, attr

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
BATCH = 32
# Above this width the Gram matrix is not kept (C² float64 per consumer input): those
# consumers keep only the diagonal, and OBS uses a diagonal Hessian for them.
MAX_GRAM = 8192


# --------------------------------------------------------------------------- inputs
@dataclass
class Calibration:
    """Calibration feeds (graph input name -> array, samples along axis 0) and optional labels."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""

    @property
    def n(self) -> int:
        return len(next(iter(self.feeds.values()))) if self.feeds else 0


def load_calibration(source, model: onnx.ModelProto, preprocess: str = "imagenet",
                     labels=None, seed: int = 0, limit: int | None = None) -> Calibration:
    """Calibration from a dict of arrays, a ``.npz`` file, a folder of images or an int N
    (N random samples); see the module docstring. `labels` (array or text file with one
    integer per line, same order as the samples) is kept for label-aware criteria."""
    if isinstance(source, Calibration):
        cal = source
    elif isinstance(source, dict):
        cal = Calibration({k: np.asarray(v) for k, v in source.items()}, source="arrays")
    elif isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        cal = Calibration(random_feeds(model, int(source), seed), source=f"random:{int(source)}")
    else:
        p = Path(source)
        if p.is_dir():
            cal = Calibration(load_image_dir(p, model, preprocess, limit), source=f"images:{p}")
        elif p.is_file():
            from .evaluate import load_calib

            cal = Calibration(load_calib(p, model), source=f"npz:{p.name}")
        else:
            raise UserError(f"{p}: calibration source not found (a .npz file or a folder of "
                            "images)")
    if labels is not None:
        lab = labels
        if isinstance(labels, (str, Path)):
            lab = np.loadtxt(labels, dtype=np.int64, ndmin=1)
        cal.labels = np.asarray(lab).reshape(-1)
        if len(cal.labels) != cal.n:
            raise UserError(f"--labels: {len(cal.labels)} labels for {cal.n} samples")
    if limit is not None and cal.n > limit:
        cal.feeds = {k: v[:limit] for k, v in cal.feeds.items()}
        if cal.labels is not None:
            cal.labels = cal.labels[:limit]
    if cal.n == 0:
        raise UserError("calibration data has no samples")
    return cal


def random_feeds(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n seeded random samples for every graph input (symbolic sizes other than batch: 16)."""
    from .backends import ort as ortb

    if n < 1:
        raise UserError(f"--calib-random needs N >= 1, got {n}")
    sess = ortb.session(model)
    static = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    if static and max(static) > 1 and n % max(static):
        n = (n // max(static) + 1) * max(static)
    b = max(static) if static else n
    parts = [ortb.random_inputs(sess, seed=seed + k, batch=b, dynamic=16)
             for k in range(max(1, n // b))]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def _image_input(model: onnx.ModelProto) -> tuple[str, int, int, int]:
    from .backends import ort as ortb

    ins = ortb.session(model).get_inputs()
    if len(ins) != 1 or len(ins[0].shape) != 4:
        raise UserError("--calib DIR (images) needs a model with one NCHW image input; "
                        f"this one has inputs {[(i.name, i.shape) for i in ins]}")
    _, c, h, w = ins[0].shape
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise UserError(f"--calib DIR: the image input {ins[0].name} needs static C, H, W "
                        f"(got {ins[0].shape})")
    return ins[0].name, c, h, w


def load_image_dir(folder: Path, model: onnx.ModelProto, preprocess: str = "imagenet",
                   limit: int | None = None) -> dict[str, np.ndarray]:
    """Images of a folder, preprocessed as the module docstring says, as one NCHW array."""
    from PIL import Image

    if preprocess not in ("imagenet", "none"):
        raise UserError(f"--preprocess takes imagenet or none, got {preprocess!r}")
    name, c, h, w = _image_input(model)
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[:limit]
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for k, f in enumerate(files):
        img = Image.open(f).convert("L" if c == 1 else "RGB")
        out[k] = preprocess_image(img, h, w, c, preprocess)
    return {name: out}


def preprocess_image(img, h: int, w: int, c: int = 3, preprocess: str = "imagenet") -> np.ndarray:
    """Resize the shorter side to cover H×W, center-crop, scale to [0, 1], normalize: (C, H, W)."""
    from PIL import Image

    s = max(h / img.height, w / img.width)
    nh, nw = max(h, round(img.height * s)), max(w, round(img.width * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - h) // 2, (nw - w) // 2
    img = img.crop((left, top, left + w, top + h))
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if preprocess == "imagenet":
        mean = IMAGENET_MEAN if c == 3 else np.full(c, IMAGENET_MEAN.mean(), np.float32)
        std = IMAGENET_STD if c == 3 else np.full(c, IMAGENET_STD.mean(), np.float32)
        a = (a - mean[:, None, None]) / std[:, None, None]
    return a.astype(np.float32)


# --------------------------------------------------------------------------- consumers
@dataclass
class Consumer:
    """A layer that contracts a prunable channel axis with a constant weight.

    `x`/`x_axis`: the activation input and its channel axis; `w`/`w_axis`: the weight and its
    contraction axis (position j of both is the same channel); `out_axes`: the weight axes that
    index outputs (rows of the matrix view); `bias`: the bias input name or "".
    """

    node: onnx.NodeProto
    op: str
    x: str
    x_axis: int
    w: str
    w_axis: int
    bias: str
    out_axis: int  # the weight axis that is the output channel (for slicing a new bias)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as rows × in-channels: Conv rows are (out channel, kernel offset)."""
        return np.moveaxis(w, self.w_axis, -1).reshape(-1, w.shape[self.w_axis])

    def unmatrix(self, m: np.ndarray, shape) -> np.ndarray:
        moved = list(np.moveaxis(np.empty(shape, dtype=np.int8), self.w_axis, -1).shape)
        return np.moveaxis(m.reshape(moved), -1, self.w_axis)

    def row_outputs(self, shape) -> np.ndarray:
        """For every matrix row, the output channel it feeds (bias index)."""
        idx = np.indices(shape)[self.out_axis]
        return np.moveaxis(idx, self.w_axis, -1).reshape(-1, shape[self.w_axis])[:, 0]


def find_consumers(dg: DependencyGraph) -> list[Consumer]:
    """Every Conv/Gemm/MatMul whose constant weight has a ROLE_IN axis in a prunable group."""
    view = dg.view
    in_members = {(m.tensor, m.axis) for g in dg.prunable_groups() for m in g.members
                  if m.role == ROLE_IN}
    out = []
    for node in view.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        c = None
        if node.op_type == "Conv" and int(attr(node, "group", 1)) == 1 and len(node.input) > 1:
            c = Consumer(node, "Conv", node.input[0], 1, node.input[1], 1,
                         node.input[2] if len(node.input) > 2 else "", 0)
        elif node.op_type == "Gemm" and len(node.input) > 1:
            ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
            c = Consumer(node, "Gemm", node.input[0], 0 if ta else 1, node.input[1],
                         1 if tb else 0, node.input[2] if len(node.input) > 2 else "",
                         0 if tb else 1)
            if float(attr(node, "alpha", 1.0)) != 1.0:
                c = None  # the matrix view below would ignore alpha
        elif node.op_type == "MatMul":
            a, b = node.input
            ra, rb = view.rank(a), view.rank(b)
            if ra is not None and rb is not None and rb >= 2 and b in view.consts \
                    and a not in view.consts:
                c = Consumer(node, "MatMul", a, ra - 1, b, rb - 2, "", rb - 1)
        if c is None or (c.w, c.w_axis) not in in_members or c.x in view.consts:
            continue
        if not _is_float(view, c.w) or view.consts[c.w].kind == "constant_of_shape":
            continue
        out.append(c)
    return out


def _is_float(view: GraphView, name: str) -> bool:
    c = view.consts.get(name)
    return c is not None and np.issubdtype(np.dtype(c.dtype), np.floating)


# --------------------------------------------------------------------------- statistics
@dataclass
class ChannelStats:
    """Running sums over the channels of one activation axis."""

    n: float = 0.0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None  # Σx² per channel (the Gram diagonal)
    gram: np.ndarray | None = None  # Σ x xᵀ (None above MAX_GRAM channels)
    source: str = "calibration"  # "calibration" | "batchnorm" | "identity"

    def add(self, rows: np.ndarray) -> None:
        r = rows.astype(np.float64, copy=False)
        if self.s1 is None:
            c = r.shape[1]
            self.s1, self.s2 = np.zeros(c), np.zeros(c)
            self.gram = np.zeros((c, c)) if c <= MAX_GRAM else None
        self.n += r.shape[0]
        self.s1 += r.sum(0)
        self.s2 += np.einsum("ij,ij->j", r, r)
        if self.gram is not None:
            self.gram += r.T @ r

    @property
    def mean(self) -> np.ndarray:
        return self.s1 / max(self.n, 1)

    @property
    def second(self) -> np.ndarray:
        """E[x²] per channel."""
        return self.s2 / max(self.n, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.second - self.mean ** 2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        """‖X_j‖₂ per channel, divided by √n so it does not grow with the calibration size."""
        return np.sqrt(self.second)

    def hessian(self) -> np.ndarray:
        """E[x xᵀ] (diagonal when the Gram matrix was too wide to keep)."""
        if self.gram is not None:
            return self.gram / max(self.n, 1)
        return np.diag(self.second)


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """An activation as samples × channels (every other axis becomes samples)."""
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


def collect_stats(model: onnx.ModelProto, consumers: list[Consumer], cal: Calibration,
                  batch: int = BATCH) -> dict[tuple[str, int], ChannelStats]:
    """Run the model on the calibration feeds in batches; sums per consumer input channel."""
    from .backends import ort as ortb
    from .evaluate import batches

    keys = sorted({(c.x, c.x_axis) for c in consumers})
    if not keys:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    names = sorted({t for t, _ in keys})
    for t in names:
        if t not in have and t not in {i.name for i in probe.graph.input}:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    sess = ortb.session(probe)
    stats = {k: ChannelStats() for k in keys}
    symbolic = _symbolic_batch(sess)
    for feeds in batches(sess, cal.feeds):
        n = len(next(iter(feeds.values())))
        # evaluate's chunks hold up to 64 samples; smaller steps bound activation memory
        for s in range(0, n, batch) if symbolic else [0]:
            sub = {k: v[s:s + batch] for k, v in feeds.items()} if symbolic else feeds
            outs = dict(zip(names, sess.run(names, sub)))
            for (t, ax), st in stats.items():
                st.add(_rows(np.asarray(outs[t]), ax))
    return stats


def _symbolic_batch(sess) -> bool:
    return all(not (i.shape and isinstance(i.shape[0], int)) for i in sess.get_inputs())


# --------------------------------------------------------------------------- data-free
PASS_THROUGH = {"Relu", "Identity", "Dropout", "Clip"}


def _rectified_moments(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[max(0, z)] and E[max(0, z)²] for z ~ N(mu, sigma²), elementwise."""
    sigma = np.maximum(np.abs(sigma), 1e-12)
    a = mu / sigma
    phi = np.exp(-0.5 * a * a) / sqrt(2 * pi)
    cdf = 0.5 * (1.0 + np.vectorize(erf)(a / sqrt(2)))
    m1 = mu * cdf + sigma * phi
    m2 = (mu * mu + sigma * sigma) * cdf + mu * sigma * phi
    return m1, np.maximum(m2, m1 * m1)


def data_free_stats(dg: DependencyGraph, consumers: list[Consumer]) -> dict:
    """Per consumer input: moments from a preceding BatchNormalization, else identity."""
    view = dg.view
    out: dict[tuple[str, int], ChannelStats] = {}
    for c in consumers:
        key = (c.x, c.x_axis)
        if key in out:
            continue
        size = view.consts[c.w].shape[c.w_axis]
        t, relu = c.x, False
        node = view.producer.get(t)
        while node is not None and node.op_type in PASS_THROUGH:
            relu = relu or node.op_type in ("Relu", "Clip")
            t = node.input[0]
            node = view.producer.get(t)
        st = ChannelStats(n=1.0, source="identity")
        if (node is not None and node.op_type == "BatchNormalization" and c.x_axis == 1
                and all(i in view.consts for i in node.input[1:3])):
            gamma = np.asarray(view.const_value(node.input[1]), np.float64).reshape(-1)
            beta = np.asarray(view.const_value(node.input[2]), np.float64).reshape(-1)
            if len(gamma) == size:
                if relu:
                    m1, m2 = _rectified_moments(beta, gamma)
                else:
                    m1, m2 = beta, beta * beta + gamma * gamma
                st.s1, st.s2 = m1, m2
                st.gram = np.outer(m1, m1) + np.diag(m2 - m1 * m1) if size <= MAX_GRAM else None
                st.source = "batchnorm"
        if st.source == "identity":
            st.s1, st.s2 = np.zeros(size), np.ones(size)
            st.gram = np.eye(size) if size <= MAX_GRAM else None
        out[key] = st
    return out


@dataclass
class CalibContext:
    """What the data-aware criteria and the compensation pass share for one pruning run."""

    consumers: list[Consumer] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)
    source: str = ""
    samples: int = 0
    # the samples themselves, for criteria that run the model (lrp)
    calibration: Calibration | None = None


def build_context(dg: DependencyGraph, cal: Calibration | None, data_free: bool = False,
                  batch: int = BATCH, stats: bool = True) -> CalibContext:
    """Consumers and their statistics: measured when `cal` is given (and `stats`), else (with
    `data_free`) derived from the model's own BatchNorm parameters."""
    ctx = CalibContext(consumers=find_consumers(dg), calibration=cal)
    if cal is not None:
        ctx.calibrated = True
        if stats:
            ctx.stats = collect_stats(dg.view.model, ctx.consumers, cal, batch)
    elif data_free:
        ctx.stats = data_free_stats(dg, ctx.consumers)
    return ctx
