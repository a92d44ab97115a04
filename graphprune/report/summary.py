"""Text summaries of a prune's report, as the command line prints them."""
from __future__ import annotations


def _pct(before, after) -> str:
    return f"{(1 - after / before) * 100:5.1f}% fewer" if before else "n/a"


def summary(r: dict) -> str:
    """The summary printed after a prune."""
    s = r["summary"]
    lines = [
        f"wrote {r['output']}",
        f"  groups     {s['prunable_groups']} prunable, {s['pruned_groups']} pruned, "
        f"{s['frozen_groups']} frozen",
        f"  params     {r['params']['before']:,} -> {r['params']['after']:,}  "
        f"({_pct(r['params']['before'], r['params']['after'])})",
        f"  MACs       {r['macs']['before']:,} -> {r['macs']['after']:,}  "
        f"({_pct(r['macs']['before'], r['macs']['after'])})",
        f"  file       {r['file_bytes']['before']:,} B -> {r['file_bytes']['after']:,} B",
    ]
    if r.get("fidelity"):
        f = r["fidelity"]
        lines.append(f"  fidelity   cosine {f['value']:.4f} on random inputs "
                     f"(max abs diff {f['max_abs_diff']:.3g})")
    if s["unsupported_ops"]:
        ops = ", ".join(f"{k}×{v}" for k, v in s["unsupported_ops"].items())
        lines.append(f"  frozen around ops without a rule: {ops}")
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    """Extra summary lines for what `evaluate_result` and the gates added."""
    lines = []
    f = report.get("fidelity") or {}
    if f.get("top1_agreement") is not None:
        lines.append(f"  top-1      {f['top1_agreement'] * 100:.1f}% agreement on "
                     f"{f.get('samples', '?')} {f.get('inputs', '')} samples")
    if "drop" in f:
        lines.append(f"  drop       {f['drop']:.4f} (1 - {f['drop_metric']})")
    lat = report.get("latency_ms")
    if lat:
        line = (f"  latency    {lat['before']:.3f} ms -> {lat['after']:.3f} ms median  "
                f"(speedup {lat['speedup']:.2f}x")
        if lat.get("macs_ratio"):
            line += f", MACs ratio {lat['macs_ratio']:.2f}x"
        lines.append(line + ")")
    for g in report.get("gates") or []:
        lines.append(f"  gate       {g['gate']} {g['measured']:.4g} vs {g['limit']:.4g}: "
                     f"{'passed' if g['passed'] else 'FAILED'}")
    return lines
