"""Depth pruning: drop whole residual sub-blocks (What Matters in Transformers / FinerCut).

A residual block is an `Add(x, f(x))` whose second operand is computed from the first: a
transformer's attention or MLP sub-block, a ResNet basic block with an identity shortcut. ONNX
Runtime's fused graphs (its GenAI builder) add the residual inside the next norm instead:
``SkipSimplifiedLayerNormalization(x, f(x), γ)`` / ``SkipLayerNormalization`` give norm(x + f)
and, as output 3, x + f. Its score is how much it changes the stream, 1 − cos(x, x + f(x)),
averaged over the rows (tokens, pixels) of a few inputs run in ONNX Runtime. Dropping a block
replaces the Add by x (a skip-norm by the plain norm of x); the branch becomes dead code and is
removed.

A decoder with a KV cache keeps one past/present pair per attention block: when a block is
dropped its pair is removed from the graph's inputs and outputs, and the remaining layers are
renumbered contiguously (``past_key_values.0..L'-1``), as runtimes that name the cache by
layer index expect (`drop_dead_cache`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..calibration.stats import Runner
from ..ir import GraphView, subgraph_outer_names
from ..ir.inputs import input_specs, random_feeds

BATCH = 8  # samples per run of block scoring (fewer when their activations are large)


SKIP_NORMS = {"SkipSimplifiedLayerNormalization": "SimplifiedLayerNormalization",
              "SkipLayerNormalization": "LayerNormalization"}
ATTENTION = {"Softmax", "GroupQueryAttention", "MultiHeadAttention", "Attention"}


@dataclass
class ResidualBlock:
    add: str  # name of the Add (or skip-norm) node
    skip: str  # the stream tensor x
    out: str  # x + f(x) (a skip-norm's output 3; "" when it has none)
    kind: str  # "attention" | "mlp" | "block"
    score: float = 0.0
    dropped: bool = False
    branch: str = ""  # f(x)


def _ancestors(view: GraphView, name: str, limit: int = 100_000) -> set[str]:
    seen, stack = set(), [name]
    while stack and len(seen) < limit:
        t = stack.pop()
        node = view.producer.get(t)
        if node is None:
            continue
        for i in node.input:
            if i and i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def _branch_ops(view: GraphView, start: str, stop: set[str]) -> set[str]:
    """Op types on the paths from `stop` (exclusive) up to `start`."""
    ops, seen, stack = set(), set(), [start]
    while stack:
        t = stack.pop()
        node = view.producer.get(t)
        if node is None or t in stop or t in seen:
            continue
        seen.add(t)
        ops.add(node.op_type)
        stack.extend(i for i in node.input if i)
    return ops


def _skip_norm(view: GraphView, node) -> bool:
    """A skip-norm whose residual can be dropped: its statistics outputs unused, and the plain
    norm it becomes exists at the model's opset."""
    if node.op_type not in SKIP_NORMS or node.domain != "com.microsoft" or len(node.input) < 3:
        return False
    if any(o and (o in view.consumers or o in view.graph_outputs) for o in node.output[1:3]):
        return False
    return node.op_type != "SkipLayerNormalization" or (
        view.opset.get("ai.onnx", 1) >= 17 and len(node.input) > 3 and bool(node.input[3]))


def _stream(view: GraphView, x: str) -> set[str]:
    """The tensors through which a branch reads the stream x: x itself, and when x is a
    skip-norm's sum (output 3), the norm of it (output 0), which is what the next block reads."""
    node = view.producer.get(x)
    if node is not None and node.op_type in SKIP_NORMS and len(node.output) > 3 \
            and node.output[3] == x:
        return {x, node.output[0]}
    return {x}


def find_residual_blocks(view: GraphView) -> list[ResidualBlock]:
    blocks = []
    for node in view.graph.node:
        if node.op_type == "Add" and len(node.input) == 2 and all(node.input):
            out = node.output[0]
        elif _skip_norm(view, node):
            out = node.output[3] if len(node.output) > 3 else ""
        else:
            continue
        a, b = node.input[:2]
        if not (a and b) or view.is_const(a) or view.is_const(b):
            continue
        sa, sb = view.shape(a), view.shape(b)
        if sa is None or sa != sb or (out and view.shape(out) != sa):
            continue
        for skip, branch in ((a, b), (b, a)):
            stop = _stream(view, skip)
            if stop & _ancestors(view, branch):
                ops = _branch_ops(view, branch, stop)
                if not ops & {"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulNBits"}:
                    break  # arithmetic inside an activation (x + 0.044715·x³), not a block
                kind = "attention" if ops & ATTENTION else (
                    "mlp" if ops & {"MatMul", "Gemm", "MatMulNBits"} else "block")
                blocks.append(ResidualBlock(node.name or node.output[0], skip, out, kind,
                                            branch=branch))
                break
    return blocks


def score_blocks(model: onnx.ModelProto, blocks: list[ResidualBlock], feeds: dict,
                 runner: Runner, batch: int = BATCH) -> None:
    """1 − row cosine between the stream before and after each block, averaged over every row
    (token, pixel) of the samples in `feeds` (arrays with samples on axis 0). The model runs
    through `runner` with every block's input and output tapped, a batch at a time; only the
    running sums are kept."""
    names = list(dict.fromkeys(t for b in blocks for t in (b.skip, b.branch)))
    totals, rows = np.zeros(len(blocks)), np.zeros(len(blocks))
    for _, outs in runner.taps(model, names, feeds, batch):
        for k, b in enumerate(blocks):
            x = outs[b.skip].astype(np.float64)
            y = x + outs[b.branch]
            x = x.reshape(-1, x.shape[-1])
            y = y.reshape(-1, y.shape[-1])
            den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            cos = np.where(den > 0, (x * y).sum(1) / np.maximum(den, 1e-30), 1.0)
            totals[k] += float(np.sum(1.0 - cos))
            rows[k] += len(cos)
    for k, b in enumerate(blocks):
        b.score = totals[k] / max(rows[k], 1)


def calibration_feeds(model: onnx.ModelProto, view: GraphView, n: int = 4,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for block scoring: token ids over the whole vocabulary of the embedding
    they index (not just 0/1), other inputs standard normal; symbolic sizes 1 × 16 (a KV cache
    empty, as in a prefill, so samples batch together); `n` such samples (batches of the
    model's static batch size) stacked on axis 0."""
    specs = input_specs(model)
    vocab: dict[str, int] = {}
    for node in view.graph.node:
        if node.op_type == "Gather" and node.input[1] in view.graph_inputs:
            d = view.static_dim(node.input[0], int(next(
                (a.i for a in node.attribute if a.name == "axis"), 0)))
            if d:
                vocab[node.input[1]] = d
    feeds_list = []
    rng = np.random.default_rng(seed)
    for k in range(n):
        feeds = random_feeds(specs, seed=seed + k, dynamic=16, past=0)
        for name, hi in vocab.items():
            if name in feeds:
                feeds[name] = rng.integers(0, hi, size=feeds[name].shape).astype(feeds[name].dtype)
        feeds_list.append(feeds)
    return {k: np.concatenate([f[k] for f in feeds_list], axis=0) for k in feeds_list[0]}


def drop_blocks(model: onnx.ModelProto, blocks: list[ResidualBlock], n: int) -> list[ResidualBlock]:
    """Replace the n lowest-scoring blocks' Adds by their stream input; remove dead nodes."""
    chosen = sorted(blocks, key=lambda b: (b.score, b.add))[:n]
    outputs = {o.name for o in model.graph.output}
    replace: dict[str, str] = {}
    for b in chosen:
        b.dropped = True
        if b.out:
            replace[b.out] = b.skip  # consecutive dropped blocks: resolved below
    by_name = {b.add: b for b in chosen}

    def resolve(x):
        while x in replace and x not in outputs:
            x = replace[x]
        return x

    new_nodes = []
    for node in model.graph.node:
        b = by_name.get(node.name or node.output[0])
        if b is not None and node.op_type in SKIP_NORMS:  # norm(x + f) becomes norm(x)
            new_nodes.append(_plain_norm(node, resolve(b.skip)))
            if b.out in outputs:
                new_nodes.append(helper.make_node("Identity", [resolve(b.skip)], [b.out],
                                                  name=f"{node.name}_residual"))
            continue
        if b is not None:
            if node.output[0] in outputs:  # keep the graph output's name
                new_nodes.append(helper.make_node("Identity", [resolve(b.skip)],
                                                  [node.output[0]], name=node.name))
            continue
        for i, x in enumerate(node.input):
            node.input[i] = resolve(x)
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    remove_dead_code(model)
    return chosen


def _plain_norm(node, x: str):
    """The norm a skip-norm computes, of `x` alone (gamma, beta and epsilon kept)."""
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    if node.op_type == "SkipSimplifiedLayerNormalization":
        return helper.make_node("SimplifiedLayerNormalization", [x, node.input[2]],
                                [node.output[0]], name=node.name, axis=-1, epsilon=eps,
                                stash_type=1)
    return helper.make_node("LayerNormalization", [x, node.input[2], node.input[3]],
                            [node.output[0]], name=node.name, axis=-1, epsilon=eps)


def remove_dead_code(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads."""
    g = model.graph
    live = {o.name for o in g.output}
    kept = []
    for node in reversed(list(g.node)):
        if any(o in live for o in node.output if o):
            kept.append(node)
            live.update(i for i in node.input if i)
            live.update(subgraph_outer_names(node))
    kept.reverse()
    del g.node[:]
    g.node.extend(kept)
    all_inits = {t.name for t in g.initializer}
    inits = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(inits)
    if model.ir_version < 4:  # initializers listed as inputs go with them; real inputs stay
        ins = [i for i in g.input if i.name not in all_inits or i.name in live]
        del g.input[:]
        g.input.extend(ins)
    vis = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(vis)
