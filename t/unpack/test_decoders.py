# tests: amavisd/unpack/__init__.py amavisd/unpack/decoders.py amavisd/unpack/context.py
"""The decoder loop and decoders (spec/pipeline.md 6.4-6.5) on real and hostile archives."""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from amavisd.message import Message
from amavisd.unpack import DecodeLimits, decode_message
from amavisd.unpack.decoders import find_program

CLAM = Path("/usr/share/clamav-testfiles")


def message_with(tmp_path: Path, data: bytes, name: str, extra: str = "") -> Message:
    b64 = base64.encodebytes(data).decode()
    text = ("From: a@example.com\nMIME-Version: 1.0\n"
            "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\n"
            f"see attachment{extra}\n--B\nContent-Type: application/octet-stream\n"
            f"Content-Transfer-Encoding: base64\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\n\n{b64}\n--B--\n")
    tmp_path.mkdir(parents=True, exist_ok=True)
    spool = tmp_path / "email.txt"
    spool.write_text(text)
    return Message(sender="", sender_quoted="", recipients=[], spool_path=spool,
                   size=len(text), log_id="1")


def decode(tmp_path: Path, data: bytes, name: str, **kw):
    msg = message_with(tmp_path, data, name, kw.pop("extra", ""))
    parts = tmp_path / "parts"
    return decode_message(msg, parts, kw.pop("limits", DecodeLimits()), **kw), parts


# (file, depth of clam.exe: MIME leaf is 1) -- or the reason this machine cannot decode it
CLAM_ARCHIVES = [
    ("clam.zip", 2, None), ("clam.7z", 2, None), ("clam.cab", 2, None),
    ("clam.tar.gz", 3, None), ("clam.exe.bz2", 2, None), ("clam.bz2.zip", 2, None),
    ("clam.bin-be.cpio", 2, None), ("clam.bin-le.cpio", 2, None),
    ("clam.newc.cpio", 2, None), ("clam.odc.cpio", 2, None), ("clam.exe", 1, None),
    ("clam.arj", 2, None if find_program("arj", "unarj") else
     "no arj/unarj program and libarchive has no ARJ reader"),
    # clam.d64.zip, clam.impl.zip and clam.tnef have their own tests below: their
    # members cannot be decoded (as with amavis's Archive::Zip and without tnef)
]


@pytest.mark.parametrize("fname,depth,skip", CLAM_ARCHIVES)
def test_clamav_testfiles_yield_clam_exe(tmp_path, fname, depth, skip):
    if not (CLAM / fname).exists():
        pytest.skip("clamav-testfiles not installed")
    if skip:
        pytest.skip(skip)                  # a program this machine lacks (CI installs it)
    tree, parts = decode(tmp_path, (CLAM / fname).read_bytes(), fname)
    exes = [p for p in tree.walk() if "exe" in p.type_short]
    assert exes, [(p.base_name, p.type_long) for p in tree.walk()]
    exe = exes[0]
    assert exe.depth == depth
    assert (parts / exe.base_name).read_bytes() == (CLAM / "clam.exe").read_bytes()
    assert tree.hold is None
    if depth > 1:
        assert exe.declared_names[0].lower().endswith("clam.exe")


@pytest.mark.parametrize("fname", ["clam.d64.zip", "clam.impl.zip"])
def test_unsupported_zip_method_marked_U(tmp_path, fname):
    """deflate64 and imploded members: neither zipfile nor libarchive 3.6 reads them;
    the member is undecipherable (U), as amavis's Archive::Zip marks it."""
    if not (CLAM / fname).exists():
        pytest.skip("clamav-testfiles not installed")
    tree, _ = decode(tmp_path, (CLAM / fname).read_bytes(), fname)
    member = [p for p in tree.walk()
              if [n.lower() for n in p.declared_names] == ["clam.exe"]][0]
    assert member.attributes == {"U"} and member.path is None
    assert tree.any_undecipherable


def test_tnef_stays_one_undecoded_part(tmp_path):
    """No TNEF decoder (amavis needs the tnef program or Convert::TNEF): the part is
    typed and kept whole; its contents are not unpacked."""
    if not (CLAM / "clam.tnef").exists():
        pytest.skip("clamav-testfiles not installed")
    tree, parts = decode(tmp_path, (CLAM / "clam.tnef").read_bytes(), "winmail.dat")
    (tnef,) = [p for p in tree.leaves() if p.type_short == ["tnef"]]
    assert tnef.decoded_by is None and not tnef.children
    assert (parts / tnef.base_name).read_bytes() == (CLAM / "clam.tnef").read_bytes()


def test_original_deleted_after_unpacking(tmp_path):
    """Status 1: the archive file goes, its part stays in the tree (section 6.4)."""
    tree, parts = decode(tmp_path, (CLAM / "clam.zip").read_bytes(), "clam.zip")
    zpart = [p for p in tree.walk() if p.type_short == ["zip"]][0]
    assert zpart.path is None and not (parts / zpart.base_name).exists()
    assert zpart.decoded_by == "do_unzip"


def zip_of(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_nested_zip_bomb_hits_maxlevels(tmp_path):
    data = b"payload"
    for i in range(20):
        data = zip_of({f"level{i}.zip": data})
    tree, _ = decode(tmp_path, data, "nest.zip")
    assert tree.hold == "Maximum decoding depth (14) exceeded"
    assert tree.over_levels
    assert max(p.depth for p in tree.walk()) == 15


def test_ratio_zip_bomb_stops_at_quota(tmp_path):
    """A 200 MB member in a ~200 KB zip: the quota hold, and nothing written beyond it."""
    big = zip_of({"zeros.bin": b"\0" * (200 * 1024 * 1024)})
    bomb = zip_of({f"b{i}.zip": big for i in range(3)}, zipfile.ZIP_STORED)
    tree, parts = decode(tmp_path, bomb, "bomb.zip")
    assert tree.hold is not None and tree.hold.startswith("Exceeded storage quota ")
    assert "bytes by do_unzip" in tree.hold
    assert tree.over_levels
    size = len((tmp_path / "email.txt").read_bytes())
    quota = DecodeLimits().quota(size)
    on_disk = sum(f.stat().st_size for f in parts.iterdir())
    assert on_disk <= quota
    assert tree.bytes_extracted <= quota


def test_maxfiles_in_archive(tmp_path):
    data = zip_of({f"f{i}.txt": b"x" for i in range(30)})
    tree, _ = decode(tmp_path, data, "many.zip", limits=DecodeLimits(max_files=10))
    assert tree.hold == "Maximum number of files (10) exceeded"
    assert tree.over_levels


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_zip_traversal_names_never_used(tmp_path):
    """'../' and absolute member names stay names: nothing appears outside parts/."""
    work = tmp_path / "work"
    data = zip_of({"../../escape.txt": b"a", "/tmp/abs-escape.txt": b"b", "ok/../../x": b"c"})
    before = snapshot(tmp_path)
    tree, parts = decode(work, data, "evil.zip")
    created = snapshot(tmp_path) - before
    assert all(c.startswith("work") for c in created)
    assert {f.name for f in parts.iterdir()} <= {p.base_name for p in tree.walk()}
    names = [n for p in tree.walk() for n in p.declared_names]
    assert "../../escape.txt" in names and "/tmp/abs-escape.txt" in names
    assert not Path("/tmp/abs-escape.txt").exists()


def test_tar_links_and_traversal(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind in (("../up.txt", tarfile.REGTYPE), ("/etc/abs", tarfile.REGTYPE),
                           ("link", tarfile.SYMTYPE), ("dir", tarfile.DIRTYPE),
                           ("fifo", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            data = b"data" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    work = tmp_path / "work"
    before = snapshot(tmp_path)
    tree, parts = decode(work, buf.getvalue(), "evil.tar")
    assert all(c.startswith("work") for c in snapshot(tmp_path) - before)
    attrs = {p.declared_names[0]: p.attributes for p in tree.walk()
             if p.declared_names and p.depth == 2}
    assert attrs == {"../up.txt": set(), "/etc/abs": set(), "link": {"L"}, "dir": {"D"},
                     "fifo": {"S"}}
    assert not any(f.is_symlink() for f in parts.iterdir())


def encrypted_zip() -> bytes:
    """zipfile cannot encrypt: set the 'encrypted' flag bit on one member by hand."""
    raw = bytearray(zip_of({"secret.exe": b"MZ" + b"\0" * 100, "plain.txt": b"hello"},
                           zipfile.ZIP_STORED))
    lh = raw.find(b"PK\x03\x04" + bytes(4))
    cd = raw.find(b"PK\x01\x02")
    raw[lh + 6] |= 1            # local header general purpose flags
    raw[cd + 8] |= 1            # central directory general purpose flags
    return bytes(raw)


def test_encrypted_zip_member_U_and_C(tmp_path):
    tree, parts = decode(tmp_path, encrypted_zip(), "enc.zip")
    secret = [p for p in tree.walk() if p.declared_names == ["secret.exe"]][0]
    assert secret.attributes == {"U", "C"} and secret.path is None
    plain = [p for p in tree.walk() if p.declared_names == ["plain.txt"]][0]
    assert (parts / plain.base_name).read_bytes() == b"hello"
    assert tree.any_encrypted and tree.any_undecipherable
    zpart = [p for p in tree.walk() if p.type_short == ["zip"]][0]
    assert zpart.path is not None         # encrypted members: archive retained (status 2)


def test_truncated_zip_left_unpacked(tmp_path, caplog):
    data = (CLAM / "clam.zip").read_bytes() if (CLAM / "clam.zip").exists() else \
        zip_of({"a.txt": b"hello" * 100})
    caplog.set_level(logging.WARNING, logger="amavisd.unpack")
    tree, parts = decode(tmp_path, data[: len(data) // 2], "cut.zip")
    zpart = [p for p in tree.walk() if p.type_short == ["zip"]][0]
    assert zpart.children == [] and zpart.path is not None
    assert zpart.attributes == set()        # Archive::Zip: "not a zip", no U
    assert f"Decoding of {zpart.base_name} (Zip archive data" in caplog.text
    assert "failed, leaving it unpacked" in caplog.text
    assert tree.hold is None


def test_time_limit_is_a_hold(tmp_path):
    ticks = iter(range(0, 10_000, 5))
    data = zip_of({f"f{i}.txt": b"x" for i in range(10)})
    tree, _ = decode(tmp_path, data, "slow.zip", limits=DecodeLimits(time_limit=12),
                     clock=lambda: next(ticks))
    assert tree.hold == "Decoding time limit (12 s) exceeded"


def test_gzip_names_and_keep_original_for_text(tmp_path):
    """do_uncompress names: '.tgz' -> '.tar'; a text type_long keeps the original."""
    import gzip
    tree, _ = decode(tmp_path, gzip.compress(b"hello"), "notes.tgz")
    gz = [p for p in tree.walk() if p.type_short == ["gz"]][0]
    assert gz.children[0].declared_names[-1] == "notes.tar"
    assert gz.path is None


def test_injected_typer(tmp_path):
    """The typer is a parameter: a stub needs no libmagic."""
    seen = []

    def typer(path: Path) -> str:
        seen.append(path.name)
        return "data"

    tree, _ = decode(tmp_path, b"abc", "x.bin", typer=typer)
    assert sorted(seen) == ["p001", "p002"]
    assert all(p.type_short == ["dat"] for p in tree.leaves())


def test_no_part_files_left_behind_on_bomb(tmp_path):
    """Temp names of the MIME walk never remain."""
    tree, parts = decode(tmp_path, zip_of({"a": b"b"}), "a.zip")
    assert not any(f.name.startswith(".") for f in parts.iterdir())
    shutil.rmtree(parts)
    assert os.path.exists(tmp_path / "email.txt")


def test_gzip_bomb_charged_chunk_by_chunk(tmp_path):
    """No declared size to pre-check: every chunk is charged before it is written."""
    import gzip
    bomb = gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)
    tree, parts = decode(tmp_path, bomb, "bomb.gz")
    assert tree.hold is not None and "bytes by do_gunzip; last chunk 65536 bytes" in tree.hold
    quota = DecodeLimits().quota(len((tmp_path / "email.txt").read_bytes()))
    assert sum(f.stat().st_size for f in parts.iterdir()) <= quota
