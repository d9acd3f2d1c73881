"""Hostile image files built in code (no downloads): headers that lie, decoders that spin.

Used by the loader's tests and by benchmarks/reliability. Each builder returns the file's bytes.
The claims follow the fuzzer cases that broke the header-priced budget (issue 25): a 148-byte BLP
that claims 1 x 33.5 MP RGBA, and files whose decoders allocate or loop past what the header says.
"""

from __future__ import annotations

import io
import struct

from PIL import Image

BIG = 33_554_432  # 1 x 32 Mi pixels: 134 MB as RGBA, under the 50 MP pixel limit


def blp2_claim(width: int = 1, height: int = BIG) -> bytes:
    """BLP2, DXT5 RGBA, claiming ``width`` x ``height``, with almost no data (148 bytes)."""
    head = b"BLP2" + struct.pack("<i", 1) + struct.pack("<bbbb", 2, 8, 7, 0) + struct.pack("<II", width, height)
    return head + struct.pack("<16I", *([148] + [0] * 15)) + struct.pack("<16I", *([16] + [0] * 15))


def blp1_spin(data_bytes: int = 3_000_000) -> bytes:
    """BLP1, palette + alpha, claiming 1x1 but carrying ``data_bytes`` indices: Pillow's decoder loops over
    every byte in Python and builds 4 bytes per index (12 MB for 3 MB) before it checks the size."""
    head = b"BLP1" + struct.pack("<iI", 1, 1) + struct.pack("<II", 1, 1) + struct.pack("<ii", 5, 0)
    offsets = struct.pack("<16I", *([28 + 128 + 1024] + [0] * 15))
    lengths = struct.pack("<16I", *([data_bytes] + [0] * 15))
    return head + offsets + lengths + bytes(1024) + bytes(data_bytes)


def ico_png(w: int, h: int, entry: tuple[int, int] = (16, 16)) -> bytes:
    """An ICO whose directory lists one ``entry``-sized icon, holding a solid-black RGB PNG of ``w`` x ``h``.

    Pillow's ICO plugin decodes that PNG inside ``Image.open`` (to learn its real size): 187 KB for
    8000x8000 made the loader allocate 256 MB before any check of ours ran (found this round)."""
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z = zlib.compressobj(9)
    row = bytes(1 + 3 * w)  # filter byte + black pixels
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", idat)
           + chunk(b"IEND", b""))
    ew, eh = (0 if d >= 256 else d for d in entry)  # 0 means 256 in an ICO directory
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", ew, eh, 0, 0, 1, 32, len(png), 22) + png


def _saved(fmt: str, mode: str = "RGB", **kw: object) -> bytearray:
    buf = io.BytesIO()
    Image.new(mode, (4, 4), (10, 20, 30, 255)[: len(mode)]).save(buf, fmt, **kw)
    return bytearray(buf.getvalue())


def tga_rle_claim(w: int = 8192, h: int = 4096) -> bytes:
    b = _saved("TGA", compression="tga_rle")
    b[12:16] = struct.pack("<HH", w, h)
    return bytes(b)


def pcx_claim(w: int = 8192, h: int = 4096) -> bytes:
    b = _saved("PCX")
    b[8:12] = struct.pack("<HH", w - 1, h - 1)
    return bytes(b)


def sgi_claim(w: int = 8192, h: int = 4096) -> bytes:
    b = _saved("SGI")
    b[6:10] = struct.pack(">HH", w, h)
    return bytes(b)


def dds_claim(w: int = 8192, h: int = 4096) -> bytes:
    b = _saved("DDS", "RGBA")
    b[12:20] = struct.pack("<II", h, w)
    return bytes(b)


def gif_claim(w: int = 8192, h: int = 4096) -> bytes:
    b = _saved("GIF", "L")
    b[6:10] = struct.pack("<HH", w, h)  # the logical screen
    i = b.index(b"\x2c")  # the image descriptor: its frame as big as the screen
    b[i + 5:i + 9] = struct.pack("<HH", w, h)
    return bytes(b)


CORPUS = {"blp2-claim-1x33.5MP": blp2_claim, "blp1-spin-1MB": lambda: blp1_spin(1_000_000),
          "tga-rle-claim": tga_rle_claim, "tga-rle-claim-64MiB": lambda: tga_rle_claim(4096, 4095),
          "pcx-claim": pcx_claim, "sgi-claim": sgi_claim, "dds-claim": dds_claim, "gif-claim": gif_claim}


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants now (Linux /proc; 0 once it is gone)."""
    import os

    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            kids.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
    return total


def peak_tree_rss(proc: "object", every: float = 0.01) -> int:
    """Poll a running ``subprocess.Popen``'s process tree until it exits; the highest sum seen."""
    import time

    peak = 0
    while proc.poll() is None:  # type: ignore[attr-defined]
        peak = max(peak, tree_rss(proc.pid))  # type: ignore[attr-defined]
        time.sleep(every)
    return peak
