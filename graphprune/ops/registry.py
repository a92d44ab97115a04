"""The op-rule registry: the single place where ONNX op semantics live.

A rule describes, for one op type, (a) which input axes are coupled to which output axes (and with
what index map), (b) which axes must never be pruned, (c) how to rewrite the node's attributes and
constant inputs after its tensors shrank, and (d) how many multiply-accumulates it costs.

Adding support for an op means adding one `OpRule` subclass decorated with `@rule("OpType")` and a
test that prunes through it. Ops without a rule are never guessed at: every axis of their inputs
and outputs is blocked, so every group touching them is frozen, with the reason recorded.

Rules state facts about their op and nothing else: which axes correspond, which axis a reshape
splits into heads, which normalization pruning would only approximate. What to do with those
facts (prune heads or not, allow hidden-size pruning or not) is the analysis' policy, decided
in `graphprune.analysis`, never by a rule. Rules import nothing above this
package except, for type checking, the context classes they are handed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..analysis.context import AnalyzeContext
    from ..analysis.cost import MacsContext
    from ..transforms.rewrite import RewriteContext

# Roles of a constant's axis in its group, which criteria read:
ROLE_OUT = "out"  # a parameter of the producing op (conv filter rows, bias, BN scale/shift)
ROLE_IN = "in"  # a contraction axis of a consumer (conv input channels, Gemm/MatMul K)
ROLE_AUX = "aux"  # sliced but not scored (BN running stats, per-channel constants of unknown role)

RULES: dict[tuple[str, str], "OpRule"] = {}


class OpRule:
    """Base class. Subclasses override `analyze`, and `rewrite` / `macs` where they matter.

    `couples`, `shrinks` and `frozen` say in a few words which axes correspond, what the
    rewrite changes when they shrink, and what the op blocks: the README's "Supported ops"
    table is generated from them (`supported_ops_table`; a rule without them is listed with
    the first sentence of its docstring)."""

    op_types: tuple[str, ...] = ()
    domain: str = ""
    couples: str = ""
    shrinks: str = ""
    frozen: str = ""

    def analyze(self, ctx: "AnalyzeContext") -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rewrite(self, ctx: "RewriteContext") -> None:
        """Fix attributes / constant inputs after pruning. Default: nothing to fix."""

    def macs(self, ctx: "MacsContext") -> int:
        """Multiply-accumulates of one run. Default: one per output element."""
        return ctx.numel_outputs()


def rule(*op_types: str, domain: str = ""):
    """Class decorator registering a rule for one or more op types of a domain."""

    def deco(cls):
        inst = cls()
        inst.op_types = op_types
        inst.domain = domain
        for op in op_types:
            key = (domain, op)
            if key in RULES:
                raise ValueError(f"duplicate rule for {domain or 'ai.onnx'}::{op}")
            RULES[key] = inst
        return cls

    return deco


def lookup(op_type: str, domain: str) -> "OpRule | None":
    dom = "" if domain in ("", "ai.onnx") else domain
    return RULES.get((dom, op_type))


def supported_ops() -> list[str]:
    return sorted(f"{d + '::' if d else ''}{op}" for d, op in RULES)


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").split())
    return text.split(". ")[0].rstrip(".") if text else "—"


def supported_ops_table() -> str:
    """The markdown table of every registered rule: its ops, what couples, what shrinks, what
    is frozen (one row per rule class, in the order of the modules that define them)."""
    rows, seen = [], {}
    for (domain, op), inst in RULES.items():
        cls = type(inst)
        if cls not in seen:
            seen[cls] = []
            rows.append(cls)
        seen[cls].append(f"{domain + '::' if domain else ''}{op}")
    lines = ["| ops | what couples | what shrinks | what is frozen |", "|---|---|---|---|"]
    for cls in rows:
        ops = ", ".join(f"`{o}`" for o in seen[cls])
        couples = cls.couples or _first_sentence(cls.__doc__)
        cells = [ops, couples, cls.shrinks or "—", cls.frozen or "—"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)

class ShapeOnly(OpRule):
    """Data movement costs no multiply-accumulates."""

    def macs(self, ctx):
        return 0


def axis_of(ctx, name, default=0):
    """The node's `axis` attribute, normalized for tensor `name`."""
    return int(ctx.attr("axis", default)) % ctx.rank(name)

