"""Calibration from a folder of images.

Images (``.png .jpg .jpeg .bmp .gif .tif .tiff .webp``, sorted by name) are converted to RGB (or
grayscale when the model takes one channel), the shorter side resized to the model's input
size, center-cropped to H×W, scaled to [0, 1], normalized with the ImageNet mean (0.485, 0.456,
0.406) and std (0.229, 0.224, 0.225) when ``preprocess="imagenet"`` (single-channel models use
the mean of those numbers), and laid out NCHW.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..ir.inputs import input_specs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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
    from PIL import Image

    if preprocess not in ("imagenet", "none"):
        raise UserError(f"--preprocess takes imagenet or none, got {preprocess!r}")
    name, c, h, w = _image_input(model)
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[:limit]
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for k, f in enumerate(files):
        img = Image.open(f).convert("L" if c == 1 else "RGB")
        out[k] = preprocess_image(img, h, w, c, preprocess)
    return {name: out}


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
