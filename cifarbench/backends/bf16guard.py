"""May `auto` consider the bf16 ``openvino`` row? Only on CPUs with native bf16, and only when it keeps accuracy.

OpenVINO runs a float32 graph in bf16 on CPUs with AVX512_BF16 or AMX (the ``openvino`` backend; ``openvino-f32``
pins f32). There it can be the fastest flagship row (issue 24: 3,512 img/s vs openvino-int8's 2,676 on an AMX Xeon),
but bf16 rounds every activation, so it is a candidate only under an accuracy guard measured here, once per cache
key: the bf16 and a float32 reference (``openvino-f32``, else ``onnx``) classify the same held-out images (a fixed
sample of the bundled CIFAR-10 test split, which no shipped model trained on); each image on which their top-1
differs can change accuracy by at most one image, so ``disagreements / images`` bounds the accuracy change whatever
the labels. The rule is on integer counts, never floats: ``disagreements * 1000 <= MAX_LOSS_PERMILLE * images``.
convert's parity check cannot serve: it compares onnxruntime float32 with Keras, never OpenVINO's bf16.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

BF16_BACKEND = "openvino"
REFERENCES = ("openvino-f32", "onnx")  # float32 references, in order of preference
MAX_LOSS_PERMILLE = 3  # 0.3 pp
IMAGES = 1000
SEED = 0
BATCH = 250


def native_bf16(flags: Mapping[str, bool]) -> bool:
    """CPU flags with native bf16 arithmetic: AVX512_BF16 (Zen 4, Cooper Lake) or AMX-BF16 (Sapphire Rapids+)."""
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def within(disagreements: int, images: int, permille: int = MAX_LOSS_PERMILLE) -> bool:
    """The guard's rule on counts: at most ``permille`` per mille of the images may change their top-1."""
    return images > 0 and disagreements * 1000 <= permille * images


def held_out_images(size: tuple[int, int], n: int = IMAGES, seed: int = SEED) -> np.ndarray:
    """A fixed random sample of the bundled test split, at the model's input size (uint8 NHWC)."""
    from cifarbench.data.sources import load_dataset

    images = load_dataset("bundled", "test").images
    idx = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    x = np.ascontiguousarray(images[idx])
    if tuple(x.shape[1:3]) != tuple(size):
        from PIL import Image

        x = np.stack([np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BILINEAR)) for im in x])
    return x


def check(load: Callable[[str], Any], available: list[str], images: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of the bf16 backend with the first available float32 reference on ``images``.

    ``load(name)`` gives a backend; ``available`` the backends that can run here. The answer says why either way.
    """
    ref = next((r for r in REFERENCES if r in available), None)
    if ref is None:
        return {"ok": False, "why": "no float32 reference (openvino-f32 or onnx) to check bf16 against"}
    top: dict[str, np.ndarray] = {}
    for name in (BF16_BACKEND, ref):
        be = load(name)
        top[name] = np.concatenate([np.asarray(be.predict(images[i:i + BATCH])).argmax(1)
                                    for i in range(0, len(images), BATCH)])
    n = int(len(images))
    k = int((top[BF16_BACKEND] != top[ref]).sum())
    ok = within(k, n)
    verdict = "keeps" if ok else "does not keep"
    return {"ok": ok, "reference": ref, "disagreements": k, "images": n, "max_loss_permille": MAX_LOSS_PERMILLE,
            "why": f"bf16 {BF16_BACKEND} {verdict} accuracy within {MAX_LOSS_PERMILLE / 10:g} pp: top-1 differs "
                   f"from {ref} on {k} of {n} held-out images"}
