"""Helpers of benchmarks/peers.py: anomalib's side (its PatchCore torch model in anomalib 2.7.0,
`anomalib.models.image.patchcore.torch_model.PatchcoreModel`, and its `KCenterGreedy`, with our backbone's
weights), the coreset rows both tools get, and the feature-parity check.

peers.py imports it, and runs it as a script for anomalib's fit and predict children, so that their peak RSS
holds anomalib, torch and timm only (exdd_core is imported only inside the parent's functions):

    python benchmarks/peers_anomalib.py fit|predict SPEC.json     # prints `RESULT {json}` as its last line

The Lightning module and the Engine are not used: the Engine wraps the same three calls (forward in
training mode per batch, `subsample_embedding`, forward in eval mode) in a trainer, callbacks, loggers and a
data module, and its default pre-processor would resize to 256 and crop to 224; here the images go in at
632x224 with our normalisation (the backbone's pretrained config: mean = std = 0.5 for the TF Lite models).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # KCenterGreedy's per-pick progress bar floods a log
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

CORESET_SIZE = (224, 224)  # 28 x 28 = 784 patches per image at stride 8, as benchmarks/coreset.py
NUM_NEIGHBORS = 9  # anomalib's default (Patchcore, PatchcoreModel): its image score reweights with 9 NN


def rss_gib() -> float:
    """Peak resident set size of this process so far, GiB: VmHWM, which starts afresh at exec. Not ru_maxrss:
    Linux carries the spawning parent's RSS into it across fork + exec (a bare `python -c` child of a 300 MB
    parent reports 313 MiB), and the parent here holds both tools' models."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):  # not Linux: the closest there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def coreset_rows(spec: dict[str, Any], n_rows: int) -> tuple[np.ndarray, int]:
    """The coreset input of both tools: the first n_rows patch rows of ceil(n_rows / 784) demo training
    normals at 224x224, as the feature stores hold them (Embedder.rows: float16 precision). Cached under
    _common.CACHE: extraction is not what is compared. In the parent only (it imports exdd_core)."""
    from _common import CACHE

    from exdd_core.runtime.atomic import atomic_path

    bb = spec["backbone"]
    n_img = math.ceil(n_rows / (CORESET_SIZE[0] // 8 * CORESET_SIZE[1] // 8))
    tag = f"{bb['name']}-{Path(str(bb['weights'])).name}-L{'_'.join(map(str, bb['layers']))}"
    path = CACHE / f"peers-{tag}-{n_img}x{CORESET_SIZE[0]}-s{spec['seed']}.npy"
    if not path.is_file():
        from exdd_core.data.sources.demo import render
        from exdd_core.features.embedder import Embedder

        emb = Embedder.from_params(bb, spec["features"], spec["seed"], "cpu")
        print(f"  extracting the rows of {n_img} demo images at 224x224 (cached: {path})", flush=True)
        x = np.concatenate(
            [emb.rows(render(spec["seed"], "train", 0, k, CORESET_SIZE)[0]) for k in range(n_img)]
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, x)
    return np.load(path)[:n_rows], n_img


def kcenter_greedy(x: np.ndarray, ratio: float, seed: int) -> tuple[np.ndarray, int, float]:
    """anomalib's coreset on rows x (float32): (picked indices, projected dim, seconds). Its random start and
    sparse projection draw from torch's and numpy's global generators, seeded here."""
    from anomalib.models.components.sampling import KCenterGreedy

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - sklearn's sample_without_replacement(random_state=None) reads it
    emb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t0 = time.perf_counter()
    sampler = KCenterGreedy(embedding=emb, sampling_ratio=ratio)
    idx = sampler.select_coreset_idxs()
    dt = time.perf_counter() - t0
    return np.asarray(idx, dtype=np.int64), int(sampler.features.shape[1]), dt


def make_model(spec: dict[str, Any]) -> torch.nn.Module:
    """PatchcoreModel on the spec's backbone and layers (timm feature indices), no download
    (pre_trained=False), then our backbone's state dict (saved by the parent) loaded into its timm feature
    extractor: every tensor of ours must fit. Ours may lack the blocks after the deepest requested stage (we
    drop them; timm's features_only EfficientNet keeps and runs them): those keep their initial values and
    change no output."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(
        layers=list(spec["layers"]),
        backbone=spec["backbone"]["name"],
        pre_trained=False,
        num_neighbors=NUM_NEIGHBORS,
    )
    state = torch.load(spec["backbone_state"], map_location="cpu", weights_only=True)
    fe = model.feature_extractor.feature_extractor
    missing, unexpected = fe.load_state_dict(state, strict=False)
    stages = getattr(fe, "_stage_out_idx", None)  # timm EfficientNetFeatures: blocks[i] feeds stage i + 1
    last = max(stages) if stages else float("inf")
    unused = [k for k in missing if k.startswith("blocks.") and int(k.split(".")[1]) >= last]
    if unexpected or len(unused) != len(missing):
        raise RuntimeError(f"our weights do not fit anomalib's extractor: {unexpected[:3]} {missing[:3]}")
    return model


def load_batch(paths: list[str], mean: list[float], std: list[float]) -> torch.Tensor:
    """anomalib's decoder (`read_image`: PIL, RGB, float [0, 1]) and torchvision's Normalize, as its
    PreProcessor does (no resize: the images already have the pipeline's size)."""
    from anomalib.data.utils import read_image
    from torchvision.transforms.v2.functional import normalize

    return torch.stack([normalize(read_image(p, as_tensor=True), mean, std) for p in paths])


def feature_parity(spec: dict[str, Any], image: np.ndarray) -> float:
    """max |ours - anomalib| / max |ours| over one image's patch features (float32): the same weights,
    normalisation, pooling and resize must give the same rows. In the parent only (it imports exdd_core)."""
    from torchvision.transforms.v2.functional import normalize

    from exdd_core.features.embedder import make_extractor
    from exdd_core.features.patches import to_rows

    ours = to_rows(make_extractor(spec["backbone"], spec["features"], spec["seed"], "cpu")(image))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255.0
    with torch.no_grad():
        theirs = make_model(spec).train()(normalize(x, *spec["stats"]))
    return float((ours - theirs).abs().max() / ours.abs().max())


def fit(spec: dict[str, Any]) -> dict[str, Any]:
    """Images -> memory bank: forward in training mode batch by batch (embeddings kept), then its coreset."""
    t0 = time.perf_counter()
    model = make_model(spec).train()  # training mode: forward returns and stores the embeddings
    t_built = time.perf_counter()
    paths, b = spec["fit_images"], spec["fit_batch"]
    mean, std = spec["stats"]
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])  # noqa: NPY002
    decode = 0.0
    with torch.no_grad():
        for a in range(0, len(paths), b):
            td = time.perf_counter()
            x = load_batch(paths[a : a + b], mean, std)
            decode += time.perf_counter() - td
            model(x)
        t_embedded = time.perf_counter()
        rows = int(sum(len(e) for e in model.embedding_store))
        model.subsample_embedding(spec["ratio"])
    t_done = time.perf_counter()
    torch.save(model.memory_bank.clone(), spec["out"])
    return {
        "build_s": t_built - t0,
        "embed_s": t_embedded - t_built,
        "decode_s": decode,
        "coreset_s": t_done - t_embedded,
        "fit_s": t_done - t_built,
        "source_rows": rows,
        "bank_rows": int(model.memory_bank.shape[0]),
    }


def predict(spec: dict[str, Any]) -> dict[str, Any]:
    """pred_score of every test image at batch 1 (timed per image) and the throughput at each batch size."""
    t0 = time.perf_counter()
    model = make_model(spec)
    model.memory_bank = torch.load(spec["bank"], map_location="cpu", weights_only=True)
    model.eval()
    t_built = time.perf_counter()
    mean, std = spec["stats"]
    paths = spec["test_images"]
    td = time.perf_counter()
    images = [load_batch([p], mean, std)[0] for p in paths]
    decode = (time.perf_counter() - td) / len(paths)
    out: dict[str, Any] = {"build_s": t_built - t0, "decode_s_per_image": decode, "batches": {}}
    with torch.inference_mode():
        for b in spec["batches"]:
            model(torch.stack(images[:b]))  # warm-up at this batch size
            passes, calls = [], []  # seconds of each pass over the images, of each call per image
            for _ in range(spec["repeats"]):
                scores: list[float] = []
                t1 = time.perf_counter()
                for a in range(0, len(images), b):
                    t2 = time.perf_counter()
                    res = model(torch.stack(images[a : a + b]))
                    scores += res.pred_score.reshape(-1).tolist()
                    _ = res.anomaly_map  # computed by forward: upsampled and blurred at image size
                    calls.append((time.perf_counter() - t2) / len(images[a : a + b]))
                passes.append(time.perf_counter() - t1)
            out["batches"][str(b)] = {  # as peers.speeds
                "s_per_image": float(np.median(calls)),
                "images_per_s": len(images) / min(passes),
            }
            out.setdefault("scores", scores)  # the first batch size's (1) scores
    return out


def main() -> None:
    t_start = time.perf_counter()
    role, spec_path = sys.argv[1], Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    import anomalib.models.image.patchcore.torch_model  # noqa: F401 - counted as import time

    import_s, import_rss = time.perf_counter() - t_start, rss_gib()
    result = fit(spec) if role == "fit" else predict(spec)
    result.update(import_s=import_s, import_rss_gib=import_rss, peak_rss_gib=rss_gib())
    result["anomalib"] = __import__("anomalib").__version__
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
