"""The eval transform at any size: non-square targets, crop_pct, interpolation, JPEG draft, EXIF turns.

Expectations come from Pillow used the slow, obvious way (resize the whole image, then crop or paste),
never from the loader's own box arithmetic.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cifarbench.data import images
from cifarbench.data.images import load_image
from cifarbench.data.sources import load_dataset
from cifarbench.data.transform import Transform, as_transform
from cifarbench.errors import UsageError

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}


def encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def loaded(data: bytes, t: Transform) -> np.ndarray:
    res = load_image(data, t)
    assert res.ok, res.error
    assert res.array is not None and res.array.shape == (*t.size, 3) and res.array.dtype == np.uint8
    return res.array


def close(a: np.ndarray, b: np.ndarray, tol: int = 2) -> None:
    assert a.shape == b.shape
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "lanczos"])
def test_center_crop_non_square_equals_resize_then_crop(interp: str) -> None:
    im = noise(100, 100)
    # target H=20, W=40: the shorter side relative to the target is the width -> 40x40, rows 10..30 kept
    ref = np.asarray(im.resize((40, 40), FILTERS[interp]).crop((0, 10, 40, 30)))
    close(loaded(encode(im), Transform((20, 40), "center-crop", None, interp)), ref)


def test_crop_pct_resizes_to_size_over_pct_then_crops_the_centre() -> None:
    im = noise(64, 64, 1)
    ref = np.asarray(im.resize((32, 32), Image.Resampling.BICUBIC).crop((8, 8, 24, 24)))  # 16 / 0.5 = 32
    close(loaded(encode(im), Transform((16, 16), "center-crop", 0.5, "bicubic")), ref)
    # timm's usual 0.875 at 224 on a 256x256 photo: resize to 256 (no change), centre 224
    im = noise(256, 256, 2)
    ref = np.asarray(im.crop((16, 16, 240, 240)))
    np.testing.assert_array_equal(loaded(encode(im), Transform((224, 224), "center-crop", 0.875, "bilinear")), ref)


def test_squash_non_square_and_pad_non_square() -> None:
    im = noise(90, 30, 3)
    ref = np.asarray(im.resize((48, 24), Image.Resampling.BILINEAR))  # squash ignores aspect: W=48, H=24
    close(loaded(encode(im), Transform((24, 48), "squash", None, "bilinear")), ref)
    # pad: 100x50 into 40x40 -> 40x20 in the middle rows, white above and below
    im = noise(100, 50, 4)
    out = loaded(encode(im), Transform((40, 40), "pad", None, "lanczos"))
    ref = np.asarray(im.resize((40, 20), Image.Resampling.LANCZOS))
    close(out[10:30], ref)
    assert (out[:10] == 255).all() and (out[30:] == 255).all()


def test_interpolation_is_the_one_asked_for() -> None:
    im = noise(97, 97, 5)
    outs = {k: loaded(encode(im), Transform((31, 31), "squash", None, k)) for k in FILTERS}
    for k, out in outs.items():
        close(out, np.asarray(im.resize((31, 31), FILTERS[k])), tol=1)
    assert not np.array_equal(outs["bilinear"], outs["lanczos"])


def test_jpeg_drafts_to_at_least_the_target_and_the_budget_prices_the_draft() -> None:
    blob = encode(noise(1600, 1200, 6), "JPEG", quality=90)
    t = Transform((300, 400))  # W=400, H=300: 1/4 (400x300) covers it, 1/8 would not
    im = Image.open(io.BytesIO(blob))
    im.draft(None, images.draft_target(im.size, t))
    assert im.size[0] >= 400 and im.size[1] >= 300 and im.size == (400, 300)
    from cifarbench.data.image_reduce import decode_cost

    assert decode_cost(im, t) == 400 * 300 * 4  # priced at the drafted size, not the full 1600x1200
    loaded(blob, t)
    # a target the 1/4 draft cannot cover decodes at 1/2
    im = Image.open(io.BytesIO(blob))
    im.draft(None, images.draft_target(im.size, Transform((301, 401))))
    assert im.size == (800, 600)


def test_exif_rotated_photo_fits_a_non_square_target_after_turning() -> None:
    base = noise(60, 40, 7)  # stored landscape; orientation 6 shows it portrait (40 wide, 60 tall)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encode(base, "PNG", exif=exif.tobytes())
    upright = encode(base.transpose(Image.Transpose.ROTATE_270), "PNG")
    t = Transform((30, 20), "center-crop", None, "bilinear")
    close(loaded(tagged, t), loaded(upright, t), tol=1)  # Pillow filters rows and columns in either order


@pytest.mark.parametrize("pct,good", [(1.0, True), (1.0001, False), (0.0, False), (1e-6, True), (float("nan"), False)])
def test_crop_pct_limits(pct: float, good: bool) -> None:
    if good:
        assert Transform((8, 8), crop_pct=pct).crop_pct == pct
    else:
        with pytest.raises(UsageError, match="crop-pct"):
            Transform((8, 8), crop_pct=pct)


@pytest.mark.parametrize("bad", [0, (0, 4), (4, -1), (1, 2, 3), "x", 1.5])
def test_bad_sizes_are_usage_errors(bad: object) -> None:
    with pytest.raises(UsageError):
        load_image(b"x", bad)  # type: ignore[arg-type]


def test_bad_interpolation_and_policy_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="interpolation"):
        load_image(b"x", 8, interpolation="nearest")
    with pytest.raises(UsageError, match="resize"):
        load_image(b"x", (8, 9), "stretch")


def test_arguments_override_a_transforms_fields() -> None:
    t = Transform((10, 20), "pad", 0.9, "bicubic")
    assert as_transform(t) is t
    assert as_transform(t, "squash") == Transform((10, 20), "squash", 0.9, "bicubic")
    assert as_transform(t, interpolation="bilinear").interpolation == "bilinear"
    assert as_transform((5, 7)) == Transform((5, 7), "center-crop", None, "lanczos")


def test_default_square_transform_is_the_first_releases_pixels() -> None:
    """32x32 centre crop with Lanczos, as before this transform existed."""
    im = noise(300, 200, 8)
    ref = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS, box=(50, 0, 250, 200), reducing_gap=3.0))
    np.testing.assert_array_equal(loaded(encode(im), Transform()), ref)


def test_raw_cifar_arrays_are_resampled_like_files(tmp_path) -> None:
    """load_dataset at 64x64: a cifar-10-batches-py source's 32x32 arrays go through the same resize."""
    import pickle

    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2]}))
    t = Transform((64, 48), "squash", None, "bicubic")
    ds = load_dataset(str(d), "test", transform=t, use_cache=False)
    assert ds.images.shape == (3, 64, 48, 3)
    first = data[0].reshape(3, 32, 32).transpose(1, 2, 0)
    close(ds.images[0], np.asarray(Image.fromarray(first).resize((48, 64), Image.Resampling.BICUBIC)), tol=1)
    assert load_dataset(str(d), "test", use_cache=False).images.shape == (3, 32, 32, 3)


def test_images_at_decodes_only_the_chosen_images_at_the_models_size(tmp_path) -> None:
    """A tree loaded at 32x32, then three of its images at 48x40: the same pixels a full native load gives."""
    from cifarbench.data.sources import images_at, train_val_split

    for k, name in enumerate(("a", "b")):
        d = tmp_path / "tree" / "test" / name
        d.mkdir(parents=True)
        for i in range(4):
            noise(70 + 10 * i, 60, seed=10 * k + i).save(d / f"{i}.png")
    t = Transform((48, 40), "center-crop", 0.9, "bicubic")
    small = load_dataset(str(tmp_path / "tree"), "test", classes=("a", "b"), use_cache=False)
    full = load_dataset(str(tmp_path / "tree"), "test", classes=("a", "b"), transform=t, use_cache=False)
    assert small.images.shape == (8, 32, 32, 3) and full.images.shape == (8, 48, 40, 3)
    np.testing.assert_array_equal(images_at(small, [6, 1, 3], t), full.images[[6, 1, 3]])
    _, val = train_val_split(small, 4, seed=0)  # a split keeps the member names, so its images re-decode too
    idx = [0, 3]
    want = full.images[[small.paths.index(val.paths[i]) for i in idx]]
    np.testing.assert_array_equal(images_at(val, idx, t), want)
    np.testing.assert_array_equal(images_at(small, [2], Transform()), small.images[[2]])
    assert images_at(small, [], t).shape == (0, 48, 40, 3)


@pytest.mark.parametrize("src,size,pct", [((44, 44), (20, 20), 0.9), ((28, 28), (10, 10), 0.7),
                                          ((60, 30), (10, 20), 0.7)])
def test_crop_pct_uses_timms_floored_scale_size(src: tuple[int, int], size: tuple[int, int], pct: float) -> None:
    """timm: scale_size = floor(size / crop_pct) (20 / 0.9 -> 22, not 22.2), resize the shorter side to it, centre crop.

    The reference is that recipe done the slow way with Pillow: whole-image resize to the floored size, then
    torchvision's CenterCrop offsets (round((resized - size) / 2)).
    """
    (w, h), (th, tw) = src, size
    im = noise(w, h, 11)
    sh, sw = int(th / pct), int(tw / pct)  # truncation of a positive float: the floor, computed apart
    s = max(sw / w, sh / h)
    rw, rh = round(w * s), round(h * s)
    left, top = int(round((rw - tw) / 2)), int(round((rh - th) / 2))
    ref = np.asarray(im.resize((rw, rh), Image.Resampling.BICUBIC).crop((left, top, left + tw, top + th)))
    close(loaded(encode(im), Transform(size, "center-crop", pct, "bicubic")), ref, tol=1)
