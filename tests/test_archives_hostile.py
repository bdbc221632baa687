"""Archives that try to poison or stall a job, through ``iter_archive`` with explicit limits.

Every class of ``hostile.py``: good entries come out with the right bytes and a readable
name, bad ones fail alone with the right code, bombs stop inside their budget. Memory and CPU
of the bombs are measured in a fresh process (peak RSS growth over the RSS before expanding).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile

import cv2
import numpy as np
import pytest
import redis

import hostile
from conftest import REPO
from depthfleet.shared.archives import ArchiveEntry, ArchiveLimits, archive_kind, iter_archive
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.decode import FRAMES_COUNTED, decode_image, probe
from depthfleet.shared.names import TAR_LEGACY, ZIP_LEGACY, clean_text, readable_name
from hostile import GiB, MiB
from support import build_archive, jpeg2000, tiny_jpeg

LIMITS = ArchiveLimits(entry_bytes=8 * MiB, archive_bytes=1 * GiB, entries=10_000,
                       cpu_seconds=10)
BOMB_MEMORY = 32 * MiB  # peak RSS growth allowed expanding a bomb, entry_bytes 8 MiB (~14 seen)
CPU_MARGIN = 0.25  # seconds past cpu_seconds that an expansion may take to notice
CJSON_ROUND_TRIP = "return cjson.encode(cjson.decode(ARGV[1]))"


def entries(data: bytes, limits: ArchiveLimits = LIMITS) -> list[ArchiveEntry]:
    return list(iter_archive(io.BytesIO(data), limits))


def by_name(found: list[ArchiveEntry]) -> dict[str, ArchiveEntry]:
    return {entry.name: entry for entry in found}


def code(entry: ArchiveEntry) -> str | None:
    return entry.error.code if entry.error else None


# -- names -------------------------------------------------------------------------------
NAME_CASES = [(word, encoding, order) for word in hostile.WORDS
              for encoding, order in (("utf-8", ZIP_LEGACY), ("cp437", ZIP_LEGACY),
                                      ("cp1252", ZIP_LEGACY), ("latin-1", ZIP_LEGACY),
                                      ("cp932", ZIP_LEGACY), ("utf-8", TAR_LEGACY),
                                      ("cp1252", TAR_LEGACY), ("latin-1", TAR_LEGACY),
                                      ("cp932", TAR_LEGACY))
              if hostile.representable(word, encoding)]


@pytest.mark.parametrize(("word", "encoding", "order"), NAME_CASES,
                         ids=[f"{w}-{e}-{o[0]}" for w, e, o in NAME_CASES])
def test_readable_name_recovers_real_words(word, encoding, order):
    # Every word, in every encoding it exists in, under the zip and the tar order. (CP437 is
    # not a tar encoding: tars from DOS do not exist; Ærøskøbing has no ø in CP437 and the
    # Latin words no umlauts in CP932, so those pairs cannot occur.)
    assert readable_name(word.encode(encoding), order) == word


def test_readable_name_never_fails_and_never_makes_surrogates():
    samples = [bytes([b]) for b in range(256)] + [bytes(range(256)), b"\x81\x00\xff" * 50,
                                                  b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
    for raw in samples:
        for order in (ZIP_LEGACY, TAR_LEGACY, ()):
            name = readable_name(raw, order)
            assert isinstance(name, str) and name.encode("utf-8")  # no surrogates


def test_clean_text_recovers_escaped_bytes_and_replaces_other_surrogates():
    ordinary = ["photo.jpg", "Müller/façade.jpg", "写真/東京タワー.jpg", "emoji 😀.jpg", ""]
    for text in ordinary:
        assert clean_text(text) == text
    assert clean_text("M\udcfcller.jpg") == "Müller.jpg"  # tarfile's view of Latin-1 bytes
    assert clean_text("Fotos/\udcc4rger.jpg") == "Fotos/Ärger.jpg"
    assert clean_text("a\ud800b\udfffc") == "a\ufffdb\ufffdc"  # lone, not escaped bytes
    assert clean_text("\ud83d\ude00.jpg") == "😀.jpg"  # a pair is the character it encodes
    mixed = ("Café/".encode() + "写真.jpg".encode("cp932")).decode("utf-8", "surrogateescape")
    assert clean_text(mixed) == "Café/写真.jpg"  # each folder in its own encoding
    for text in ("M\udcfcller.jpg", "a\ud800b", mixed, "\udc80\udcff" * 10):
        once = clean_text(text)
        assert clean_text(once) == once and once.encode("utf-8")


# -- zip names ---------------------------------------------------------------------------
ZIP_NAME_CASES = [("cp437", False), ("cp1252", False), ("cp932", False), ("cp1252", True),
                  ("cp437", True), ("cp932", True)]


@pytest.mark.parametrize(("encoding", "flagged"), ZIP_NAME_CASES,
                         ids=[f"{e}{'-flagged' if f else ''}" for e, f in ZIP_NAME_CASES])
def test_zip_legacy_names_come_out_readable(encoding, flagged):
    words = [w for w in hostile.WORDS if hostile.representable(w, encoding)]
    data, expected = hostile.named_zip(words, encoding, utf8_flag=flagged)
    if flagged:  # the standard library loses the whole archive to one such name
        with pytest.raises(UnicodeDecodeError):
            zipfile.ZipFile(io.BytesIO(data))
    found = entries(data)
    assert [e.name for e in found] == words
    for entry in found:
        assert entry.error is None and entry.data == expected[entry.name]
        assert entry.raw_name == entry.name.encode(encoding)


def test_zip_unicode_path_extra_field_wins_when_its_crc_matches():
    data, expected = hostile.named_zip(list(hostile.WORDS), "cp437", unicode_extra=True)
    found = entries(data)
    assert [e.name for e in found] == list(hostile.WORDS)
    assert all(e.data == expected[e.name] for e in found)
    raw = "Müller.jpg".encode("cp437")
    stale = hostile.build_zip([hostile.ZipMember(
        raw, tiny_jpeg(1), extra=hostile.unicode_path_extra(raw, "Renamed.jpg", crc=12345))])
    assert [e.name for e in entries(stale)] == ["Müller.jpg"]  # the field describes another


def test_utf8_names_keep_no_raw_bytes():
    data, _ = hostile.named_zip(list(hostile.WORDS), "utf-8", utf8_flag=True)
    found = entries(data)
    assert [e.name for e in found] == list(hostile.WORDS)
    assert all(e.raw_name is None for e in found)


# -- tar names ---------------------------------------------------------------------------
TAR_NAME_CASES = [(enc, gz, pax) for enc in ("latin-1", "cp932") for gz in (False, True)
                  for pax in (False, True)]


@pytest.mark.parametrize(("encoding", "gz", "pax"), TAR_NAME_CASES,
                         ids=[f"{e}-{'gz' if g else 'plain'}-{'pax' if p else 'gnu'}"
                              for e, g, p in TAR_NAME_CASES])
def test_tar_legacy_names_come_out_readable(encoding, gz, pax):
    words = [w for w in hostile.WORDS if hostile.representable(w, encoding)]
    data, expected = hostile.named_tar(words, encoding, gz=gz, pax=pax)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:  # what tarfile alone gives
        assert all(any("\udc80" <= c <= "\udcff" for c in n) for n in archive.getnames())
    found = entries(data)
    assert [e.name for e in found] == words
    for entry in found:
        assert entry.error is None and entry.data == expected[entry.name]
        assert entry.raw_name == entry.name.encode(encoding)


# -- names into JSON and Redis's cjson ---------------------------------------------------
def _all_hostile_names() -> list[str]:
    names: list[str] = []
    for encoding in ("cp437", "cp1252", "cp932"):
        words = [w for w in hostile.WORDS if hostile.representable(w, encoding)]
        for flagged in (False, True):
            names += [e.name for e in entries(hostile.named_zip(words, encoding,
                                                                utf8_flag=flagged)[0])]
    for encoding in ("latin-1", "cp932"):
        words = [w for w in hostile.WORDS if hostile.representable(w, encoding)]
        names += [e.name for e in entries(hostile.named_tar(words, encoding, pax=True)[0])]
    weird = [b"caf\xe9/\xff\xfe.jpg", bytes(range(128, 256)), b"\x1b[31mred\x07.jpg"]
    names += [e.name for e in entries(hostile.build_zip(
        [hostile.ZipMember(raw, tiny_jpeg(i)) for i, raw in enumerate(weird)]))]
    names += [e.name for e in entries(hostile.damaged_zip()[0])]
    return names


def test_every_name_survives_json_and_redis_cjson():
    names = _all_hostile_names()
    assert len(names) > 40
    for name in names:
        assert clean_text(name) == name
        json.dumps(name, ensure_ascii=False).encode("utf-8")  # raises on a surrogate
    client = redis.Redis(db=15)
    document = json.dumps({"names": names})
    assert json.loads(client.eval(CJSON_ROUND_TRIP, 0, document)) == {"names": names}
    # The check can fail: what tarfile hands out unaided is refused by cjson.
    with tarfile.open(fileobj=io.BytesIO(hostile.named_tar(["Müller.jpg"], "latin-1")[0])) \
            as archive:
        raw_names = archive.getnames()
    with pytest.raises(redis.ResponseError):
        client.eval(CJSON_ROUND_TRIP, 0, json.dumps({"names": raw_names}))


# -- damaged members fail alone -----------------------------------------------------------
def test_damaged_zip_members_fail_alone_with_their_codes():
    data, expected = hostile.damaged_zip()
    found = entries(data, ArchiveLimits(1 * MiB, 1 * GiB, 1000, 10))
    assert [e.name for e in found] == list(_stored_order(data))
    for entry in found:
        want = expected[entry.name]
        if isinstance(want, bytes):
            assert entry.error is None and entry.data == want, entry.error
        else:
            assert code(entry) == want and entry.data is None, (entry.name, entry.error)
    messages = {e.name: e.error.message for e in found if e.error}
    assert "CRC" in messages["bad/bad_crc.jpg"]
    assert "declares" in messages["bad/size_understated.jpg"]
    assert "overlaps" in messages["bad/runs_over_next.jpg"]


def _stored_order(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [info.filename for info in archive.infolist()]


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_zip_without_a_readable_directory_is_refused_whole(cut):
    data, _ = hostile.damaged_zip()
    with pytest.raises(InputError) as raised:
        entries(data[:int(len(data) * cut)])
    assert raised.value.code == "corrupt_archive" and raised.value.status == 422


def test_zip_directory_damaged_midway_keeps_the_entries_before():
    members = [hostile.ZipMember(f"{i}.jpg".encode(), tiny_jpeg(i)) for i in range(5)]
    data = bytearray(hostile.build_zip(members))
    third = [i for i in range(len(data)) if data[i:i + 4] == b"PK\x01\x02"][2]
    data[third:third + 4] = b"XXXX"
    found = entries(bytes(data))
    assert [e.name for e in found] == ["0.jpg", "1.jpg", "(rest of archive)"]
    assert found[0].data == tiny_jpeg(0) and code(found[2]) == "corrupt_archive"


def test_every_method_is_read_offsets_may_be_shifted_and_zip64_is_understood():
    # Stored, deflate, bzip2 and LZMA members; then the same zip after a leading stub the
    # directory does not count (its offsets are relative to the zip proper, as after
    # ``zip -A`` or concatenation): the stub's size is found from the end records; then
    # with zip64 records (sizes and offsets in extra fields, zip64 end records).
    members = [hostile.ZipMember(f"{i}.jpg".encode(), tiny_jpeg(i), method)
               for i, method in enumerate((hostile.STORED, hostile.DEFLATED, hostile.BZIP2,
                                           hostile.LZMA))]
    want = [(f"{i}.jpg", tiny_jpeg(i)) for i in range(4)]
    assert [(e.name, e.data) for e in entries(hostile.build_zip(members))] == want
    stub = b"PK\x03\x04" + bytes(4092)
    assert [(e.name, e.data) for e in entries(hostile.build_zip(members, prefix=stub))] == want
    zip64 = hostile.build_zip(members, zip64=True)
    with zipfile.ZipFile(io.BytesIO(zip64)) as archive:  # the generator writes real zip64
        assert [archive.read(f"{i}.jpg") for i in range(4)] == [d for _, d in want]
    assert [(e.name, e.data) for e in entries(zip64)] == want


TAR_DAMAGE = [(False, "garbage"), (False, "truncated"), (True, "garbage"), (True, "truncated"),
              (True, "cut_gzip")]


@pytest.mark.parametrize(("gz", "how"), TAR_DAMAGE, ids=[f"{'gz' if g else 'tar'}-{h}"
                                                          for g, h in TAR_DAMAGE])
def test_tar_damaged_midway_yields_the_entries_before_then_one_error(gz, how):
    data, names = hostile.tar_damaged_midway(gz, how)
    found = entries(data)
    good, last = found[:-1], found[-1]
    assert all(e.error is None for e in good) and code(last) == "corrupt_archive"
    assert [e.name for e in good] == names[:len(good)]
    assert all(e.data == tiny_jpeg(700 + i, (96, 128)) for i, e in enumerate(good))
    if how != "cut_gzip":
        assert len(good) == 3
    assert len(good) >= 1


@pytest.mark.parametrize("kind", ["pax", "longname"])
@pytest.mark.parametrize("gz", [False, True])
def test_tar_header_declaring_gigabytes_is_not_read_whole(kind, gz):
    found = entries(hostile.tar_header_bomb(kind, 2 * GiB, gz))
    assert [(e.name, code(e)) for e in found] == [("good.jpg", None),
                                                  ("(rest of archive)", "corrupt_archive")]
    assert found[0].data == tiny_jpeg(950) and "header of more than" in found[1].error.message


def test_gzip_that_holds_no_tar_is_not_an_image():
    """Not an archive error: the file is no archive at all, whatever its name says."""
    data = hostile.gzip_not_tar()
    assert archive_kind(data) is None
    assert archive_kind(gzip.compress(tiny_jpeg(5))) is None
    with pytest.raises(InputError) as raised:
        entries(data)
    assert raised.value.code == "not_an_image" and raised.value.status == 415
    assert "gzip data but not a tar archive" in raised.value.message


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_jpeg2000_entries_are_images_like_any_other(kind):
    """Entries are sniffed by content: JP2 and J2K need no list of names to be accepted."""
    members = {"masters/a.jp2": jpeg2000("jp2", (64, 48)), "masters/b.j2k": jpeg2000("j2k")}
    found = by_name(entries(build_archive(members, kind)))
    for name, data in members.items():
        assert found[name].data == data
        assert probe(data, 10**8).format == "JPEG2000"


def test_tars_are_told_by_their_header_gzipped_or_not():
    """ustar and old v7 headers, and a gzip whose own header (a long file name) is long."""
    tar = build_archive({"a.jpg": tiny_jpeg(6)}, "tar")
    v7 = io.BytesIO()
    with tarfile.open(fileobj=v7, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("b.jpg")
        info.size = len(tiny_jpeg(7))
        archive.addfile(info, io.BytesIO(tiny_jpeg(7)))
    old = v7.getvalue()[:257] + bytes(255) + v7.getvalue()[512:]  # no magic, as v7 wrote
    old = old[:148] + b"%06o\0 " % (sum(old[:148]) + 256 + sum(old[156:512])) + old[156:]
    named = io.BytesIO()
    with gzip.GzipFile("x" * 2000, "wb", fileobj=named) as fh:
        fh.write(tar)
    assert [archive_kind(d) for d in (tar, old, gzip.compress(old), named.getvalue())] == \
        ["tar", "tar", "tar.gz", "tar.gz"]
    assert [e.name for e in entries(old)] == ["b.jpg"]


# -- bombs: memory and CPU measured in a fresh process ------------------------------------
_MEASURE = """
import hashlib, io, json, sys, time
from depthfleet.shared.archives import ArchiveLimits, iter_archive

def status_kb(field):  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's)
    return int(next(line.split()[1] for line in open("/proc/self/status")
                    if line.startswith(field + ":")))

data = open(sys.argv[1], "rb").read()
limits = ArchiveLimits(*json.loads(sys.argv[2]))
rss_kb = status_kb("VmRSS")
found, cpu, expanding = [], 0.0, iter_archive(io.BytesIO(data), limits)
while True:
    start = time.thread_time()  # CPU inside iter_archive only, as its budget counts it
    entry = next(expanding, None)
    cpu += time.thread_time() - start
    if entry is None:
        break
    found.append([entry.name, entry.error and entry.error.code,
                  entry.error and entry.error.message,
                  entry.data and hashlib.sha256(entry.data).hexdigest()])
    del entry
growth = (status_kb("VmHWM") - rss_kb) * 1024
print(json.dumps({"entries": found, "cpu": cpu, "growth": growth}))
"""


def measured(tmp_path, data: bytes, limits: ArchiveLimits) -> dict:
    """Expand ``data`` in a new process: its entries, CPU seconds, peak RSS growth (bytes)."""
    path = tmp_path / "archive.bin"
    path.write_bytes(data)
    limits_json = json.dumps([limits.entry_bytes, limits.archive_bytes, limits.entries,
                              limits.cpu_seconds])
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path), limits_json],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", ["bzip2", "lzma"])
def test_compression_bomb_stops_one_byte_past_its_declared_size(tmp_path, kind):
    # bzip2 at full size (2 GiB of zeros in 5 KB); LZMA at 256 MiB (the full 1 GiB takes
    # ~7 s to build and is the same class: nothing past declared + 1 byte is inflated).
    if kind == "bzip2":
        data = hostile.bzip2_bomb_zip(2 * GiB, declared=8 * MiB)
    else:
        data = hostile.lzma_bomb_zip(256 * MiB, declared=8 * MiB)
    limits = ArchiveLimits(8 * MiB, 1 * GiB, 1000, 5)
    result = measured(tmp_path, data, limits)
    names = [e[0] for e in result["entries"]]
    assert names == ["before.jpg", "bomb.jpg", "after0.jpg", "after1.jpg"]
    _, error, message, _ = result["entries"][1]
    assert error == "corrupt_archive" and "8,388,608 bytes its header declares" in message
    assert result["entries"][0][3] == sha(tiny_jpeg(800))
    assert result["entries"][3][3] == sha(tiny_jpeg(802))
    assert result["growth"] < BOMB_MEMORY, result["growth"]
    assert result["cpu"] < 1.0, result["cpu"]


def test_overlapping_entries_fail_without_being_inflated():
    data = hostile.overlapping_zip()  # full size: 300 x 24 MiB = 7 GiB from ~40 KB
    assert len(data) < 64 << 10
    start = time.thread_time()
    found = entries(data, ArchiveLimits(32 * MiB, 100 * GiB, 1000, 30))
    assert time.thread_time() - start < 1.0
    assert len(found) == 300
    assert all(code(e) == "corrupt_archive" and "overlaps" in e.error.message for e in found)


def test_honest_entries_stop_at_the_archive_byte_budget(tmp_path):
    data = hostile.many_entries_zip(40, 8 * MiB)
    result = measured(tmp_path, data, ArchiveLimits(8 * MiB, 64 * MiB, 1000, 10))
    found = result["entries"]
    assert [e[3] for e in found[:-1]] == [sha(bytes(8 * MiB))] * 8
    assert found[-1][:2] == ["(rest of archive)", "archive_limit"]
    assert "stopped after 8 entries" in found[-1][2] and "67,108,864" in found[-1][2] \
        and "archive_bytes" in found[-1][2]
    assert result["growth"] < BOMB_MEMORY, result["growth"]


def test_cpu_budget_stops_a_long_expansion(tmp_path):
    data = hostile.many_entries_zip()  # full size: 300 x 24 MiB, ~10 s of inflating
    budget = 0.5
    result = measured(tmp_path, data, ArchiveLimits(32 * MiB, 100 * GiB, 1000, budget))
    last = result["entries"][-1]
    assert last[1] == "archive_limit" and "cpu_seconds" in last[2], last
    assert 0 < len(result["entries"]) - 1 < 300
    assert result["cpu"] < budget + CPU_MARGIN, result["cpu"]
    assert result["growth"] < 2 * BOMB_MEMORY, result["growth"]


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_entry_budget_counts_records(kind):
    members = {f"{i:02d}.jpg": tiny_jpeg(i) for i in range(30)}
    data = _plain_archive(members, kind)
    found = entries(data, ArchiveLimits(8 * MiB, 1 * GiB, 10, 10))
    assert [e.name for e in found[:-1]] == list(members)[:10]
    assert code(found[-1]) == "archive_limit" and "more than 10 entries" in found[-1].error.message
    exact = entries(_plain_archive(dict(list(members.items())[:10]), kind),
                    ArchiveLimits(8 * MiB, 1 * GiB, 10, 10))
    assert len(exact) == 10 and all(e.error is None for e in exact)


def _plain_archive(members: dict[str, bytes], kind: str) -> bytes:
    if kind == "zip":
        return hostile.build_zip([hostile.ZipMember(n.encode(), d) for n, d in members.items()])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_gz_members_skipped_as_too_large_still_count(tmp_path):
    data = hostile.big_members_tar_gz(2, 128 * MiB)  # the class of 2 x 1 GiB, smaller
    limits = ArchiveLimits(8 * MiB, 1 * GiB, 1000, 10)
    result = measured(tmp_path, data, limits)
    assert [e[:2] for e in result["entries"]] == [
        ["big0.jpg", "file_too_large"], ["big1.jpg", "file_too_large"], ["after.jpg", None]]
    assert result["entries"][2][3] == sha(tiny_jpeg(900))
    assert result["growth"] < BOMB_MEMORY, result["growth"]
    tight = entries(data, ArchiveLimits(8 * MiB, 200 * MiB, 1000, 10))
    assert [(e.name, code(e)) for e in tight] == [
        ("big0.jpg", "file_too_large"), ("big1.jpg", "file_too_large"),
        ("(rest of archive)", "archive_limit")]
    assert "archive_bytes" in tight[-1].error.message


def test_plain_tar_skips_a_huge_member_by_seeking(tmp_path):
    path = tmp_path / "sparse.tar"
    big = tarfile.TarInfo("huge.jpg")
    big.size = 4 * GiB
    after = tiny_jpeg(901)
    small = tarfile.TarInfo("after.jpg")
    small.size = len(after)
    with open(path, "wb") as fh:  # a sparse file: the 4 GiB are a hole on disk
        fh.write(big.tobuf(tarfile.GNU_FORMAT))
        fh.seek(4 * GiB, io.SEEK_CUR)
        fh.write(small.tobuf(tarfile.GNU_FORMAT) + after + bytes(-len(after) % 512 + 1024))
    start = time.thread_time()
    with open(path, "rb") as fh:
        found = list(iter_archive(fh, ArchiveLimits(8 * MiB, 1 * MiB, 1000, 10)))
    assert time.thread_time() - start < 0.5
    assert [(e.name, code(e)) for e in found] == [("huge.jpg", "file_too_large"),
                                                  ("after.jpg", None)]
    assert found[1].data == after


# -- images whose cost grows with their page count ----------------------------------------
def test_probe_cost_does_not_grow_with_tiff_pages():
    small, many = hostile.tiff_pages(3), hostile.tiff_pages(40_000)
    assert probe(small, 10**8).frames == 3
    start = time.perf_counter()
    info = probe(many, 10**8)
    rgb = decode_image(many, 10**8)
    elapsed = time.perf_counter() - start
    assert (info.width, info.height, info.frames) == (64, 48, FRAMES_COUNTED)
    assert elapsed < 1.0, elapsed  # before: Pillow's n_frames alone took ~23 s on this file
    official = cv2.imdecode(np.frombuffer(many, np.uint8), cv2.IMREAD_COLOR)  # page 0
    np.testing.assert_array_equal(rgb, official[:, :, ::-1])


def test_probe_cost_does_not_grow_with_gif_frames():
    assert probe(hostile.gif_frames(3), 10**8).frames == 3
    start = time.perf_counter()
    info = probe(hostile.gif_frames(), 10**8)
    assert time.perf_counter() - start < 0.5
    assert info.frames == FRAMES_COUNTED
