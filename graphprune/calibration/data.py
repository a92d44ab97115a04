"""Calibration samples: where they come from and how they are checked.

`load_calibration` takes a dict of arrays, a ``.npz`` file (arrays keyed by graph input name,
samples along axis 0, the same format `--calib` uses for fidelity), a folder of images (see
`graphprune.calibration.images`) or an integer N (N seeded standard-normal samples: a shape
check only, no real distribution). Language models calibrate on text
(`graphprune.calibration.text`). Samples are checked against the model's graph inputs before
any heavy work (`graphprune.calibration.checks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..ir.inputs import feed_batches, input_specs, random_feeds as spec_feeds, sample_inputs
from .checks import MAX_CALIB_BYTES, check_feeds, check_random_count, read_labels


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
        where = "--calib-text: " if source.source.startswith("text:") else "calibration: "
        cal = Calibration(check_feeds(model, source.feeds, where), source.labels, source.source)
    elif hasattr(source, "get_next") or _feed_iterable(source):
        cal = Calibration(check_feeds(model, concat_feeds(source), "calibration reader: "),
                          source="reader")
    elif isinstance(source, dict):
        cal = Calibration(check_feeds(model, source, "calibration arrays: "), source="arrays")
    elif isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        cal = Calibration(random_feeds(model, int(source), seed), source=f"random:{int(source)}")
    else:
        p = Path(source)
        if p.is_dir():
            from .images import load_image_dir

            cal = Calibration(load_image_dir(p, model, preprocess, limit), source=f"images:{p}")
        elif p.is_file():
            cal = Calibration(load_npz(p, model), source=f"npz:{p.name}")
        else:
            raise UserError(f"{p}: calibration source not found (a .npz file or a folder of "
                            "images)")
    if labels is not None:
        cal.labels = read_labels(labels, cal.n, model)
    if limit is not None and cal.n > limit:
        cal.feeds = {k: v[:limit] for k, v in cal.feeds.items()}
        if cal.labels is not None:
            cal.labels = cal.labels[:limit]
    if cal.n == 0:
        raise UserError("calibration data has no samples")
    return cal


def _feed_iterable(source) -> bool:
    return not isinstance(source, (str, bytes, Path, dict, np.ndarray, int, np.integer)) \
        and hasattr(source, "__iter__")


def concat_feeds(source) -> dict[str, np.ndarray]:
    """Feed dicts (an iterable, or an ONNX Runtime `CalibrationDataReader`: `get_next()` until
    it returns None) joined along axis 0."""
    if hasattr(source, "get_next"):
        def read():
            while (item := source.get_next()) is not None:
                yield item
        items = read()
    else:
        items = iter(source)
    parts: dict[str, list] = {}
    for k, feeds in enumerate(items):
        if not isinstance(feeds, dict):
            raise UserError(f"calibration item {k} is a {type(feeds).__name__}, not a dict of "
                            "arrays keyed by input name")
        if parts and set(feeds) != set(parts):
            raise UserError(f"calibration item {k} has inputs {sorted(feeds)}, the first had "
                            f"{sorted(parts)}")
        for name, v in feeds.items():
            parts.setdefault(name, []).append(np.asarray(v))
    if not parts:
        raise UserError("calibration data has no samples")
    try:
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    except ValueError as e:
        raise UserError(f"calibration items do not stack along axis 0: {e}") from e


def random_feeds(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n seeded random samples for every graph input (symbolic sizes other than batch: 16)."""
    n = check_random_count(model, n)
    specs = input_specs(model)
    static = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    if static and max(static) > 1 and n % max(static):
        n = (n // max(static) + 1) * max(static)
    b = max(static) if static else n
    parts = [spec_feeds(specs, seed=seed + k, batch=b, dynamic=16)
             for k in range(max(1, n // b))]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def load_npz(path: str | Path, model: onnx.ModelProto, ragged: bool = False
             ) -> dict[str, np.ndarray]:
    """Arrays keyed by graph input name, samples along axis 0, checked against the model's
    inputs (`graphprune.calibration.checks.check_feeds`) and cast to their dtypes. Array sizes
    are read from the file's headers first: nothing over MAX_CALIB_BYTES is decompressed.
    With `ragged`, arrays whose leading sizes disagree (a time-major input next to per-sample
    lengths) are returned as they are: one feed, not samples."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such calibration file")
    try:
        with np.load(p, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise UserError(f"{p}: a single array, not an .npz archive of named arrays")
            _check_sizes(p, z)
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except UserError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise UserError(f"{p}: not a readable .npz file ({_first_line(e)})") from e
    return check_feeds(model, arrays, f"{p}: ", ragged=ragged)


def _check_sizes(p: Path, z) -> None:
    total = 0
    fmt = np.lib.format
    for member in z.zip.namelist():
        with z.zip.open(member) as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
        total += int(np.prod(shape, dtype=object)) * dtype.itemsize
        if total > MAX_CALIB_BYTES:
            raise UserError(f"{p}: its arrays take more than {MAX_CALIB_BYTES:,} bytes; give "
                            "fewer samples")


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def is_ragged(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> bool:
    """Whether the arrays disagree on the number of samples along axis 0 (see `load_npz`)."""
    sampled = sample_inputs(input_specs(model)) & set(arrays)
    return len({len(arrays[k]) for k in sampled}) > 1


def npz_batches(path: str | Path, model: onnx.ModelProto, chunk: int = 64
                ) -> list[dict[str, np.ndarray]]:
    """The feeds of a ``.npz`` file: its samples cut into the model's batches, or the arrays
    as one feed when they are not samples along axis 0 (see `load_npz`)."""
    arrays = load_npz(path, model, ragged=True)
    if is_ragged(model, arrays):
        return [arrays]
    return feed_batches(input_specs(model), arrays, chunk=chunk)


REFERENCE_SAMPLES = 8


def reference_feeds(source, model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """One batch of given inputs for the reference and validation runs: the first samples of
    a ``.npz`` file or dict of arrays (at most `REFERENCE_SAMPLES`, or the model's static
    batch); None for other sources (images, a number of random samples, nothing)."""
    if isinstance(source, Calibration):
        source = source.feeds
    if isinstance(source, dict):
        arrays = check_feeds(model, source, "input arrays: ", ragged=True)
    elif isinstance(source, (str, Path)) and Path(source).is_file():
        return npz_batches(source, model, chunk=REFERENCE_SAMPLES)[0]
    else:
        return None
    if is_ragged(model, arrays):
        return arrays
    return feed_batches(input_specs(model), arrays, chunk=REFERENCE_SAMPLES)[0]
