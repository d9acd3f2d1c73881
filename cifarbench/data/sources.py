"""The data layer: any labelled image source -> (images uint8 [N,H,W,3], labels int64 [N], class names).

A tree's class folders are matched to the model's classes by name (``matched_classes``): an ImageNet-style
``<root>/<class>/*`` tree may hold any subset of them.

Images come at 32x32 unless a ``transform`` (a model's input contract) asks for another size: files
decode straight to it, CIFAR-10's raw 32x32 arrays are resampled by the same loader code.

Sources: ``bundled`` (the 10,000-image test split shipped in the package), ``cifar10``
(the official download, cached where Keras keeps it), a ``cifar-10-batches-py`` directory,
an image-folder tree, or a .tar/.tar.gz/.tar.xz/.zip archive of either, read without
unpacking. Decoded arrays are cached as .npz keyed by the source's identity, so the
second load of the 60,000-image archive is a single file read.

Over 300 lines on purpose: one module per source format would repeat what every source shares (the
.npz cache key, label and class checks, archive member walking).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from cifarbench import CIFAR10_CLASSES
from cifarbench.atomic import atomic_write
from cifarbench.data.images import IMAGE_EXTENSIONS, current_max_pixels, fit_array, load_image
from cifarbench.data.transform import SizeLike, Transform, as_transform
from cifarbench.errors import DataError
from cifarbench.paths import BUNDLED_TEST_ARCHIVE, cache_dir

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CACHE_VERSION = "1"


@dataclass
class Dataset:
    images: np.ndarray  # uint8 [N, H, W, 3], RGB (32x32 unless a transform asked otherwise)
    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]
    source: str
    split: str
    fingerprint: str
    paths: list[str] = field(default_factory=list)  # member names, when the source has them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member, reason) of undecodable files

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def describe_sources() -> str:
    return (
        "'bundled' (test split shipped with cifarbench), 'cifar10' (official download), "
        "a cifar-10-batches-py directory, an image-folder tree (<root>/<split>/<class>/*.jpg), "
        "or a .tar/.tar.gz/.tar.xz/.zip archive of either"
    )


def load_dataset(
    source: str | os.PathLike[str] | None = "bundled",
    split: str = "test",
    classes: Sequence[str] | None = None,
    use_cache: bool = True,
    transform: SizeLike | None = None,
) -> Dataset:
    """Load one split of a source; see the module docstring for the sources.

    ``transform``: a model's input transform (or a size): the images come at its size, resized its way.
    """
    t = as_transform(transform if transform is not None else 32)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    class_names = tuple(classes) if classes else CIFAR10_CLASSES
    src = "bundled" if source in (None, "", "bundled") else os.fspath(source)

    if src == "bundled":
        if split != "test":
            raise DataError("the bundled data holds only the CIFAR-10 test split; pass --data with a train source")
        path = BUNDLED_TEST_ARCHIVE
        if not path.is_file():
            raise DataError(f"bundled test split missing at {path}; reinstall cifarbench")
    elif src == "cifar10":
        path = _official_cifar10_dir()
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise DataError(f"data source not found: {src}; expected {describe_sources()}")

    key = _fingerprint(path, split, class_names, t)
    cached = _cache_path(key)
    if use_cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return Dataset(
                    z["images"], z["labels"], class_names, src, split, key,
                    paths=list(z["paths"]), skipped=[tuple(s.split("\t", 1)) for s in z["skipped"]],
                )
        except Exception:  # corrupt cache entry: rebuild it
            pass

    ds = _load_uncached(path, split, class_names, t)
    ds.source, ds.fingerprint = src, key
    if len(ds) == 0:
        raise DataError(f"no {split} images found in {src}; expected {describe_sources()}")
    if use_cache:
        _write_cache(cached, ds)
    return ds


# --------------------------------------------------------------------------- sources


def _load_uncached(path: Path, split: str, classes: tuple[str, ...], t: Transform = Transform()) -> Dataset:
    if path.is_dir():
        batches = _find_batches_dir(path)
        if batches is not None:
            return _resampled(_from_pickles(lambda name: (batches / name).read_bytes(), split, classes), t)
        with members_of(path) as members:
            return _from_tree(members, split, classes, t)
    kind = "zip" if path.name.lower().endswith(".zip") else "tar"
    try:
        with members_of(path) as members:
            return _from_archive_members(members, split, classes, t)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path}: not a readable {kind} archive ({exc})") from None


@contextlib.contextmanager
def members_of(path: Path) -> Iterator[Iterator[tuple[str, Callable[[], bytes]]]]:
    """``(name, read)`` for every file of a folder (sorted, hidden skipped), zip or tar: the one walker.

    Names use ``/``; a tar is streamed in archive order. Raises DataError for anything else.
    """
    if path.is_dir():
        yield ((str(p.relative_to(path)).replace(os.sep, "/"), p.read_bytes) for p in sorted(path.rglob("*"))
               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        return
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            yield ((i.filename, (lambda i=i: zf.read(i))) for i in zf.infolist() if not i.is_dir())
        return
    if any(name.endswith(s) for s in ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tf:
            yield _tar_members(tf)
        return
    raise DataError(f"{path}: not a directory or archive; expected {describe_sources()}")


def source_path(source: str | os.PathLike[str] | None) -> Path:
    """The file or folder behind a source name (``bundled`` -> the shipped archive); ``cifar10`` downloads."""
    src = "bundled" if source in (None, "", "bundled") else os.fspath(source)
    if src == "bundled":
        return BUNDLED_TEST_ARCHIVE
    return _official_cifar10_dir() if src == "cifar10" else Path(src).expanduser()


def _tar_members(tf: tarfile.TarFile) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for m in tf:  # streaming: members are read in archive order, no random access needed
        if m.isfile():
            data = tf.extractfile(m).read()  # type: ignore[union-attr]
            yield m.name, (lambda d=data: d)
    # tarfile stops quietly at the first unreadable header after the first member; reading the rest
    # checks the stream's CRC and that only end-of-archive padding was left, so corruption is an error.
    while chunk := tf.fileobj.read(1 << 20):  # type: ignore[union-attr]
        if chunk.count(0) != len(chunk):
            raise tarfile.ReadError("data after the end-of-archive marker: the archive is corrupt")


def _from_archive_members(members: Iterable[tuple[str, Callable[[], bytes]]], split: str, classes: tuple[str, ...],
                          t: Transform = Transform()) -> Dataset:
    members = list(members)
    by_base = {n.rsplit("/", 1)[-1]: r for n, r in members}
    if "data_batch_1" in by_base or "test_batch" in by_base:
        return _resampled(_from_pickles(lambda base: by_base[base](), split, classes), t)
    return _from_tree(sorted(members, key=lambda m: m[0]), split, classes, t)


def _resampled(ds: Dataset, t: Transform) -> Dataset:
    """CIFAR-10's raw 32x32 arrays at another model's size, resampled as the loader resamples files."""
    if t.size == (32, 32) and t.pct == 1.0:
        return ds
    ds.images = np.ascontiguousarray(np.stack([fit_array(a, t) for a in ds.images])) if len(ds) else \
        np.zeros((0, *t.size, 3), np.uint8)
    return ds


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").casefold().split())


def matched_classes(folders: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    """Folder name -> index in ``classes``: exact names first, then ignoring case, ``_``/``-``/space.

    An ImageNet-style tree may hold any subset of the model's classes. A folder that matches none, or
    two folders that match the same class, is a DataError naming them: a silently dropped or merged
    class would skew every figure.
    """
    exact = {c: i for i, c in enumerate(classes)}
    loose: dict[str, int] = {}
    for i, c in enumerate(classes):
        loose.setdefault(_norm(c), i)
    out: dict[str, int] = {}
    unknown: list[str] = []
    for f in folders:
        i = exact.get(f, loose.get(_norm(f)))
        if i is None:
            unknown.append(f)
        else:
            out[f] = i
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
        ex = ", ".join(list(classes)[:5]) + (", ..." if len(classes) > 5 else "")
        raise DataError(f"{len(unknown)} of {len(folders)} class folders match none of the model's {len(classes)} "
                        f"classes ({ex}): {shown}; rename them, or give the model this data's class list "
                        "(convert --classes FILE)")
    seen: dict[int, str] = {}
    for f, i in out.items():
        if i in seen:
            raise DataError(f"class folders {seen[i]!r} and {f!r} both match class {classes[i]!r}")
        seen[i] = f
    return out


def tree_classes(source: str | os.PathLike[str], split: str = "train") -> tuple[str, ...] | None:
    """The class folder names of an image-folder tree or archive (sorted), or None for other sources.

    ``train`` takes a model's classes from its data this way; CIFAR-10's folders sort into CIFAR-10's order.
    """
    src = os.fspath(source) if source is not None else "bundled"
    if src in ("", "bundled", "cifar10"):
        return None
    path = Path(src).expanduser()
    if not path.exists() or (path.is_dir() and _find_batches_dir(path) is not None):
        return None
    folders: set[str] = set()
    split_folders: set[str] = set()
    try:
        with members_of(path) as members:
            for name, _ in members:
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if len(parts) < 2 or Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                    if parts and parts[-1] in ("data_batch_1", "test_batch"):
                        return None
                    continue
                folders.add(parts[-2])
                if len(parts) >= 3 and parts[-3] == split:
                    split_folders.add(parts[-2])
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        return None
    return tuple(sorted(split_folders or folders)) or None


def _from_tree(members: Iterable[tuple[str, Callable[[], bytes]]], split: str, classes: tuple[str, ...],
               t: Transform = Transform()) -> Dataset:
    """Members named ``.../<split>/<class>/<file>`` or ``.../<class>/<file>``, folders matched to ``classes``."""
    rows = []
    for name, read in members:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if len(parts) < 2 or any(p.startswith(".") for p in parts) or Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rows.append((parts, name, read))
    has_splits = any(len(p) >= 3 and p[-3] in SPLITS for p, _, _ in rows)
    if has_splits:
        rows = [r for r in rows if len(r[0]) >= 3 and r[0][-3] == split]
    index = matched_classes(sorted({p[-2] for p, _, _ in rows}), classes)
    images, labels, paths, skipped = [], [], [], []
    for parts, name, read in rows:
        try:
            raw = read()
        except PermissionError:
            skipped.append((name, "permission denied"))
            continue
        except OSError as exc:  # vanished or unreadable member: a row-level problem, not a crash
            skipped.append((name, f"unreadable: {exc.strerror or exc}"))
            continue
        res = load_image(raw, t)
        if not res.ok:
            skipped.append((name, res.error or "unreadable"))
            continue
        images.append(res.array)
        labels.append(index[parts[-2]])
        paths.append(name)
    return Dataset(_stack(images, t.size), np.asarray(labels, dtype=np.int64), classes, "", split, "", paths, skipped)


def _from_pickles(read: Callable[[str], bytes], split: str, classes: tuple[str, ...]) -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for n in names:
        try:
            batch = _unpickle(read(n))
        except (KeyError, FileNotFoundError):
            raise DataError(f"CIFAR-10 batch {n!r} is missing from the cifar-10-batches-py source") from None
        try:
            data = np.asarray(_get(batch, "data"), dtype=np.uint8)
            lab = np.asarray(_get(batch, "labels"), dtype=np.int64).reshape(-1)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"CIFAR-10 batch {n!r} is not in the cifar-10-batches-py layout ({exc})") from None
        if len(lab) != len(images[-1]) or (len(lab) and (lab.min() < 0 or lab.max() >= len(classes))):
            raise DataError(f"CIFAR-10 batch {n!r}: labels do not match the images or the {len(classes)} classes")
        labels.append(lab)
    try:
        meta = _unpickle(read("batches.meta"))
        names_meta = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names"))
        if names_meta != tuple(classes[: len(names_meta)]) and tuple(classes) == CIFAR10_CLASSES:
            raise DataError(f"batches.meta lists classes {names_meta}, not CIFAR-10's")
    except (KeyError, FileNotFoundError):
        pass
    return Dataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes, "", split, "")


# Globals a CIFAR-10 batch may reference (numpy arrays, Python 2/3 bytes); anything else is refused,
# so a crafted "batch" file cannot run code while loading.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(raw: bytes) -> dict:
    try:
        out = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"not a CIFAR-10 pickle batch: {exc}") from None
    if not isinstance(out, dict):
        raise DataError(f"not a CIFAR-10 pickle batch: a {type(out).__name__}, not a dict")
    return out


def _get(d: dict, key: str):
    if key in d:
        return d[key]
    return d[key.encode()]


def _find_batches_dir(path: Path) -> Path | None:
    for cand in (path, path / "cifar-10-batches-py"):
        if (cand / "test_batch").is_file() or (cand / "data_batch_1").is_file():
            return cand
    return None


def _official_cifar10_dir() -> Path:
    """Where Keras keeps the official download; fetched with urllib so no TensorFlow import is needed."""
    root = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    target = root / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        return target
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file():
        import urllib.request

        try:
            root.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(CIFAR10_URL, timeout=30) as resp, atomic_write(archive, "wb") as fh:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
        except OSError as exc:
            raise DataError(
                f"cannot download CIFAR-10 from {CIFAR10_URL} ({getattr(exc, 'reason', exc)}); offline, use --data "
                "bundled (test split), a cifar-10-batches-py directory, an image-folder tree or an archive "
                "such as cifar10-jpeg.tar.xz"
            ) from None
    try:
        with tarfile.open(archive, "r:gz") as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                tf.extractall(root, filter="data")
            else:  # older Pythons: refuse absolute paths, '..' and links ourselves
                members = tf.getmembers()
                for m in members:
                    if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: unsafe member {m.name!r} in the CIFAR-10 archive")
                tf.extractall(root, members=members)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive}: broken CIFAR-10 download ({exc}); delete it and retry") from None
    return target


# --------------------------------------------------------------------------- cache


def _fingerprint(path: Path, split: str, classes: tuple[str, ...], t: Transform = Transform()) -> str:
    # The pixel limit decides which files decode, so a run under another --max-pixels never reuses this one's arrays;
    # another transform means other pixels (the first release's 32x32 default keeps its old keys).
    shape = "" if t == Transform() else f"|{t.size}|{t.resize}|{t.crop_pct}|{t.interpolation}|{t.scale_size}"
    h = hashlib.sha256(f"{_CACHE_VERSION}|{path.resolve()}|{split}|{','.join(classes)}|{current_max_pixels()}{shape}".encode())
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _cache_path(key: str) -> Path:
    return cache_dir() / f"data-{key}.npz"


def _write_cache(path: Path, ds: Dataset) -> None:
    try:
        with atomic_write(path, "wb") as fh:
            np.savez(
                fh, images=ds.images, labels=ds.labels, paths=np.asarray(ds.paths, dtype=str),
                skipped=np.asarray(["\t".join(s) for s in ds.skipped], dtype=str),
            )
    except OSError:
        pass  # a read-only cache dir costs speed, not correctness


def _stack(images: list[np.ndarray], size: tuple[int, int] = (32, 32)) -> np.ndarray:
    if not images:
        return np.zeros((0, *size, 3), np.uint8)
    return np.ascontiguousarray(np.stack(images))


def train_val_split(ds: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """A stratified hold-out slice of the train split, for model selection and calibration."""
    if not 0 < val_size < len(ds):
        raise DataError(f"--val-size must be between 1 and {len(ds) - 1}, got {val_size}")
    rng = np.random.default_rng(seed)
    val_idx = []
    n_classes = len(ds.class_names)
    for c in range(n_classes):
        idx = np.flatnonzero(ds.labels == c)
        take = int(round(val_size * len(idx) / len(ds)))
        val_idx.append(rng.permutation(idx)[:take])
    val = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(ds), bool)
    mask[val] = False
    def sub(m: np.ndarray) -> Dataset:
        paths = [ds.paths[i] for i in m] if ds.paths else []  # kept: images_at re-decodes members by name
        return Dataset(ds.images[m], ds.labels[m], ds.class_names, ds.source, ds.split, ds.fingerprint, paths)

    return sub(np.flatnonzero(mask)), sub(val)


def images_at(ds: Dataset, idx: Sequence[int] | np.ndarray, transform: Transform) -> np.ndarray:
    """Images ``idx`` of a dataset loaded at the default 32x32, at a model's size and transform.

    Only the chosen images are decoded at that size (a 224x224 copy of a whole train split would need
    7.5 GB): files are decoded again from the source with the model's transform, exactly as classify
    decodes them; CIFAR-10's raw arrays are resampled as ``load_dataset(transform=...)`` does.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if transform == Transform() or len(idx) == 0:
        return np.ascontiguousarray(ds.images[idx]) if len(idx) else np.zeros((0, *transform.size, 3), np.uint8)
    if not ds.paths:
        return np.ascontiguousarray(np.stack([fit_array(ds.images[i], transform) for i in idx]))
    want = {ds.paths[i]: k for k, i in enumerate(idx)}
    out = np.zeros((len(idx), *transform.size, 3), np.uint8)
    found = 0
    with members_of(source_path(ds.source)) as members:
        for name, read in members:
            k = want.get(name)
            if k is None:
                continue
            res = load_image(read(), transform)
            if not res.ok or res.array is None:
                raise DataError(f"{ds.source}: {name} decoded before but not now ({res.error})")
            out[k], found = res.array, found + 1
    if found != len(want):
        raise DataError(f"{ds.source}: {len(want) - found} image(s) vanished while loading; run again")
    return out
