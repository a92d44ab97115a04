"""Text summaries of a prune's report, as the command line prints them: one table in the
manner of onnxslim's (model info, inputs and outputs, nodes per op type before and after,
params, MACs, size, fidelity, latency, elapsed time)."""
from __future__ import annotations

from pathlib import Path


def _pct(before, after) -> str:
    return f"{(1 - after / before) * 100:.1f}% fewer" if before else "n/a"


def _size(n) -> str:
    if n is None:
        return "-"
    for unit, k in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


def _shape(io: dict) -> str:
    dims = io.get("shape")
    return f"{io.get('dtype', '?')}: " + ("?" if dims is None else
                                          "(" + ", ".join(str(d) for d in dims) + ")")


def _table(rows: list, header: tuple) -> str:
    """Rows of 3 cells (a 2-cell row spans the last two columns); None is a rule."""
    cells = [r for r in [header] + rows if r is not None]
    w0 = max(len(str(r[0])) for r in cells)
    w1 = max(len(str(r[1])) for r in cells if len(r) == 3)
    w2 = max(len(str(r[2])) for r in cells if len(r) == 3)
    rule = f"+{'-' * (w0 + 2)}+{'-' * (w1 + 2)}+{'-' * (w2 + 2)}+"
    out = [rule]
    for r in [header, None] + rows + [None]:
        if r is None:
            out.append(rule)
        elif len(r) == 2:
            out.append(f"| {str(r[0]):<{w0}} | {str(r[1]):<{w1 + w2 + 3}} |")
        else:
            out.append(f"| {str(r[0]):<{w0}} | {str(r[1]):<{w1}} | {str(r[2]):<{w2}} |")
    return "\n".join(out)


def summary(r: dict, elapsed: float | None = None) -> str:
    """The summary printed after a prune."""
    s, m = r["summary"], r.get("model") or {}
    name = lambda p: Path(p).name if p else "(in memory)"  # noqa: E731
    rows: list = []
    info = [f"opset {m.get('opset')}", f"IR {m.get('ir_version')}"]
    if m.get("producer"):
        info.append(f"producer {m['producer']}")
    rows.append(("Model info", ", ".join(info)))
    rows.append(None)
    for io in m.get("inputs", []):
        rows.append((f"IN: {io['name']}", _shape(io), _shape(io)))
    for io in m.get("outputs", []):
        rows.append((f"OUT: {io['name']}", _shape(io), _shape(io)))
    ops = r.get("ops") or {}
    before, after = ops.get("before", {}), ops.get("after", {})
    if before or after:
        rows.append(None)
        for op in sorted(set(before) | set(after)):
            rows.append((op, before.get(op, 0), after.get(op, 0)))
    rows.append(None)
    rows.append(("Groups", f"{s['prunable_groups']} prunable, {s['frozen_groups']} frozen",
                 f"{s['pruned_groups']} pruned"))
    p, mac = r["params"], r["macs"]
    rows.append(("Params", f"{p['before']:,}", f"{p['after']:,} ({_pct(p['before'], p['after'])})"))
    rows.append(("MACs", f"{mac['before']:,}",
                 f"{mac['after']:,} ({_pct(mac['before'], mac['after'])})"))
    fb = r["file_bytes"]
    rows.append(("Model size", _size(fb["before"]), _size(fb["after"])))
    f = r.get("fidelity") or {}
    if f:
        text = f"cosine {f['value']:.4f} on {f.get('inputs', 'random')} inputs"
        if f.get("top1_agreement") is not None:
            text += f", top-1 {f['top1_agreement'] * 100:.1f}%"
        rows.append(("Fidelity", "", text))
    lat = r.get("latency_ms")
    if lat:
        rows.append(("Latency", f"{lat['before']:.3f} ms",
                     f"{lat['after']:.3f} ms ({lat['speedup']:.2f}x)"))
    if elapsed is not None:
        rows.append(("Elapsed", f"{elapsed:.2f} s"))
    lines = [f"wrote {r['output']}",
             _table(rows, ("Model", name(r.get("input")), name(r.get("output"))))]
    if s["unsupported_ops"]:
        ops_ = ", ".join(f"{k}×{v}" for k, v in s["unsupported_ops"].items())
        lines.append(f"frozen around ops without a rule: {ops_}")
    lines += io_lines(r)
    for fault in r.get("input_faults") or []:
        lines.append(f"note: the input already fails the ONNX checker: {fault[:160]}")
    return "\n".join(lines)


def io_lines(r: dict) -> list[str]:
    """The model's input/output signature changed (KV-cache heads, dropped cache pairs)."""
    changes = r.get("io_changes") or []
    if not changes:
        return []
    resized = [c for c in changes if "after" in c]
    removed = [c for c in changes if c["change"] == "removed"]
    renamed = [c for c in changes if "renamed_to" in c]
    out = ["the model's input/output signature changed:"]
    if resized:
        sizes = sorted({(c["axis"], c["before"], c["after"]) for c in resized})
        what = ", ".join(f"axis {a} {b} -> {n}" for a, b, n in sizes)
        out.append(f"  {len(resized)} KV-cache inputs/outputs resized ({what})")
    if removed:
        out.append(f"  {len(removed)} KV-cache inputs/outputs removed "
                   f"(dropped attention blocks): {', '.join(c['name'] for c in removed[:4])}"
                   + (" ..." if len(removed) > 4 else ""))
    if renamed:
        out.append(f"  {len(renamed)} renamed to keep layer numbers contiguous "
                   f"(e.g. {renamed[0]['name']} -> {renamed[0]['renamed_to']})")
    return out


def summary_lines(report: dict) -> list[str]:
    """Extra summary lines for what `evaluate_result` and the gates added."""
    lines = []
    f = report.get("fidelity") or {}
    if "drop" in f:
        lines.append(f"drop {f['drop']:.4f} (1 - {f['drop_metric']}) on "
                     f"{f.get('samples', '?')} samples")
    lat = report.get("latency_ms")
    if lat and lat.get("macs_ratio"):
        lines.append(f"speedup {lat['speedup']:.2f}x, MACs ratio {lat['macs_ratio']:.2f}x "
                     f"(median latency, {lat.get('provider', 'CPUExecutionProvider')})")
    for g in report.get("gates") or []:
        lines.append(f"gate {g['gate']} {g['measured']:.4g} vs {g['limit']:.4g}: "
                     f"{'passed' if g['passed'] else 'FAILED'}")
    return lines
