"""Pruning plans: the units every group keeps, saved, reviewed, edited and applied again.

A plan file (JSON) lists every group with weights: its name, kind, number of units, the weight
tensors that shrink with it and the units it keeps (`null`: all of them), plus the residual
blocks dropped and a fingerprint of the model. Applying a plan skips scoring and selection:

- to the same model (same fingerprint), groups are found by name;
- to another export of the same network (other tensor names, other node order), groups are
  matched by structure: kind, number of units and the shapes of the weight tensors that shrink
  with them, in order of appearance. A plan whose groups do not all find their counterpart is
  refused, with the first group that does not match.

Units are numbered in a canonical order (first appearance along the group's weights, sorted by
role and shape), which for a plain channel group is the channel index.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from ..analysis.graph import DependencyGraph, Group
from ..errors import UserError
from ..transforms.select import Plan
from ..version import __version__

FORMAT = 1


def fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the graph (nodes, weights or their external locations, inputs, outputs)."""
    return "sha256:" + hashlib.sha256(model.graph.SerializeToString(deterministic=True)
                                      ).hexdigest()


def _weights(dg: DependencyGraph, g: Group) -> list[tuple[str, int, str, tuple]]:
    """(tensor, axis, role, shape) of the group's matrix and kernel members, canonical order."""
    order = {}
    for k, node in enumerate(dg.view.graph.node):
        for x in node.input:
            order.setdefault(x, k)
    out = []
    for m in g.members:
        c = dg.view.consts.get(m.tensor)
        if c is None or len(c.shape) < 2 or "__use" in m.tensor:
            continue
        out.append((m.tensor, m.axis, m.role, tuple(int(d) for d in c.shape)))
    out.sort(key=lambda w: (w[2], w[1], w[3], order.get(w[0], 1 << 30), w[0]))
    return out


def signature(dg: DependencyGraph, g: Group) -> str:
    w = [[role, axis, list(shape)] for _, axis, role, shape in _weights(dg, g)]
    return json.dumps([g.kind, g.n_units, w], separators=(",", ":"))


def canonical_units(dg: DependencyGraph, g: Group) -> np.ndarray:
    """Unit ids in canonical order: first appearance along the group's weights."""
    seen: list[int] = []
    mark = np.zeros(g.n_units, dtype=bool)
    dims = [(t, a) for t, a, _, _ in _weights(dg, g)] + sorted(g.unit_of)
    for dn in dims:
        for u in g.unit_of.get(dn, ()):
            if not mark[u]:
                mark[u] = True
                seen.append(int(u))
    seen += [u for u in range(g.n_units) if not mark[u]]
    return np.asarray(seen, dtype=np.int64)


def _listed(dg: DependencyGraph) -> list[Group]:
    return [g for g in dg.groups if g.members and g.n_units > 1
            and g.frozen_reason != "no weights to shrink"]


def _position(dg: DependencyGraph, g: Group) -> int:
    order = {}
    for k, node in enumerate(dg.view.graph.node):
        for x in node.input:
            order.setdefault(x, k)
    return min((order.get(t, 1 << 30) for t, _, _, _ in _weights(dg, g)), default=1 << 30)


def document(dg: DependencyGraph, plan: Plan, model_fingerprint: str, options: dict,
             blocks: list | None = None, source: str | None = None) -> dict:
    """The plan of a run as a JSON-ready dict (the --save-plan file)."""
    groups = []
    for g in sorted(_listed(dg), key=lambda g: (_position(dg, g), g.id)):
        canon = canonical_units(dg, g)
        keep = None
        if g.id in plan.keep:
            rank = np.empty(g.n_units, dtype=np.int64)
            rank[canon] = np.arange(g.n_units)
            keep = sorted(int(rank[u]) for u in plan.keep[g.id])
        groups.append({"name": g.label(), "kind": g.kind, "units": g.n_units, "keep": keep,
                       "frozen_reason": g.frozen_reason,
                       "weights": [f"{t}[{a}]" for t, a, _, _ in _weights(dg, g)],
                       "signature": signature(dg, g)})
    return {"graphprune_plan": FORMAT, "graphprune_version": __version__,
            "model": {"input": source, "fingerprint": model_fingerprint},
            "options": options,
            "blocks": [b.add for b in (blocks or []) if b.dropped],
            "groups": groups}


def load(source) -> dict:
    """A plan document from a path, a dict or a `PrunePlan`; its form is checked."""
    if hasattr(source, "to_dict"):
        doc = source.to_dict()
    elif isinstance(source, dict):
        doc = source
    else:
        p = Path(source)
        try:
            doc = json.loads(p.read_text())
        except OSError as e:
            raise UserError(f"{p}: cannot read the plan ({e.strerror or e})") from e
        except ValueError as e:
            raise UserError(f"{p}: not a JSON plan ({e})") from e
    if not isinstance(doc, dict) or doc.get("graphprune_plan") != FORMAT \
            or not isinstance(doc.get("groups"), list):
        raise UserError("not a graphprune plan (expected {\"graphprune_plan\": 1, \"groups\": "
                        "[...]}, as --save-plan writes)")
    for e in doc["groups"]:
        if not isinstance(e, dict) or not {"name", "units", "keep", "signature"} <= set(e):
            raise UserError("plan: every group needs name, units, keep and signature")
    return doc


def _check_keep(entry: dict) -> list[int] | None:
    keep, n = entry["keep"], entry["units"]
    if keep is None:
        return None
    if not isinstance(keep, list) or not all(isinstance(k, int) and not isinstance(k, bool)
                                             for k in keep):
        raise UserError(f"plan group {entry['name']}: keep must be a list of unit indices "
                        "or null")
    if not keep or len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= n:
        raise UserError(f"plan group {entry['name']}: keep must list 1 to {n} distinct units "
                        f"in [0, {n})")
    return sorted(keep)


def match_groups(doc: dict, dg: DependencyGraph, model_fingerprint: str) -> list:
    """(plan entry, model group) pairs; refused with the first group without a counterpart."""
    listed = _listed(dg)
    if doc.get("model", {}).get("fingerprint") == model_fingerprint:
        by_name = {g.label(): g for g in listed}
        pairs = []
        for e in doc["groups"]:
            g = by_name.get(e["name"])
            if g is None or signature(dg, g) != e["signature"]:
                raise UserError(f"plan group {e['name']} is not a group of this model")
            pairs.append((e, g))
        return pairs
    buckets: dict[str, list[Group]] = defaultdict(list)
    for g in sorted(listed, key=lambda g: (_position(dg, g), g.id)):
        buckets[signature(dg, g)].append(g)
    wanted: dict[str, list[dict]] = defaultdict(list)
    for e in doc["groups"]:
        wanted[e["signature"]].append(e)
    for sig, entries in wanted.items():
        if len(buckets.get(sig, [])) != len(entries):
            e = entries[0]
            raise UserError(
                f"the plan does not fit this model: plan group {e['name']} ({e.get('kind')}, "
                f"{e['units']} units, weights {', '.join(e.get('weights', [])[:3])}) has "
                f"{len(entries)} group(s) of its structure in the plan but "
                f"{len(buckets.get(sig, []))} in the model")
    extra = [g for sig, gs in buckets.items() if sig not in wanted for g in gs]
    if extra:
        raise UserError(f"the plan does not fit this model: model group {extra[0].label()} "
                        f"({extra[0].n_units} units) has no counterpart in the plan")
    return [(e, g) for sig, entries in wanted.items() for e, g in zip(entries, buckets[sig])]


def plan_from(doc: dict, dg: DependencyGraph, model_fingerprint: str) -> Plan:
    """The `Plan` (kept unit ids per group of `dg`) a plan document asks for."""
    plan = Plan()
    for e, g in match_groups(doc, dg, model_fingerprint):
        keep = _check_keep(e)
        if keep is None or len(keep) == g.n_units:
            continue
        if g.frozen_reason is not None:
            raise UserError(f"plan group {e['name']} shrinks, but here that group is frozen "
                            f"({g.frozen_reason})")
        plan.keep[g.id] = np.sort(canonical_units(dg, g)[keep])
    for gid, keep in plan.keep.items():
        g = dg.groups[gid]
        for dn, units in g.unit_of.items():
            if len(units) and not np.isin(units, keep).any():
                raise UserError(f"plan group {g.label()}: the kept units leave {dn[0]} with "
                                f"nothing along axis {dn[1]}; keep one of its units")
    return plan


class PlanGroup:
    """One group of a `PrunePlan`: `name`, `kind`, `units`, `weights`, `frozen_reason`,
    `scores` (the criterion's, when the plan was made in this process) and the editable
    `keep` (sorted unit indices, or None for all)."""

    def __init__(self, entry: dict, scores=None):
        self._e = entry
        self.scores = scores

    name = property(lambda self: self._e["name"])
    kind = property(lambda self: self._e.get("kind"))
    units = property(lambda self: self._e["units"])
    weights = property(lambda self: list(self._e.get("weights", [])))
    frozen_reason = property(lambda self: self._e.get("frozen_reason"))

    @property
    def keep(self) -> list[int] | None:
        return None if self._e["keep"] is None else list(self._e["keep"])

    @keep.setter
    def keep(self, value) -> None:
        old = self._e["keep"]
        self._e["keep"] = None if value is None else sorted(int(v) for v in value)
        try:
            _check_keep(self._e)
        except UserError:
            self._e["keep"] = old
            raise

    def keep_top(self, n: int) -> None:
        """Keep the `n` units with the highest scores (needs the criterion's scores)."""
        if self.scores is None:
            raise UserError(f"plan group {self.name}: no scores (the plan was loaded from a "
                            "file); set keep directly")
        order = np.lexsort((np.arange(len(self.scores)), -np.asarray(self.scores)))
        self.keep = order[:n].tolist()

    def __repr__(self) -> str:
        kept = self.units if self.keep is None else len(self.keep)
        return f"PlanGroup({self.name!r}, {self.kind}, {kept}/{self.units} kept)"


class PrunePlan:
    """An editable plan (`graphprune.plan(...)` makes one, `graphprune.apply(model, plan)`
    applies it): `groups` in order of appearance, `plan["name"]` by group name, `save(path)`,
    `PrunePlan.load(path)`."""

    def __init__(self, doc: dict, scores: dict | None = None):
        self.doc = doc
        scores = scores or {}
        self.groups = [PlanGroup(e, scores.get(e["name"])) for e in doc["groups"]]

    def __getitem__(self, name: str) -> PlanGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def blocks(self) -> list[str]:
        return list(self.doc.get("blocks", []))

    def to_dict(self) -> dict:
        return self.doc

    def dumps(self) -> str:
        return json.dumps(self.doc, indent=1) + "\n"

    def save(self, path) -> Path:
        from ..ir.files import atomic_write_text

        atomic_write_text(path, self.dumps())
        return Path(path)

    @classmethod
    def load(cls, path) -> "PrunePlan":
        return cls(load(path))

    def __repr__(self) -> str:
        n = sum(g.keep is not None for g in self.groups)
        return f"PrunePlan({len(self.groups)} groups, {n} shrink)"


def unit_scores(dg: DependencyGraph, scores: dict) -> dict[str, list[float]]:
    """The criterion's scores by group name, in canonical unit order (for `PlanGroup`)."""
    out = {}
    for g in _listed(dg):
        s = scores.get(g.id)
        if s is not None and len(s) == g.n_units:
            out[g.label()] = np.asarray(s, dtype=np.float64)[canonical_units(dg, g)].tolist()
    return out
