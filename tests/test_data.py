"""The data layer on small trees, archives and pickle batches built here, plus the bundled and shared data."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarbench import CIFAR10_CLASSES
from cifarbench.data import sources as data
from cifarbench.data.sources import load_dataset, train_val_split
from cifarbench.errors import DataError
from conftest import SHARED_ARCHIVE, class_pattern, make_tree


def archive(tree: Path, out: Path, prefix: str = "cifar", fmt: int = tarfile.DEFAULT_FORMAT) -> Path:
    """Pack ``tree`` as ``out`` (.tar, .tar.gz, .tar.xz or .zip) under a top-level folder."""
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w") as zf:
            for p in files:
                zf.write(p, f"{prefix}/{p.relative_to(tree).as_posix()}")
        return out
    mode = {".tar": "w", ".gz": "w:gz", ".xz": "w:xz"}[out.suffix]
    with tarfile.open(out, mode, format=fmt) as tf:
        for p in files:
            tf.add(p, f"{prefix}/{p.relative_to(tree).as_posix()}")
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), per_class=2, seed=5)


# ----------------------------------------------------------------------------- image trees


def test_split_class_tree(tree: Path) -> None:
    ds = load_dataset(tree, "test", use_cache=False)
    assert ds.images.shape == (20, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and np.bincount(ds.labels).tolist() == [2] * 10
    assert ds.class_names == CIFAR10_CLASSES
    assert all(p.startswith("test/") for p in ds.paths)
    i = ds.paths.index("test/frog/0001.png")
    expected = np.asarray(Image.open(tree / "test" / "frog" / "0001.png").convert("RGB"))
    np.testing.assert_array_equal(ds.images[i], expected)
    assert ds.labels[i] == CIFAR10_CLASSES.index("frog")
    train = load_dataset(tree, "train", use_cache=False)
    assert len(train) == 20 and all(p.startswith("train/") for p in train.paths)


def test_class_only_tree_ignores_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in (0, 9):
        d = tmp_path / CIFAR10_CLASSES[label]
        d.mkdir()
        for i in range(3):
            Image.fromarray(class_pattern(label, rng)).save(d / f"{i}.jpg", quality=95)
    (tmp_path / "README.txt").write_text("not an image, ignored")
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(class_pattern(1, rng)).save(tmp_path / ".hidden" / "x.png")  # hidden: ignored
    ds = load_dataset(tmp_path, "test", use_cache=False)
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 9, 9, 9]
    assert len(load_dataset(tmp_path, "train", use_cache=False)) == 6


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.xz", ".zip"])
def test_archives_match_the_directory(tree: Path, tmp_path: Path, suffix: str) -> None:
    arc = archive(tree, tmp_path / f"cifar{suffix}")
    direct = load_dataset(tree, "test", use_cache=False)
    packed = load_dataset(arc, "test", use_cache=False)
    np.testing.assert_array_equal(packed.images, direct.images)
    np.testing.assert_array_equal(packed.labels, direct.labels)
    assert [p.split("/", 1)[1] for p in packed.paths] == direct.paths
    assert not any(tmp_path.glob("cifar/*")), "archives are read without unpacking"


def test_unknown_class_folders_need_a_class_list(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("apple", "pear"):
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.fromarray(class_pattern(0, rng)).save(tmp_path / "test" / name / "a.png")
    with pytest.raises(DataError, match="apple, pear"):
        load_dataset(tmp_path, "test", use_cache=False)
    ds = load_dataset(tmp_path, "test", classes=["pear", "apple"], use_cache=False)
    assert ds.class_names == ("pear", "apple") and sorted(ds.labels.tolist()) == [0, 1]
    assert ds.labels[ds.paths.index("test/apple/a.png")] == 1


def test_bad_files_in_a_tree_are_skipped_with_reasons(tmp_path: Path) -> None:
    make_tree(tmp_path, per_class=1, splits=("test",))
    (tmp_path / "test" / "cat" / "empty.jpg").write_bytes(b"")
    (tmp_path / "test" / "dog" / "notes.png").write_text("hello")
    (tmp_path / "test" / "dog" / "folder.jpg").mkdir()
    ds = load_dataset(tmp_path, "test", use_cache=False)
    assert len(ds) == 10
    reasons = dict(ds.skipped)
    assert "empty" in reasons["test/cat/empty.jpg"] and "not an image" in reasons["test/dog/notes.png"]
    cached = (load_dataset(tmp_path, "test"), load_dataset(tmp_path, "test"))[1]
    assert dict(cached.skipped) == reasons  # reasons survive the cache


def test_member_read_errors_become_skipped_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, per_class=1, splits=("test",))
    victim = tmp_path / "test" / "cat" / "0000.png"
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == victim:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    ds = load_dataset(tmp_path, "test", use_cache=False)
    assert len(ds) == 9 and dict(ds.skipped) == {"test/cat/0000.png": "permission denied"}


def test_missing_split_and_bad_sources(tree: Path, tmp_path: Path) -> None:
    only_train = make_tree(tmp_path / "t", per_class=1, splits=("train",))
    with pytest.raises(DataError, match="no test images"):
        load_dataset(only_train, "test", use_cache=False)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset(tree, "validation")
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")
    single = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(single)
    with pytest.raises(DataError, match="not a directory or archive"):
        load_dataset(single)
    good = archive(tree, tmp_path / "a.tar.xz").read_bytes()
    (tmp_path / "cut.tar.xz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="tar"):
        load_dataset(tmp_path / "cut.tar.xz")
    bad = bytearray(good)
    bad[len(bad) // 2 : len(bad) // 2 + 64] = bytes(64)
    (tmp_path / "bad.tar.xz").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="tar"):
        load_dataset(tmp_path / "bad.tar.xz")
    plain = bytearray(archive(tree, tmp_path / "p.tar", fmt=tarfile.USTAR_FORMAT).read_bytes())
    second_header = 512 * (1 + (len(plain) // 512) // 3)  # somewhere in the middle...
    while plain[second_header + 257 : second_header + 262] != b"ustar":  # ...aligned on a member header
        second_header += 512
    plain[second_header : second_header + 512] = bytes(512)  # a zeroed header reads as "end of archive"
    (tmp_path / "p.tar").write_bytes(bytes(plain))
    with pytest.raises(DataError, match="corrupt"):  # never a silently shorter dataset
        load_dataset(tmp_path / "p.tar")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataError, match="zip"):
        load_dataset(tmp_path / "bad.zip")


# ----------------------------------------------------------------------------- cifar-10-batches-py


def _batch(rng: np.random.Generator, n: int, start: int, str_keys: bool) -> tuple[dict, np.ndarray, list[int]]:
    imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = [(start + i) % 10 for i in range(n)]
    rows = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)  # official layout: R plane, G plane, B plane
    k = (lambda s: s) if str_keys else (lambda s: s.encode())
    return {k("batch_label"): k("batch"), k("labels"): labels, k("data"): rows, k("filenames"): [k("f.png")] * n}, imgs, labels


def make_batches(root: Path, str_keys: bool, protocol: int) -> tuple[Path, np.ndarray, np.ndarray]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(int(str_keys))
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        batch, imgs, labels = _batch(rng, 4, i, str_keys)
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
        train_imgs.append(imgs)
        train_labels += labels
    batch, test_imgs, test_labels = _batch(rng, 6, 0, str_keys)
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    names = list(CIFAR10_CLASSES) if str_keys else [c.encode() for c in CIFAR10_CLASSES]
    meta_key = "label_names" if str_keys else b"label_names"
    (d / "batches.meta").write_bytes(pickle.dumps({meta_key: names}, protocol=protocol))
    return d, np.concatenate(train_imgs), np.asarray(train_labels)


@pytest.mark.parametrize("str_keys, protocol", [(False, 2), (True, 4), (True, 5)])
def test_pickle_batches(tmp_path: Path, str_keys: bool, protocol: int) -> None:
    d, train_imgs, train_labels = make_batches(tmp_path, str_keys, protocol)
    for src in (d, tmp_path):  # the batches dir itself, or its parent
        ds = load_dataset(src, "train", use_cache=False)
        np.testing.assert_array_equal(ds.images, train_imgs)
        np.testing.assert_array_equal(ds.labels, train_labels)
    assert len(load_dataset(d, "test", use_cache=False)) == 6
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(d, "cifar-10-batches-py")
    np.testing.assert_array_equal(load_dataset(tgz, "train", use_cache=False).images, train_imgs)


def test_python2_style_pickle_with_bytes_everywhere(tmp_path: Path) -> None:
    """cPickle protocol 2 output from Python 2: bytes keys, bytes label names (as in the real download)."""
    d, imgs, labels = make_batches(tmp_path, str_keys=False, protocol=2)
    raw = (d / "data_batch_1").read_bytes()
    assert b"_reconstruct" in raw and b"labels" in raw
    ds = load_dataset(d, "train", use_cache=False)
    np.testing.assert_array_equal(ds.images[:4], imgs[:4])


def test_missing_or_bad_batches(tmp_path: Path) -> None:
    d, _, _ = make_batches(tmp_path, str_keys=True, protocol=4)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(d, "train", use_cache=False)
    (d / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match="layout"):
        load_dataset(d, "test", use_cache=False)
    (d / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    with pytest.raises(DataError, match="labels"):
        load_dataset(d, "test", use_cache=False)
    (d / "test_batch").write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(DataError, match="pickle"):
        load_dataset(d, "test", use_cache=False)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d, _, _ = make_batches(tmp_path, str_keys=True, protocol=4)
    (d / "test_batch").write_bytes(pickle.dumps({"data": _Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing"):
        load_dataset(d, "test", use_cache=False)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- cache


def test_second_load_is_a_cache_hit_and_a_change_invalidates_it(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    arc = archive(tree, tmp_path / "c.tar.gz")
    calls = []
    real = data._load_uncached
    monkeypatch.setattr(data, "_load_uncached", lambda *a: calls.append(a) or real(*a))
    first = load_dataset(arc, "test")
    second = load_dataset(arc, "test")
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("data-*.npz"))) == 1
    np.testing.assert_array_equal(first.images, second.images)
    assert second.paths == first.paths and second.fingerprint == first.fingerprint

    # A different class list or split is a different cache entry.
    load_dataset(arc, "train")
    assert len(calls) == 2

    # Rewrite the archive with one image changed: same name, new size/mtime -> decoded again.
    changed = tmp_path / "changed"
    make_tree(changed, per_class=2, seed=5)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(changed / "test" / "cat" / "0000.png")
    archive(changed, arc)
    st = arc.stat()
    os.utime(arc, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_dataset(arc, "test")
    assert len(calls) == 3 and third.fingerprint != first.fingerprint
    i = third.paths.index("cifar/test/cat/0000.png")
    assert (third.images[i] == (1, 2, 3)).all() and not (first.images[i] == (1, 2, 3)).all()


def test_corrupt_cache_entry_is_rebuilt(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    first = load_dataset(tree, "test")
    (entry,) = (tmp_path / "cache").glob("data-*.npz")
    entry.write_bytes(b"garbage")
    again = load_dataset(tree, "test")
    np.testing.assert_array_equal(again.images, first.images)


def test_directory_change_invalidates_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "d", per_class=1, splits=("test",))
    assert len(load_dataset(root, "test")) == 10
    Image.new("RGB", (32, 32)).save(root / "test" / "cat" / "extra.png")
    assert len(load_dataset(root, "test")) == 11


def test_unwritable_cache_dir_is_not_fatal(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(blocker / "cache"))  # parent is a file: mkdir fails
    assert len(load_dataset(tree, "test")) == 20


# ----------------------------------------------------------------------------- cifar10, bundled, shared


def test_cifar10_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(*a: object, **k: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", use_cache=False)
    msg = str(info.value)
    assert "cannot download" in msg and "bundled" in msg and "archive" in msg and "\n" not in msg
    assert not list((tmp_path / "keras").rglob("*.gz")), "no half download left behind"


def test_cifar10_uses_an_existing_keras_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    _, imgs, labels = make_batches(tmp_path / "keras" / "datasets", str_keys=False, protocol=2)
    ds = load_dataset("cifar10", "train", use_cache=False)
    np.testing.assert_array_equal(ds.images, imgs)
    assert ds.source == "cifar10"


def test_cifar10_download_path_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake server answer: the official .tar.gz layout is fetched, extracted and loaded."""
    make_batches(tmp_path / "src", str_keys=False, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", "cifar-10-batches-py")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(buf.getvalue()))
    assert len(load_dataset("cifar10", "test", use_cache=False)) == 6


def test_bundled_test_split() -> None:
    ds = load_dataset("bundled", "test")
    assert ds.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    assert ds.source == "bundled" and not ds.skipped
    assert 60 < ds.images.mean() < 200 and ds.images.std() > 30  # real photos, not blank decodes
    assert len(load_dataset(None, "test")) == 10_000  # the default source
    with pytest.raises(DataError, match="only the CIFAR-10 test split"):
        load_dataset("bundled", "train")


def test_train_val_split_is_stratified_and_disjoint(tree: Path) -> None:
    ds = load_dataset(tree, "train", use_cache=False)
    train, val = train_val_split(ds, 10, seed=0)
    assert len(train) + len(val) == len(ds) and len(val) == 10
    assert np.bincount(val.labels, minlength=10).tolist() == [1] * 10
    with pytest.raises(DataError):
        train_val_split(ds, 0, seed=0)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason=f"{SHARED_ARCHIVE} not present")
def test_real_shared_archive_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 60,000-JPEG archive (train members come first, so the whole xz stream is read)."""
    calls = []
    real = data._load_uncached
    monkeypatch.setattr(data, "_load_uncached", lambda *a: calls.append(a) or real(*a))
    ds = load_dataset(SHARED_ARCHIVE, "test")
    assert ds.images.shape == (10_000, 32, 32, 3) and not ds.skipped
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    bundled = load_dataset("bundled", "test")
    assert abs(float(ds.images.mean()) - float(bundled.images.mean())) < 2.0  # same photos, recompressed
    again = load_dataset(SHARED_ARCHIVE, "test")
    assert len(calls) == 1 and again.fingerprint == ds.fingerprint  # second load came from the cache
