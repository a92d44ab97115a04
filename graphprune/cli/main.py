"""`graphprune` command line: prune (default), `analyze`.

Errors on bad input are one line on stderr and exit code 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from .. import __version__
from ..errors import UserError, ValidationError
from ..passes.score import CRITERIA

EXIT_OK, EXIT_GATE, EXIT_USAGE = 0, 1, 2


def _fail(msg: str, debug: bool, code: int = EXIT_USAGE) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"graphprune: error: {msg}", err=True)
    sys.exit(code)


def _default_output(model: Path) -> Path:
    name = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{name}.pruned.onnx")


def _progress(quiet: bool):
    """Phase messages on stderr, for people watching a terminal (never in logs or pipes)."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(phase: str) -> None:
        click.echo(f"[graphprune] {phase}...", err=True)

    return show


class DefaultGroup(click.Group):
    """`graphprune MODEL.onnx ...` runs the `prune` command; subcommands stay available."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune"] + list(args)
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphprune")
def main():
    """Structured pruning for ONNX models.

    \b
    graphprune MODEL.onnx --ratio 0.3 [-o OUT.onnx] [--report report.json]
    graphprune analyze MODEL.onnx [--json]
    """


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ratio", type=float, default=0.3, show_default=True,
              help="Fraction of prunable units (channels) to remove.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: MODEL.pruned.onnx beside the input).")
@click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default="magnitude",
              show_default=True, help="Importance criterion.")
@click.option("--dims", default="channels,heads,mlp,hidden", show_default=True,
              help="Kinds of groups to prune: channels (convolutions), heads (attention heads; "
                   "a GQA kv head goes with its query heads), mlp (transformer intermediate "
                   "width), hidden (the residual stream).")
@click.option("--drop-blocks", type=int, default=0, show_default=True,
              help="Remove the N residual sub-blocks (attention/MLP, identity-shortcut blocks) "
                   "that change the stream least (1 - cosine on random inputs).")
@click.option("--global", "global_rank", is_flag=True,
              help="Rank units across all groups (normalized) instead of a uniform ratio per group.")
@click.option("--round-to", type=int, default=1, show_default=True,
              help="Keep widths a multiple of N (hardware friendly).")
@click.option("--min-keep", type=int, default=1, show_default=True,
              help="Never keep fewer than N units in a group.")
@click.option("--protect", multiple=True, metavar="PATTERN",
              help="Freeze groups touching a node/tensor whose name matches (fnmatch); repeatable.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report here.")
@click.option("--external-data", is_flag=True, help="Store weights in a .data file beside the model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs/criteria.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def prune_cmd(model, ratio, output, criterion, dims, drop_blocks, global_rank, round_to, min_keep,
              protect,
              report, external_data, seed, quiet, as_json, debug):
    """Prune MODEL and write a smaller, valid ONNX model."""
    from ..pipeline import prune

    out = output or _default_output(model)
    try:
        if out.resolve() == model.resolve():
            raise UserError("output path equals the input; choose another -o")
        if not out.parent.resolve().is_dir():
            raise UserError(f"{out.parent}: output folder does not exist")
        res = prune(str(model), ratio=ratio, criterion=criterion, global_rank=global_rank,
                    round_to=round_to, min_keep=min_keep, protect=list(protect), seed=seed,
                    dims=dims, drop_blocks=drop_blocks, progress=_progress(quiet or as_json))
        res.save(out, external_data=external_data)
        if report:
            report.write_text(json.dumps(res.report, indent=2) + "\n")
    except UserError as e:
        _fail(str(e), debug)
    except ValidationError as e:
        _fail(f"the pruned model failed validation, nothing written: {e}", debug)
    r = res.report
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    if not quiet:
        click.echo(_summary(r))


def _pct(before, after) -> str:
    return f"{(1 - after / before) * 100:5.1f}% fewer" if before else "n/a"


def _summary(r: dict) -> str:
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


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Also list frozen groups with no weights.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def analyze_cmd(model, as_json, show_all, debug):
    """List coupled groups, their prunable units, and frozen groups with the reason."""
    from ..pipeline import analyze_model

    try:
        _, dg = analyze_model(str(model))
    except UserError as e:
        _fail(str(e), debug)
    rows = []
    for g in dg.groups:
        if g.frozen_reason == "no weights to shrink" and not show_all:
            continue
        rows.append({"id": g.id, "name": g.label(), "kind": g.kind, "units": g.n_units,
                     "members": len(g.members), "prunable": g.prunable,
                     "frozen_reason": g.frozen_reason})
    if as_json:
        click.echo(json.dumps({"groups": rows, "unsupported_ops": dg.unsupported_ops}, indent=2))
        return
    w = max([len(r["name"]) for r in rows] + [5])
    click.echo(f"{'id':>4}  {'group':<{w}}  {'units':>6}  {'members':>7}  status")
    for r in rows:
        status = "prunable" if r["prunable"] else f"frozen: {r['frozen_reason']}"
        click.echo(f"{r['id']:>4}  {r['name']:<{w}}  {r['units']:>6}  {r['members']:>7}  {status}")
    n_p = sum(r["prunable"] for r in rows)
    click.echo(f"{n_p} prunable groups, {len(rows) - n_p} frozen")
    if dg.unsupported_ops:
        click.echo("ops without a rule: " + ", ".join(f"{k}×{v}" for k, v in dg.unsupported_ops.items()))


if __name__ == "__main__":  # pragma: no cover
    main()
