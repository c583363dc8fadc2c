"""Sources: every accepted input becomes one small virtual folder of named byte blobs.

A folder, a file, a ``.zip`` (read in memory, never extracted), a ``(filename, bytes)`` pair,
an uploaded-file object or a list of those is resolved once into a ``Source`` whose entries
read their bytes lazily and at most once. This module owns the safety limits: file and
archive sizes, compression ratios, entry paths, and which files may be read at all (regular
files only: a character device or a FIFO as input would read forever or hang).
"""
from __future__ import annotations

import io
import lzma
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..dataset import DataValidationError


#: Largest input file (or archive) accepted, in bytes.
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: ml-25m's ratings.csv is 678 MB


#: Largest total of the uncompressed sizes of an archive's members.
DEFAULT_MAX_UNZIPPED_BYTES = 2 << 30  # 2 GiB: all of ml-25m unpacks to about 1.2 GB


#: Largest compression ratio of an archive (and of any member over 1 MiB); text compresses ~5-10x.
MAX_COMPRESSION_RATIO = 100.0


_IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


_DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".dat", ".data")


@dataclass(frozen=True)
class _Entry:
    name: str  # path relative to the root (posix), after stripping a single top folder
    display: str  # how error messages name it, e.g. "ml-100k.zip:ml-100k/u.data"
    size: int
    read: Callable[[], bytes]

    @property
    def base(self) -> str:
        return PurePosixPath(self.name).name.lower()


_MEMO_MAX_BYTES = 64 << 20


def _memo(read: Callable[[], bytes]) -> Callable[[], bytes]:
    """Read once per ``load`` call (sniffing and parsing may look at the same file).

    Files over 64 MiB are not kept: reading them twice is cheaper than holding them while
    the parsed frames are built (peak memory).
    """
    box: list[bytes] = []

    def once() -> bytes:
        if box:
            return box[0]
        data = read()
        if len(data) <= _MEMO_MAX_BYTES:
            box.append(data)
        return data

    return once


@dataclass
class _Source:
    label: str  # a name for the dataset: folder name, archive or file stem
    entries: list[_Entry]
    where: str = ""  # how errors name the source as a whole (the archive, the folder)

    def __post_init__(self) -> None:
        self.where = self.where or self.label

    def find(self, basename: str) -> _Entry | None:
        basename = basename.lower()
        top = [e for e in self.entries if "/" not in e.name and e.base == basename]
        if top:
            return top[0]
        anywhere = [e for e in self.entries if e.base == basename]
        return anywhere[0] if len(anywhere) == 1 else None

    def named(self, name: str) -> _Entry:
        for e in self.entries:
            if e.name == name or e.name.lower() == name.lower():
                return e
        hit = self.find(PurePosixPath(name).name)
        if hit is None:
            found = ", ".join(e.name for e in self.entries) or "nothing"
            raise DataValidationError(f"file '{name}' not found; found: {found}", file=self.where)
        return hit


def _is_ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    base = parts[-1] if parts else ""
    return (
        not base
        or base.lower() in _IGNORED_NAMES
        or base.startswith("._")
        or any(p == "__MACOSX" for p in parts)
    )


def _strip_top_folder(names: list[str]) -> str:
    """The common single top folder of ``names`` ('' when files lie at the root)."""
    prefix = ""
    while True:
        rest = [n[len(prefix):] for n in names]
        if not rest or any("/" not in r for r in rest):
            return prefix
        tops = {r.split("/", 1)[0] for r in rest}
        if len(tops) != 1:
            return prefix
        prefix += tops.pop() + "/"


def _check_size(display: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise DataValidationError(
            f"file is {size:,} bytes; the limit is {max_bytes:,} bytes", file=display
        )


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


def _regular_size(path: Path, display: str,
                  expected: str = "a data file, a folder or a .zip") -> int:
    """The size of ``path`` after checking it is a regular file (without opening it).

    A character device (``/dev/zero``) would be read until memory runs out and a FIFO would
    block on open, so anything but a regular file (or, elsewhere, a folder) is refused.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise DataValidationError(f"cannot read: {exc.strerror or exc}", file=display) from exc
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise DataValidationError(f"{what}, not a regular file: expected {expected}",
                                  file=display)
    return int(st.st_size)


def _read_path(path: Path, display: str, max_bytes: int,
               expected: str = "a data file, a folder or a .zip") -> bytes:
    """The bytes of a regular file, refusing more than ``max_bytes`` even if it grows."""
    size = _regular_size(path, display, expected)
    _check_size(display, size, max_bytes)
    try:
        with path.open("rb") as fh:
            data = fh.read(size + 1)  # one read of the size stat gave (no 1 GiB buffer)
            if len(data) > size:  # it grew meanwhile: read on, up to the limit
                data += fh.read(max_bytes + 1 - len(data))
    except OSError as exc:
        raise DataValidationError(f"cannot read: {exc.strerror or exc}", file=display) from exc
    _check_size(display, len(data), max_bytes)
    return data


def _zip_source(
    data: bytes | Path, label: str, display: str, max_unzipped_bytes: int
) -> _Source:
    """List a zip's members after checking names and declared sizes; nothing is extracted."""
    try:
        zf = zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataValidationError(f"not a readable zip archive ({exc})", file=display) from exc
    total = 0
    packed = 0
    members: list[zipfile.ZipInfo] = []
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if (
            name.startswith("/")
            or re.match(r"^[A-Za-z]:", name)
            or ".." in parts
        ):
            raise DataValidationError(
                f"archive entry '{info.filename}' leaves the archive's folder; expected paths "
                "inside it (no '../', no absolute paths)",
                file=display,
            )
        if info.is_dir():
            continue
        total += info.file_size
        packed += info.compress_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > (1 << 20) and ratio > MAX_COMPRESSION_RATIO:
            raise DataValidationError(
                f"archive entry '{info.filename}' would expand {ratio:,.0f}-fold "
                f"(limit {MAX_COMPRESSION_RATIO:.0f}); refusing a possible zip bomb",
                file=display,
            )
        if not _is_ignored(name):
            members.append(info)
    if total > max_unzipped_bytes:
        raise DataValidationError(
            f"archive would expand to {total:,} bytes; the limit is {max_unzipped_bytes:,} bytes",
            file=display,
        )
    if total > (1 << 20) and total / max(packed, 1) > MAX_COMPRESSION_RATIO:
        raise DataValidationError(
            f"archive would expand {total / max(packed, 1):,.0f}-fold "
            f"(limit {MAX_COMPRESSION_RATIO:.0f}); refusing a possible zip bomb",
            file=display,
        )
    names = [m.filename.replace("\\", "/") for m in members]
    prefix = _strip_top_folder(names)

    def reader(info: zipfile.ZipInfo, shown: str) -> Callable[[], bytes]:
        def read() -> bytes:
            if info.flag_bits & 0x1:
                raise DataValidationError("archive entry is encrypted", file=shown)
            buf = io.BytesIO()
            try:
                with zf.open(info) as fh:
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        buf.write(chunk)
                        if buf.tell() > info.file_size:
                            raise DataValidationError(
                                "archive entry is larger than its declared size", file=shown
                            )
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError,
                    NotImplementedError, ValueError) as exc:  # bz2 says OSError
                raise DataValidationError(f"corrupt archive entry ({exc})", file=shown) from exc
            return buf.getvalue()

        return read

    entries = []
    for info, name in zip(members, names):
        shown = f"{display}:{name}"
        entries.append(_Entry(name[len(prefix):], shown, info.file_size,
                              _memo(reader(info, shown))))
    top = prefix.rstrip("/").split("/")[-1] if prefix else label
    return _Source(top or label, entries, display)


def _from_blob(
    filename: str, data: bytes, max_bytes: int, max_unzipped_bytes: int
) -> _Source:
    name = PurePosixPath(filename.replace("\\", "/")).name or "upload"
    _check_size(name, len(data), max_bytes)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    if data[:4] == b"PK\x03\x04" or name.lower().endswith(".zip"):
        return _zip_source(data, stem, name, max_unzipped_bytes)
    return _Source(stem, [_Entry(name, name, len(data), lambda: data)])


def _blob_of(obj: Any) -> tuple[str, bytes] | None:
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        data = obj[1]
        if isinstance(data, (bytes, bytearray, memoryview)):
            return obj[0], bytes(data)
    if hasattr(obj, "name") and (hasattr(obj, "getvalue") or hasattr(obj, "read")):
        if isinstance(obj, (str, Path)):
            return None
        data = obj.getvalue() if hasattr(obj, "getvalue") else obj.read()
        if isinstance(data, str):
            data = data.encode("utf-8")
        return str(obj.name), bytes(data)
    return None


def _resolve(source: Any, max_bytes: int, max_unzipped_bytes: int) -> _Source:
    """Turn any accepted ``source`` into a virtual folder of entries (a ``Source`` as it is)."""
    if isinstance(source, _Source):
        return source
    blob = _blob_of(source)
    if blob is not None:
        return _from_blob(blob[0], blob[1], max_bytes, max_unzipped_bytes)
    if isinstance(source, (list, tuple)) and not isinstance(source, (str, bytes)):
        entries: list[_Entry] = []
        for part in source:
            sub = _resolve(part, max_bytes, max_unzipped_bytes)
            entries.extend(sub.entries)
        if not entries:
            raise DataValidationError("no files given")
        names = [e.name.lower() for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataValidationError(f"the same file name given twice: {', '.join(dup)}")
        return _Source("upload", entries)
    if isinstance(source, (bytes, bytearray)):
        raise DataValidationError("bytes need a file name: pass (filename, bytes)")
    if not isinstance(source, (str, Path)):
        raise DataValidationError(
            f"cannot read a {type(source).__name__}: expected a path, a (filename, bytes) pair "
            "or an uploaded file"
        )
    path = Path(source)
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte in it
        raise DataValidationError(f"cannot read: {exc}", file=str(path)) from exc
    if not exists:
        raise DataValidationError("no such file or folder", file=str(path))
    if is_dir:
        root = path
        while True:
            files = [p for p in sorted(root.iterdir()) if p.is_file() and not _is_ignored(p.name)]
            dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name != "__MACOSX"]
            if files or len(dirs) != 1:
                break
            root = dirs[0]
        entries = []
        for p in files:
            entries.append(_Entry(
                p.name, str(p), p.stat().st_size,
                _memo(lambda p=p: _read_path(p, str(p), max_bytes)),
            ))
        return _Source(root.name, entries, str(root))
    display = str(path)
    size = _regular_size(path, display)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise DataValidationError(f"cannot read: {exc.strerror or exc}", file=display) from exc
    _check_size(display, size, max_bytes)
    if magic == b"PK\x03\x04" or path.suffix.lower() == ".zip":
        return _zip_source(path, path.stem, display, max_unzipped_bytes)
    return _Source(path.stem, [_Entry(path.name, display, size,
                                      _memo(lambda: _read_path(path, display, max_bytes)))])


def _data_entries(src: _Source) -> list[_Entry]:
    return [e for e in src.entries
            if "/" not in e.name and e.base.endswith(_DATA_SUFFIXES)
            and not e.base.startswith("readme")]


#: The resolved form of a source (see ``open_source``).
Source = _Source


def open_source(source: Any, *, max_bytes: int = DEFAULT_MAX_BYTES,
                max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES) -> Source:
    """Resolve ``source`` once: list and check it (archive names, sizes, file kinds).

    ``load``, ``sniff`` and ``peek_columns`` accept the result in place of the source, so an
    upload that is sniffed, peeked at and loaded is resolved once and each of its files read
    at most once (files up to 64 MiB are kept after their first read).
    """
    return _resolve(source, max_bytes, max_unzipped_bytes)


def read_regular_file(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of one file a person named (e.g. a seed list): a regular file of at most
    ``max_bytes``, else ``DataValidationError`` (a device or FIFO is never opened)."""
    p = Path(path)
    try:
        exists = p.exists()
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"cannot read: {exc}", file=str(p)) from exc
    if not exists:
        raise DataValidationError("no such file", file=str(p))
    return _read_path(p, str(p), max_bytes, expected="a file")
