"""A pruned model as a complete, runnable folder: the configuration files beside a model
(ONNX Runtime GenAI's ``genai_config.json``, a Hugging Face ``config.json``) rewritten to the
pruned sizes, and everything else a runtime reads (tokenizer, chat template, generation
config) copied.

Sizes come from the pruned model itself: key/value heads from its KV-cache inputs, query
heads from GroupQueryAttention's ``num_heads`` (else scaled with the key/value heads: a unit is
a whole GQA group), layers from the number of cache layers left after ``--drop-blocks``, the
hidden and MLP widths from the kept positions of their groups. A config can state one width
per field; where pruning left layers of different widths (``--global``) the largest is written
and the report says so.

Every file goes through the output writer (`graphprune.ir.writer`): staged in the same
`OutputSet` as the model, its data file and the reports, committed together or not at all.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..ir import attr
from ..ir.cache import cache_tensors
from ..ir.writer import OutputSet

CONFIGS = ("genai_config.json", "config.json")
MODEL_SUFFIXES = (".onnx", ".onnx.data", ".onnx_data", ".data")


def model_in(folder: Path) -> Path:
    """The model file of a model folder: genai_config's decoder filename, else model.onnx,
    else its only .onnx file."""
    cfg = folder / "genai_config.json"
    if cfg.is_file():
        try:
            name = json.loads(cfg.read_text())["model"]["decoder"]["filename"]
            if (folder / name).is_file():
                return folder / name
        except (ValueError, KeyError, TypeError):
            pass
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        raise UserError(f"{folder}: a folder input needs one .onnx model (found {len(found)}) "
                        "or a genai_config.json naming it")
    return found[0]


# ----------------------------------------------------------------------------- sizes
def _widths(res, kind: str) -> list[int]:
    """Kept positions of every group of `kind` (a unit may hold several: a quantization
    block, a GQA group), along the group's first weight member."""
    out = []
    for g in res.graph.groups:
        if g.kind != kind or g.frozen_reason is not None or not g.members:
            continue
        units = g.unit_of[(g.members[0].tensor, g.members[0].axis)]
        kept = res.plan.keep.get(g.id)
        out.append(int(len(units) if kept is None else np.isin(units, kept).sum()))
    return out


def _one(values: list[int], field: str, notes: list[str]) -> int | None:
    if not values:
        return None
    if len(set(values)) > 1:
        notes.append(f"{field}: layers differ ({min(values)}..{max(values)}); wrote the largest")
    return max(values)


def pruned_sizes(res) -> tuple[dict, list[str]]:
    """Sizes of the pruned model a config can state, and notes on what it cannot."""
    model, notes = res.model, []
    sizes: dict = {}
    pasts = [c for c in cache_tensors(model) if c.io == "input"]
    if pasts:
        sizes["layers"] = len({c.layer for c in pasts})
        kv = [vi.type.tensor_type.shape.dim[1].dim_value for vi in model.graph.input
              if vi.name in {c.name for c in pasts}]
        sizes["kv_heads"] = _one([k for k in kv if k], "num_key_value_heads", notes)
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    if gqa:
        sizes["heads"] = _one([int(attr(n, "num_heads", 0)) for n in gqa],
                              "num_attention_heads", notes)
    hidden = _widths(res, "hidden")
    if hidden:
        sizes["hidden"] = _one(hidden, "hidden_size", notes)
    mlp = _widths(res, "mlp")
    if mlp and any(g["kind"] == "mlp" and g["size_after"] < g["size_before"]
                   for g in res.report["groups"]):
        sizes["mlp"] = _one(mlp, "intermediate_size", notes)
    return sizes, notes


def _set(d: dict, key: str, value, changes: dict, prefix: str) -> None:
    if value is None or key not in d or d[key] == value:
        return
    changes[prefix + key] = [d[key], value]
    d[key] = value


def updated_genai(cfg: dict, sizes: dict, filename: str) -> tuple[dict, dict]:
    cfg = json.loads(json.dumps(cfg))
    dec = cfg.get("model", {}).get("decoder", {})
    ch: dict = {}
    p = "model.decoder."
    old_kv = dec.get("num_key_value_heads")
    _set(dec, "num_key_value_heads", sizes.get("kv_heads"), ch, p)
    heads = sizes.get("heads")
    if heads is None and old_kv and sizes.get("kv_heads") and dec.get("num_attention_heads"):
        heads = dec["num_attention_heads"] * sizes["kv_heads"] // old_kv
    _set(dec, "num_attention_heads", heads, ch, p)
    _set(dec, "hidden_size", sizes.get("hidden"), ch, p)
    _set(dec, "num_hidden_layers", sizes.get("layers"), ch, p)
    _set(dec, "filename", filename, ch, p)
    return cfg, ch


def updated_hf(cfg: dict, sizes: dict) -> tuple[dict, dict]:
    cfg = json.loads(json.dumps(cfg))
    ch: dict = {}
    heads, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads", cfg.get(
        "num_attention_heads"))
    if sizes.get("hidden") is not None and "head_dim" not in cfg and heads and \
            "hidden_size" in cfg:
        cfg["head_dim"] = cfg["hidden_size"] // heads  # no longer hidden / heads
        ch["head_dim"] = [None, cfg["head_dim"]]
    if sizes.get("kv_heads") is not None and kv:
        _set(cfg, "num_key_value_heads", sizes["kv_heads"], ch, "")
        _set(cfg, "num_attention_heads", sizes.get("heads") or heads * sizes["kv_heads"] // kv,
             ch, "")
    _set(cfg, "hidden_size", sizes.get("hidden"), ch, "")
    _set(cfg, "intermediate_size", sizes.get("mlp"), ch, "")
    _set(cfg, "num_hidden_layers", sizes.get("layers"), ch, "")
    return cfg, ch


def side_files(res, source: Path, out: Path) -> dict:
    """The configuration files beside `source` rewritten for the pruned model written to
    `out` (file name -> (json text, changes)), and notes."""
    sizes, notes = pruned_sizes(res)
    files = {}
    for name in CONFIGS:
        p = source.parent / name
        if not p.is_file():
            continue
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            notes.append(f"{name}: not readable JSON ({e}); not written")
            continue
        new, ch = (updated_genai(cfg, sizes, out.name) if name == "genai_config.json"
                   else updated_hf(cfg, sizes))
        files[name] = (json.dumps(new, indent=4 if name == "genai_config.json" else 2) + "\n",
                       ch)
    return {"files": files, "notes": notes}


def stage_side_files(res, source: Path, out: Path, outputs: OutputSet,
                     folder: bool = False) -> None:
    """Stage the rewritten configs beside `out` in `outputs` (and for a model `folder`, copies
    of every other file of the source folder a runtime may read); the report's ``side_files``
    says what. A model file written into the input's own folder gets no configs (they would
    replace the input's)."""
    if not (folder or has_configs(source)):
        return
    if not folder and out.parent.resolve() == source.parent.resolve():
        res.report["side_files"] = {"notes": [
            "the configuration files beside the input were not rewritten (the output is in "
            "the input's folder); write a model folder with --out-dir DIR"]}
        return
    got = side_files(res, source, out)
    written = []
    for name, (text, changes) in got["files"].items():
        outputs.add_text(out.parent / name, text)
        written.append({"file": name, "action": "updated", "changes": changes})
    skipped = []
    if folder:
        model_files = {source.name} | {Path(f).name for f in (res.source_files or [])}
        for f in sorted(source.parent.iterdir()):
            if f.name in CONFIGS or f.name in model_files or f.name.startswith("."):
                continue
            if not f.is_file() or f.is_symlink() or f.name.endswith(MODEL_SUFFIXES):
                skipped.append(f.name)
                continue
            outputs.add_bytes(out.parent / f.name, f.read_bytes())
            written.append({"file": f.name, "action": "copied"})
    entry = {"folder": str(out.parent), "written": written}
    if skipped:
        entry["not_copied"] = skipped
    if got["notes"]:
        entry["notes"] = got["notes"]
    res.report["side_files"] = entry


def has_configs(source: Path) -> bool:
    return any((source.parent / n).is_file() for n in CONFIGS)


def model_file(path: Path) -> Path:
    """A model path as given on the command line: a model folder means its model file."""
    if path.is_dir():
        return model_in(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return path


def check_out_dir(model: Path, folder: Path) -> None:
    """A model folder to write: not the input's own folder, inside an existing folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    if folder.exists() and folder.resolve() == model.parent.resolve():
        raise UserError(f"{folder} is the input's folder; choose another output folder")
    if not folder.exists() and not folder.absolute().parent.is_dir():
        raise UserError(f"{folder.absolute().parent}: output folder does not exist")


def make_out_dir(outputs: OutputSet, folder: Path) -> None:
    """Create a missing model folder for `outputs` (removed again if the set aborts)."""
    if folder.exists():
        return
    try:
        folder.mkdir()
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror or e}") from e

    def remove() -> None:
        try:
            folder.rmdir()  # only if nothing landed in it
        except OSError:
            pass

    outputs.on_abort(remove)


def save_folder(res, out_dir: str | os.PathLike, external_data: bool = False) -> Path:
    """Write the pruned model into `out_dir` under the input's file name, with its configs
    rewritten and the other files of the input's folder copied (a runnable model folder),
    all committed together."""
    if res.source is None:
        raise UserError("a model folder is written for a model read from a file")
    source, folder = Path(res.source), Path(out_dir)
    check_out_dir(source, folder)
    out = folder / source.name
    with OutputSet(protect=res.protected(out)) as outputs:
        make_out_dir(outputs, folder)
        res.save(out, external_data=external_data, outputs=outputs)
        stage_side_files(res, source, out, outputs, folder=True)
    return out
