"""Calibration from a folder of images.

Images (``.png .jpg .jpeg .bmp .gif .tif .tiff .webp``, sorted by name) are converted to RGB (or
grayscale when the model takes one channel), the shorter side resized to the model's input
size, center-cropped to H×W, scaled to [0, 1], normalized with the ImageNet mean (0.485, 0.456,
0.406) and std (0.229, 0.224, 0.225) when ``preprocess="imagenet"`` (single-channel models use
the mean of those numbers), and laid out NCHW.

Every file is decoded before any other work, with a bound on its pixels
(`MAX_IMAGE_PIXELS`, checked from the header before decoding, so a decompression bomb is
refused without being expanded) and on the samples' total size; a file that is not a readable
image is refused by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..ir.inputs import input_specs
from .checks import MAX_CALIB_BYTES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_IMAGE_PIXELS = 1 << 26  # 64 Mpx (Pillow warns at 89 Mpx and refuses at twice that)


def _image_input(model: onnx.ModelProto) -> tuple[str, int, int, int]:
    ins = input_specs(model)
    if len(ins) != 1 or len(ins[0].shape) != 4:
        raise UserError("--calib DIR (images) needs a model with one NCHW image input; "
                        f"this one has inputs {[(i.name, list(i.shape)) for i in ins]}")
    _, c, h, w = ins[0].shape
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise UserError(f"--calib DIR: the image input {ins[0].name} needs static C, H, W "
                        f"(got {list(ins[0].shape)})")
    return ins[0].name, c, h, w


def load_image_dir(folder: Path, model: onnx.ModelProto, preprocess: str = "imagenet",
                   limit: int | None = None) -> dict[str, np.ndarray]:
    """Images of a folder, preprocessed as the module docstring says, as one NCHW array."""
    if preprocess not in ("imagenet", "none"):
        raise UserError(f"--preprocess takes imagenet or none, got {preprocess!r}")
    name, c, h, w = _image_input(model)
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[:limit]
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    odd = next((f for f in files if not f.is_file()), None)
    if odd is not None:  # a folder, FIFO or device named like an image (a FIFO would block)
        raise UserError(f"{odd}: not a regular file")
    need = len(files) * c * h * w * 4
    if need > MAX_CALIB_BYTES:
        raise UserError(f"{folder}: {len(files)} images of {c}x{h}x{w} take {need:,} bytes; at "
                        f"most {MAX_CALIB_BYTES:,} are accepted (use at most "
                        f"{MAX_CALIB_BYTES // (c * h * w * 4)} images)")
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for k, f in enumerate(files):
        out[k] = preprocess_image(_decode(f, "L" if c == 1 else "RGB"), h, w, c, preprocess)
    return {name: out}


def _decode(path: Path, mode: str):
    """The image at `path` in `mode`, refused (one line, naming the file) unless it decodes
    and has at most MAX_IMAGE_PIXELS pixels."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise UserError(f"{path}: image of {w}x{h} pixels; at most "
                                    f"{MAX_IMAGE_PIXELS:,} pixels are decoded")
                return img.convert(mode)
    except UserError:
        raise
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: the image has too many pixels (a decompression bomb?); at "
                        f"most {MAX_IMAGE_PIXELS:,} pixels are decoded") from None
    except Exception as e:  # noqa: BLE001  (Pillow raises many kinds on a bad file)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path}: not a readable image ({why})") from None


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
