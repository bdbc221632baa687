"""Hostile archives and images, built in memory in seconds (no checked-in blobs).

Every generator is parametrized by size; the defaults are the full-size attacks, which the
integration tests should use (they cost seconds to build and a few KB to MB to send). The
unit tests use smaller sizes wherever the class of attack is the same: what stops a bomb is
a bound on how much is inflated, which does not depend on how much more it would inflate.

Good members are real small JPEGs (``support.tiny_jpeg``), so they succeed end to end.

=============================  ==============================  ===========================
generator                      full size (integration)         what it is
=============================  ==============================  ===========================
named_zip / named_tar          --                              legacy-encoded names
damaged_zip                    --                              one member of each damage
bzip2_bomb_zip                 2 GiB inflated, ~5 KB zip       directory understates size
lzma_bomb_zip                  1 GiB inflated, ~150 KB zip     same, LZMA (7-10 s to build)
overlapping_zip                300 x 24 MiB = 7 GiB, ~38 KB    records share one kernel
many_entries_zip               300 x 24 MiB = 7 GiB, ~7 MB     honest entries, too many
big_members_tar_gz             2 x 1 GiB, ~2 MB                declared sizes are true
tiff_pages / gif_frames        40,000 pages / 400,000 frames   costs per page
=============================  ==============================  ===========================
"""

from __future__ import annotations

import bz2
import functools
import io
import lzma
import struct
import tarfile
import zlib
from dataclasses import dataclass

from support import tiny_jpeg

GiB, MiB = 1 << 30, 1 << 20
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
UTF8_FLAG = 0x800

# Real words, each written in every encoding it is representable in by the tests.
WORDS = ("Müller.jpg", "Ærøskøbing.jpg", "façade.jpg", "写真.jpg", "東京タワー.jpg",
         "Ñandú.jpg")


def representable(word: str, encoding: str) -> bool:
    try:
        word.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


# -- a zip writer that can lie -----------------------------------------------------------
@dataclass
class ZipMember:
    """One member as written: every field the reader trusts can be set to a lie."""

    name: bytes  # raw name bytes as stored
    data: bytes = b""
    method: int = DEFLATED
    flags: int = 0
    extra: bytes = b""
    size: int | None = None  # declared uncompressed size (default: len(data))
    crc: int | None = None  # declared CRC-32 (default: of data)
    payload: bytes | None = None  # compressed bytes as stored (default: data compressed)
    compressed_size: int | None = None  # declared (default: len(payload))
    external_attr: int = 0


def compressed(data: bytes, method: int) -> bytes:
    if method == STORED:
        return data
    if method == DEFLATED:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        return deflate.compress(data) + deflate.flush()
    if method == BZIP2:
        return bz2.compress(data, 9)
    if method == LZMA:
        encoder, header = _lzma_encoder()
        return header + encoder.compress(data) + encoder.flush()
    return data  # methods we do not write: the bytes stand in for their data


def build_zip(members: list[ZipMember], prefix: bytes = b"", zip64: bool = False) -> bytes:
    """A zip of ``members`` in order (``prefix``: bytes before it, as self-extractors have;
    ``zip64``: sizes, offsets and the end records in their zip64 forms, as for > 4 GiB)."""
    out = bytearray(prefix)
    directory = bytearray()
    for member in members:
        payload = compressed(member.data, member.method) if member.payload is None \
            else member.payload
        fields = _fields(member, len(payload))
        offset = len(out) - len(prefix)
        out += _local_header(member, fields) + payload
        directory += _central_record(member, fields, offset, zip64)
    out += _end_records(directory, len(out) - len(prefix), len(members), zip64)
    return bytes(out)


def _fields(member: ZipMember, payload_size: int) -> tuple[int, int, int]:
    crc = zlib.crc32(member.data) if member.crc is None else member.crc
    size = len(member.data) if member.size is None else member.size
    csize = payload_size if member.compressed_size is None else member.compressed_size
    return crc, csize, size


def _local_header(member: ZipMember, fields: tuple[int, int, int]) -> bytes:
    crc, csize, size = fields
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 63, member.flags, member.method, 0, 0x21,
                       crc, csize, size, len(member.name), len(member.extra)) \
        + member.name + member.extra


def _central_record(member: ZipMember, fields: tuple[int, int, int], offset: int,
                    zip64: bool = False) -> bytes:
    crc, csize, size = fields
    extra = member.extra
    if zip64:  # the zip64 extra field carries them, in this order
        extra += struct.pack("<HH3Q", 0x0001, 24, size, csize, offset)
        size = csize = offset = 0xFFFFFFFF
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x033F, 63, member.flags, member.method,
                       0, 0x21, crc, csize, size, len(member.name), len(extra), 0, 0,
                       0, member.external_attr, offset) + member.name + extra


def _end_records(directory: bytes, directory_offset: int, count: int,
                 zip64: bool = False) -> bytes:
    out = bytes(directory)
    if zip64:
        end64_at = directory_offset + len(directory)
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                           len(directory), directory_offset)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, end64_at, 1)
        count, directory_size, directory_offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        directory_size = len(directory)
    return out + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, directory_size,
                             directory_offset, 0)


def unicode_path_extra(raw: bytes, name: str, crc: int | None = None) -> bytes:
    """Info-ZIP Unicode Path extra field (0x7075): version 1, CRC-32 of the raw name, UTF-8."""
    utf8 = name.encode("utf-8")
    crc = zlib.crc32(raw) if crc is None else crc
    return struct.pack("<HHBL", 0x7075, 5 + len(utf8), 1, crc) + utf8


# -- names -------------------------------------------------------------------------------
def named_zip(names: list[str], encoding: str, *, utf8_flag: bool = False,
              unicode_extra: bool = False, method: int = DEFLATED) -> tuple[bytes, dict]:
    """A zip whose names are written in ``encoding`` (no UTF-8 flag unless ``utf8_flag``:
    then flagged but not UTF-8). ``unicode_extra``: the names are written lossily
    (``?`` for what ``encoding`` lacks) and the real one is in an Info-ZIP Unicode Path field.
    Returns the zip and {expected name: data}."""
    members, expected = [], {}
    for seed, name in enumerate(names):
        data = tiny_jpeg(300 + seed)
        raw = name.encode(encoding, "replace" if unicode_extra else "strict")
        extra = unicode_path_extra(raw, name) if unicode_extra else b""
        members.append(ZipMember(raw, data, method, UTF8_FLAG if utf8_flag else 0, extra))
        expected[name] = data
    return build_zip(members), expected


def named_tar(names: list[str], encoding: str, *, gz: bool = False,
              pax: bool = False) -> tuple[bytes, dict]:
    """A tar (or tar.gz) whose names are the bytes of ``encoding``: tarfile reads them back
    as lone surrogates. ``pax``: the names go in pax ``path`` records (hdrcharset=BINARY).
    Returns the archive and {expected name: data}."""
    buffer, expected = io.BytesIO(), {}
    fmt = tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w", format=fmt,
                      encoding="utf-8", errors="surrogateescape") as archive:
        for seed, name in enumerate(names):
            data = tiny_jpeg(400 + seed)
            info = tarfile.TarInfo(name.encode(encoding).decode("utf-8", "surrogateescape"))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            expected[name] = data
    return buffer.getvalue(), expected


# -- damage ------------------------------------------------------------------------------
def damaged_zip(declared_huge: int = 2 * GiB) -> tuple[bytes, dict]:
    """Good members of every method among members with one kind of damage each.

    Returns the zip and {name: data (good) or the error code expected}; ``file_too_large``
    assumes the reader's entry limit is below ``declared_huge``.
    """
    good = {f"good/{i}.jpg": tiny_jpeg(500 + i) for i in range(5)}
    bad_data = tiny_jpeg(599)
    deflated = compressed(bad_data, DEFLATED)
    members = [
        ZipMember(b"good/0.jpg", good["good/0.jpg"], DEFLATED),
        # BTYPE=11 in the first block header: zlib.error "invalid block type"
        ZipMember(b"bad/corrupt_deflate.jpg", bad_data, payload=b"\xff" + deflated[1:]),
        ZipMember(b"good/1.jpg", good["good/1.jpg"], BZIP2),
        ZipMember(b"bad/bad_crc.jpg", bad_data, crc=zlib.crc32(bad_data) ^ 0xDEADBEEF),
        ZipMember(b"bad/truncated.jpg", bad_data, payload=deflated[:len(deflated) // 2]),
        ZipMember(b"bad/size_understated.jpg", bad_data, size=len(bad_data) // 2),
        ZipMember(b"bad/size_overstated.jpg", bad_data, size=len(bad_data) + 100),
        ZipMember(b"good/2.jpg", good["good/2.jpg"], LZMA),
        ZipMember(b"bad/deflate64.jpg", bad_data, method=9, payload=deflated),
        ZipMember(b"bad/encrypted.jpg", bad_data, flags=0x1),
        ZipMember(b"bad/huge.jpg", bad_data, STORED, size=declared_huge),
        ZipMember(b"bad/runs_over_next.jpg", bad_data, compressed_size=64 * MiB),
        ZipMember(b"bad/link.jpg", b"/etc/passwd", STORED, external_attr=0o120777 << 16),
        ZipMember(b"good/3.jpg", good["good/3.jpg"], STORED),
        ZipMember(b"../escape.jpg", bad_data),
        ZipMember(b"good/4.jpg", good["good/4.jpg"], DEFLATED),
        ZipMember(b"bad/past_the_end.jpg", bad_data, compressed_size=64 * MiB),
    ]
    expected: dict[str, bytes | str] = dict(good)
    expected.update({
        "bad/corrupt_deflate.jpg": "corrupt_archive", "bad/bad_crc.jpg": "corrupt_archive",
        "bad/truncated.jpg": "corrupt_archive", "bad/size_understated.jpg": "corrupt_archive",
        "bad/size_overstated.jpg": "corrupt_archive", "bad/deflate64.jpg": "unsupported_entry",
        "bad/encrypted.jpg": "unsupported_entry", "bad/huge.jpg": "file_too_large",
        "bad/runs_over_next.jpg": "corrupt_archive", "bad/past_the_end.jpg": "corrupt_archive",
        "bad/link.jpg": "unsupported_entry",
        "../escape.jpg": "unsafe_path"})
    return build_zip(members), expected


def tar_damaged_midway(gz: bool = False, how: str = "garbage") -> tuple[bytes, list[str]]:
    """Three good members, then damage: a ``garbage`` header, the tar cut inside the next
    member's data (``truncated``), or (gz) the gzip stream itself cut short (``cut_gzip``:
    the names before the damage are then a prefix of those returned)."""
    buffer = io.BytesIO()
    names = [f"ok/{i}.jpg" for i in range(3)]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for seed, name in enumerate(names + ["cut/3.jpg"]):
            data = tiny_jpeg(700 + seed, (96, 128))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tar = buffer.getvalue()
    fourth = _tar_member_offset(tar, 3)
    if how == "garbage":
        tar = tar[:fourth] + bytes(range(256)) * 2 + tar[fourth + 512:]
    elif how == "truncated":
        tar = tar[:fourth + 512 + 700]
    if how == "cut_gzip":
        whole = gzip_bytes(tar)
        return whole[:len(whole) * 3 // 5], names
    return (gzip_bytes(tar) if gz else tar), names


def _tar_member_offset(tar: bytes, index: int) -> int:
    offset = 0
    for _ in range(index):
        size = int(tar[offset + 124:offset + 136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + -(-size // 512) * 512
    return offset


def tar_header_bomb(kind: str = "pax", declared: int = 2 * GiB, gz: bool = False) -> bytes:
    """A good member, then a pax (``x``) or GNU long-name (``L``) header declaring
    ``declared`` bytes: tarfile reads such a header's data whole, in one read() call."""
    data = tiny_jpeg(950)
    good = tarfile.TarInfo("good.jpg")
    good.size = len(data)
    bomb = tarfile.TarInfo("././@PaxHeader" if kind == "pax" else "././@LongLink")
    bomb.type = tarfile.XHDTYPE if kind == "pax" else tarfile.GNUTYPE_LONGNAME
    bomb.size = declared
    tar = (good.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)
           + bomb.tobuf(tarfile.GNU_FORMAT) + b"path=" + b"A" * 100_000)
    return gzip_bytes(tar) if gz else tar


def gzip_bytes(data: bytes) -> bytes:
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    return gz.compress(data) + gz.flush()


def gzip_not_tar() -> bytes:
    return gzip_bytes(b"just some text, no tar headers at all\n" * 100)


# -- bombs -------------------------------------------------------------------------------
_BZ2_BLOCK = 40 * MiB  # zeros in one bzip2 block (822,256 bytes after its run-length stage)
_BZ2_END = 0x177245385090  # the end-of-stream magic, 48 bits


@functools.lru_cache(maxsize=4)
def bzip2_zeros(total: int) -> bytes:
    """One bzip2 stream of ``total`` zero bytes, in ~45 bytes per 40 MiB, built in ~0.1 s.

    Compressing 2 GiB would take ~27 s; instead one block of 40 MiB zeros is compressed once
    and repeated. bzip2 blocks are bit-aligned, so they are joined as bit strings, and the
    stream CRC is combined from the block CRCs as bzip2 does (rotate left 1, xor).
    """
    full, rest = divmod(total, _BZ2_BLOCK)
    blocks = [_bzip2_block(_BZ2_BLOCK)] * full + ([_bzip2_block(rest)] if rest else [])
    bits, length, crc = 0, 0, 0
    for block, block_length, block_crc in blocks:
        bits, length = (bits << block_length) | block, length + block_length
        crc = (((crc << 1) | (crc >> 31)) & 0xFFFFFFFF) ^ block_crc
    bits, length = (((bits << 48) | _BZ2_END) << 32) | crc, length + 80
    pad = -length % 8
    return b"BZh9" + (bits << pad).to_bytes((length + pad) // 8, "big")


@functools.lru_cache(maxsize=4)
def _bzip2_block(zeros: int) -> tuple[int, int, int]:
    """The bits of the one block bzip2 makes of ``zeros`` zero bytes, their length, its CRC."""
    stream = bz2.compress(bytes(zeros), 9)
    value, length = int.from_bytes(stream, "big"), len(stream) * 8
    for pad in range(8):  # the stream ends: magic (48 bits), CRC (32), 0..7 bits of padding
        end = length - pad - 80
        if (value >> (length - end - 48)) & ((1 << 48) - 1) == _BZ2_END:
            block_length = end - 32  # after the 4-byte header "BZh9"
            block = (value >> (length - end)) & ((1 << block_length) - 1)
            return block, block_length, (block >> (block_length - 80)) & 0xFFFFFFFF
    raise AssertionError("no bzip2 end-of-stream marker")


def zeros_crc(total: int) -> int:
    crc, chunk = 0, bytes(16 * MiB)
    for start in range(0, total, len(chunk)):
        crc = zlib.crc32(chunk[:min(len(chunk), total - start)], crc)
    return crc


def bzip2_bomb_zip(inflated: int = 2 * GiB, declared: int = 1 * MiB,
                   good: int = 2) -> bytes:
    """A good JPEG, a bzip2 member of ``inflated`` zeros whose directory says ``declared``
    bytes, more good JPEGs. zipfile would inflate all of it in one read() call."""
    bomb = ZipMember(b"bomb.jpg", method=BZIP2, size=declared, crc=zeros_crc(declared),
                     payload=bzip2_zeros(inflated))
    return build_zip(_around(bomb, good))


def lzma_bomb_zip(inflated: int = 1 * GiB, declared: int = 1 * MiB, good: int = 2) -> bytes:
    """As ``bzip2_bomb_zip`` with LZMA (streamed through the compressor: ~1.7 s per 256 MiB)."""
    encoder, header = _lzma_encoder(fast=True)
    chunk, parts = bytes(16 * MiB), [header]
    for start in range(0, inflated, len(chunk)):
        parts.append(encoder.compress(chunk[:min(len(chunk), inflated - start)]))
    parts.append(encoder.flush())
    bomb = ZipMember(b"bomb.jpg", method=LZMA, size=declared, crc=zeros_crc(declared),
                     payload=b"".join(parts))
    return build_zip(_around(bomb, good))


def _around(bomb: ZipMember, good: int) -> list[ZipMember]:
    return [ZipMember(b"before.jpg", tiny_jpeg(800)), bomb,
            *(ZipMember(f"after{i}.jpg".encode(), tiny_jpeg(801 + i)) for i in range(good))]


def _lzma_encoder(fast: bool = False) -> tuple[lzma.LZMACompressor, bytes]:
    """A raw LZMA1 encoder and the zip member header for it (version, properties size,
    properties: lc/lp/pb byte and dictionary size)."""
    lc, lp, pb, dict_size = 3, 0, 2, (64 << 10) if fast else (1 << 20)
    options = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
    if fast:
        options.update(mode=lzma.MODE_FAST, mf=lzma.MF_HC4, nice_len=273, depth=1)
    properties = struct.pack("<BL", (pb * 5 + lp) * 9 + lc, dict_size)
    encoder = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[options])
    return encoder, struct.pack("<BBH", 9, 20, len(properties)) + properties


def overlapping_zip(entries: int = 300, each: int = 24 * MiB) -> bytes:
    """``entries`` directory records, all pointing at one local header and its deflated
    kernel of ``each`` zeros: 38 KB that a naive reader inflates to entries x each bytes."""
    kernel = compressed(bytes(each), DEFLATED)
    crc = zeros_crc(each)
    first = ZipMember(b"000.jpg", size=each, crc=crc, payload=kernel)
    fields = _fields(first, len(kernel))
    out = _local_header(first, fields) + kernel
    directory = b"".join(
        _central_record(ZipMember(f"{i:03d}.jpg".encode()), fields, 0) for i in range(entries))
    return out + _end_records(directory, len(out), entries)


def many_entries_zip(entries: int = 300, each: int = 24 * MiB) -> bytes:
    """The same entries as ``overlapping_zip`` but honest: each has its own copy of the
    kernel, so only the archive's byte budget (not overlap detection) can stop it."""
    kernel = compressed(bytes(each), DEFLATED)
    crc = zeros_crc(each)
    return build_zip([ZipMember(f"{i:03d}.jpg".encode(), size=each, crc=crc, payload=kernel)
                      for i in range(entries)])


def _deflated_zeros_chunk(zeros: int) -> bytes:
    """Deflate blocks for ``zeros`` zero bytes that end on a full flush: they reference
    nothing before them, so copies of them can be concatenated inside any deflate stream."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    return deflate.compress(bytes(zeros)) + deflate.flush(zlib.Z_FULL_FLUSH)


def big_members_tar_gz(members: int = 2, each: int = 1 * GiB) -> bytes:
    """A tar.gz of ``members`` members of ``each`` zeros (declared sizes are true), then a
    good JPEG. Inflating it to skip the big ones is the cost (~1 s/GiB); building it repeats
    a deflated 16 MiB chunk instead of compressing (only the gzip CRC runs over the bytes)."""
    chunk_size = 16 * MiB
    chunk = _deflated_zeros_chunk(chunk_size)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc, total = [], 0, 0

    def add(data: bytes) -> None:
        nonlocal crc, total
        parts.append(deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH))
        crc, total = zlib.crc32(data, crc), total + len(data)

    zero_chunk = bytes(chunk_size)
    for i in range(members):
        info = tarfile.TarInfo(f"big{i}.jpg")
        info.size = each
        add(info.tobuf(tarfile.USTAR_FORMAT))
        full, rest = divmod(each + -each % 512, chunk_size)  # the data and its padding
        parts.append(chunk * full)
        for _ in range(full):
            crc = zlib.crc32(zero_chunk, crc)
        total += full * chunk_size
        add(bytes(rest))
    data = tiny_jpeg(900)
    info = tarfile.TarInfo("after.jpg")
    info.size = len(data)
    add(info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512) + bytes(1024))
    parts.append(deflate.flush())
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + b"".join(parts) + struct.pack("<LL", crc, total & 0xFFFFFFFF)


# -- images ------------------------------------------------------------------------------
def tiff_pages(pages: int = 40_000, size: tuple[int, int] = (64, 48)) -> bytes:
    """A little-endian TIFF: a ``size`` gray first page, then ``pages - 1`` 1x1 pages
    (114 bytes each). Pillow's ``n_frames`` on 40,000 of them took ~23 s."""
    width, height = size
    pixels = bytes((x * 4 + y * 2) % 256 for y in range(height) for x in range(width))
    pixels_at, first_ifd = 8, 8 + len(pixels)
    out = bytearray(b"II*\x00" + struct.pack("<L", first_ifd) + pixels)
    entry_count, ifd_size = 9, 2 + 9 * 12 + 4
    for page in range(pages):
        w, h, count = (width, height, len(pixels)) if page == 0 else (1, 1, 1)
        next_ifd = len(out) + ifd_size if page < pages - 1 else 0
        out += struct.pack("<H", entry_count)
        for tag, kind, value in ((256, 3, w), (257, 3, h), (258, 3, 8), (259, 3, 1),
                                 (262, 3, 1), (273, 4, pixels_at), (277, 3, 1), (278, 3, h),
                                 (279, 4, count)):
            out += struct.pack("<HHLL", tag, kind, 1, value)
        out += struct.pack("<L", next_ifd)
    return bytes(out)


def gif_frames(frames: int = 400_000) -> bytes:
    """A 1x1 GIF of ``frames`` frames (15 bytes each); Pillow walks them all for n_frames."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"
