"""Crafted archives: nothing is written outside the slot, sizes are capped while reading,
and a cut-off download is told apart from a hostile one."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.model.bundle import BundleError, extract_bundle

MiB = 1 << 20


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _craft(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
           fmt: int = tarfile.GNU_FORMAT) -> Path:
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"hello") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


class _Zeros(io.RawIOBase):
    """``size`` zero bytes without holding them: a huge member costs no memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _huge(path: Path, size: int) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


UNSAFE: dict[str, Callable[[], list]] = {
    "parent": lambda: [_file("manifest.json"), _file("../x")],
    "absolute": lambda: [_file("/etc/x")],
    "nested": lambda: [_file("sub/x")],
    "dot-slash": lambda: [_file("./x")],
    "hidden": lambda: [_file(".x")],
    "symlink": lambda: [_special("model.onnx", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink-escape": lambda: [_special("link", tarfile.SYMTYPE, "../.."), _file("link")],
    "hardlink": lambda: [_special("model.onnx", tarfile.LNKTYPE, "/etc/passwd")],
    "char-device": lambda: [_special("null", tarfile.CHRTYPE)],
    "block-device": lambda: [_special("sda", tarfile.BLKTYPE)],
    "fifo": lambda: [_special("pipe", tarfile.FIFOTYPE)],
    "directory": lambda: [_special("dir", tarfile.DIRTYPE)],
    "duplicate": lambda: [_file("model.onnx"), _file("model.onnx", b"evil")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_entries_are_refused_and_nothing_is_left(tmp_path, case):
    archive = _craft(tmp_path / "evil.tar.gz", UNSAFE[case]())
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)
    with pytest.raises(BundleError) as caught:
        extract_bundle(archive, work / "slot", max_total_bytes=MiB, max_file_bytes=MiB)
    assert caught.value.reason == "unsafe_entry", caught.value
    assert caught.value.retryable is False
    assert _tree(tmp_path) == before  # the slot it created is gone too
    assert not (tmp_path.parent / "x").exists()


def test_entries_before_the_bad_one_are_removed_from_an_existing_slot(tmp_path):
    archive = _craft(tmp_path / "evil.tar.gz", [_file("a.txt"), _file("../x")])
    slot = tmp_path / "slot"
    slot.mkdir()
    with pytest.raises(BundleError):
        extract_bundle(archive, slot, max_total_bytes=MiB, max_file_bytes=MiB)
    assert slot.is_dir() and not any(slot.iterdir())


def test_a_huge_file_is_refused_before_it_is_written(tmp_path):
    archive = _huge(tmp_path / "bomb.tar.gz", 64 * MiB)
    assert archive.stat().st_size < MiB  # a gzip bomb: tiny download, big unpack
    with pytest.raises(BundleError) as caught:
        extract_bundle(archive, tmp_path / "slot", max_total_bytes=8 * MiB,
                       max_file_bytes=4 * MiB)
    assert caught.value.reason == "too_large"
    assert not (tmp_path / "slot").exists()


def test_files_adding_up_past_the_total_cap(tmp_path):
    blob = bytes(600 * 1024)
    archive = _craft(tmp_path / "big.tar.gz", [_file("a.bin", blob), _file("b.bin", blob)])
    with pytest.raises(BundleError) as caught:
        extract_bundle(archive, tmp_path / "slot", max_total_bytes=MiB, max_file_bytes=MiB)
    assert caught.value.reason == "too_large"
    assert "add up" in str(caught.value)
    assert not (tmp_path / "slot").exists()


def test_a_huge_pax_header_is_capped_too(tmp_path):
    info, data = _file("a.txt")
    info.pax_headers = {"comment": "x" * (4 * MiB)}
    archive = _craft(tmp_path / "pax.tar.gz", [(info, data)], fmt=tarfile.PAX_FORMAT)
    with pytest.raises(BundleError) as caught:
        extract_bundle(archive, tmp_path / "slot", max_total_bytes=MiB, max_file_bytes=MiB)
    assert caught.value.reason == "too_large"


def test_too_many_entries(tmp_path):
    archive = _craft(tmp_path / "many.tar.gz", [_file(f"f{i}") for i in range(100)])
    with pytest.raises(BundleError) as caught:
        extract_bundle(archive, tmp_path / "slot", max_total_bytes=MiB, max_file_bytes=MiB)
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize("keep", [0.999, 0.9, 0.5, 0.1, 0.0005])
def test_a_truncated_download(signed, keep):
    data = signed.bundle.read_bytes()
    cut = signed.tmp / "cut.tar.gz"
    cut.write_bytes(data[:max(3, int(len(data) * keep))])
    with pytest.raises(BundleError) as caught:
        extract_bundle(cut, signed.tmp / "slot")
    assert caught.value.reason == "truncated", caught.value
    assert not (signed.tmp / "slot").exists()


def test_trailing_gzip_corruption_is_caught(signed):
    data = bytearray(signed.bundle.read_bytes())
    data[-6] ^= 0xFF  # the CRC in the gzip trailer
    bad = signed.tmp / "crc.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError) as caught:
        extract_bundle(bad, signed.tmp / "slot")
    assert caught.value.reason == "truncated"


def test_not_a_gzip_file(tmp_path):
    bogus = tmp_path / "bundle.tar.gz"
    bogus.write_text("<html>403 Forbidden</html>")
    with pytest.raises(BundleError) as caught:
        extract_bundle(bogus, tmp_path / "slot")
    assert caught.value.reason == "malformed"


def test_the_destination_must_be_empty(signed):
    slot = signed.tmp / "slot"
    slot.mkdir()
    (slot / "old").write_text("x")
    with pytest.raises(OSError, match="not empty"):
        extract_bundle(signed.bundle, slot)
    assert (slot / "old").read_text() == "x"


def test_a_missing_archive_is_not_a_bundle_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        extract_bundle(tmp_path / "gone.tar.gz", tmp_path / "slot")
    assert not (tmp_path / "slot").exists()
