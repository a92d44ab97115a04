"""Recipes: every option of a command in one reviewed JSON file (`--config recipe.json`).

Keys are the long option names with underscores or dashes (`target_params`, `ratio-for`) plus
`model` and `output` (and `models` for `batch`); values are what the flag takes, with two
conveniences: `ratio_for` may be an object `{"layer4.*": 0.5}` and `input_shapes` an object
`{"input": [1, 3, 224, 224]}`. A flag given on the command line overrides the file. The file
is checked against `recipe.schema.json` (shipped in this package; JSON Schema draft 2020-12,
checked here by a small validator for the keywords it uses) and against the options of the
command it is given to.
"""
from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path

import click

SCHEMA_FILE = "recipe.schema.json"


def schema() -> dict:
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text())


# ----------------------------------------------------------------------------- validation
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
    return isinstance(value, _TYPES[t])


def validate(value, sch: dict, where: str = "") -> list[str]:
    """Errors of `value` against `sch` (type, enum, minimum/maximum and their exclusive
    forms, minItems, items, properties, additionalProperties, patternProperties, pattern,
    minLength, anyOf)."""
    errs: list[str] = []
    at = where or "the recipe"
    if "anyOf" in sch:
        if all(validate(value, s, where) for s in sch["anyOf"]):
            errs.append(f"{at}: {json.dumps(value)[:60]} matches none of the allowed forms")
        return errs
    types = sch.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in types):
            return [f"{at}: expected {' or '.join(types)}, got {json.dumps(value)[:60]}"]
    if "enum" in sch and value not in sch["enum"]:
        errs.append(f"{at}: {json.dumps(value)} is not one of {sch['enum']}")
    if _is(value, "number"):
        for key, ok in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                        ("exclusiveMinimum", lambda v, b: v > b),
                        ("exclusiveMaximum", lambda v, b: v < b)):
            if key in sch and not ok(value, sch[key]):
                errs.append(f"{at}: {value} violates {key} {sch[key]}")
    if isinstance(value, str):
        if len(value) < sch.get("minLength", 0):
            errs.append(f"{at}: must not be empty")
        if "pattern" in sch and not re.search(sch["pattern"], value):
            errs.append(f"{at}: {value!r} does not match {sch['pattern']}")
    if isinstance(value, list):
        if len(value) < sch.get("minItems", 0):
            errs.append(f"{at}: needs at least {sch['minItems']} item(s)")
        for k, item in enumerate(value):
            if "items" in sch:
                errs += validate(item, sch["items"], f"{where}[{k}]")
    if isinstance(value, dict):
        props = sch.get("properties", {})
        for key, item in value.items():
            sub = f"{where}.{key}" if where else key
            if key in props:
                errs += validate(item, props[key], sub)
                continue
            pats = [s for p, s in sch.get("patternProperties", {}).items() if re.search(p, key)]
            for s in pats:
                errs += validate(item, s, sub)
            extra = sch.get("additionalProperties", True)
            if not pats and extra is False:
                near = [p for p in props if p.replace("_", "") == key.replace("_", "")]
                errs.append(f"unknown recipe key {key!r}" + (f" (did you mean {near[0]!r}?)"
                                                             if near else ""))
            elif not pats and isinstance(extra, dict):
                errs += validate(item, extra, sub)
    return errs


# ----------------------------------------------------------------------------- loading
def _flag_values(key: str, value):
    """A recipe value in the form click takes it for that option."""
    if key == "ratio_for" and isinstance(value, dict):
        return [f"{p}={r}" for p, r in value.items()]
    if key == "input_shapes" and isinstance(value, dict):
        return ",".join(f"{n}:{'x'.join(str(d) for d in dims)}" for n, dims in value.items())
    if key == "input_values" and isinstance(value, dict):
        return ",".join(f"{n}={v}" for n, v in value.items())
    if key == "ratios" and isinstance(value, list):
        return ",".join(str(r) for r in value)
    if key == "dims" and isinstance(value, list):
        return ",".join(value)
    return value


def load(path: Path, command: click.Command) -> dict:
    """The click `default_map` a recipe file gives `command` (a UsageError when it is not a
    valid recipe for it)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise click.UsageError(f"--config {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise click.UsageError(f"--config {path}: not JSON ({e})") from e
    if isinstance(data, dict):
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
    errs = validate(data, schema())
    if errs:
        raise click.UsageError(f"--config {path}: {errs[0]}")
    names = {}
    for p in command.params:
        if getattr(p, "hidden", False) or p.name in ("config", "debug"):
            continue
        long = [o for o in getattr(p, "opts", []) if o.startswith("--")]
        key = (long[0][2:] if long else p.name).replace("-", "_")
        names[key] = p.name
    out = {}
    for key, value in data.items():
        k = key
        if k in ("$schema", "description"):
            continue
        if k not in names:
            raise click.UsageError(f"--config {path}: {key!r} is not an option of "
                                   f"`graphprune {command.name}`")
        out[names[k]] = _flag_values(k, value)
    return out


def config_option(command_name: str):
    """`--config FILE`: the recipe's values become the defaults of every other option."""

    def callback(ctx: click.Context, param, value):
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}), **load(value, ctx.command)}
        return value

    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        default=None, is_eager=True, expose_value=False, callback=callback,
                        help="A JSON recipe holding any option of this command (schema: "
                             f"graphprune/cli/{SCHEMA_FILE}); flags given here override it.")


def deprecated_global(ctx: click.Context, param, value):
    """`--global`, the former spelling of `--global-rank`: still works, says so once."""
    if value:
        click.echo("graphprune: warning: --global is deprecated, use --global-rank", err=True)
    return value


def merge_global(options: dict) -> dict:
    """Fold the deprecated `--global` into `global_rank`."""
    alias = options.pop("global_alias", False)
    options["global_rank"] = bool(options.get("global_rank") or alias)
    return options
