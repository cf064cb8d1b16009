"""Interaction files inside zip archives and gzip/zstd files, and Parquet dataset directories.

``open_source`` turns a path (``ml-1m.zip``, ``ml-1m.zip:ml-1m/ratings.dat``, ``ratings.dat.gz``,
``log.csv.zst``, a plain file or a directory of Parquet files) into a ``Source``: where the data is,
the inner file name that tells the format (``ratings.dat`` for ``ratings.dat.gz``) and the label
every message names it by (``ml-1m.zip:ml-1m/ratings.dat``), so errors keep saying "file, line,
what is wrong".

Readers scan files lazily, so a compressed file is first decompressed into a scratch directory
(``Source.local_file``): Polars cannot stream from inside a zip member, and a copy on disk keeps
memory bounded where decompressing into memory would hold the whole text.
"""
from __future__ import annotations

import gzip
import re
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from t2arec.data.types import DataError

COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
MEMBER_SYNTAX = re.compile(r"^(.+\.zip):(.+)$", re.IGNORECASE)
DATA_SUFFIXES = (".dat", ".data", ".csv", ".tsv", ".txt", ".inter", ".parquet", ".pq")
SHOWN_MEMBERS = 8  # how many member names an error lists before "..."
COPY_BLOCK = 1 << 22  # bytes per read when decompressing to a scratch file


@dataclass(frozen=True)
class Source:
    """One interaction file, possibly inside an archive or compressed.

    ``path``: the file (or Parquet directory) on disk. ``member``: the file read inside a zip
    archive. ``name``: the inner file name, for format detection. ``label``: how messages name it.
    ``compression``: "zip", "gzip", "zstd" or None for a plain file or a directory.
    """

    path: Path
    label: str
    name: str
    member: str | None = None
    compression: str | None = None

    def read_bytes(self) -> bytes:
        """The (decompressed) content, in memory: nothing is unpacked to disk."""
        try:
            if self.compression == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    return archive.read(self.member or "")
            if self.compression == "gzip":
                with gzip.open(self.path, "rb") as handle:
                    return handle.read()
            if self.compression == "zstd":
                return _read_zstd(self.path)
        except (zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError, OSError) as err:  # pyarrow's ArrowInvalid is an OSError too
            raise DataError(f"{self.label}: cannot read the {self.compression} data "
                            f"({type(err).__name__}: {_first_line(err)})") from None
        return self.path.read_bytes()

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    def local_file(self, scratch: Path) -> Path:
        """A path Polars can scan: the file itself, or its content decompressed into ``scratch``."""
        if self.compression is None:
            return self.path
        target = scratch / f"decompressed-{PurePosixPath(self.name).name}"
        try:
            with self._open() as stream, open(target, "wb") as out:
                shutil.copyfileobj(stream, out, COPY_BLOCK)
        except (zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError, OSError) as err:  # pyarrow's ArrowInvalid is an OSError too
            raise DataError(f"{self.label}: cannot read the {self.compression} data "
                            f"({type(err).__name__}: {_first_line(err)})") from None
        return target

    @contextmanager
    def _open(self) -> Iterator[BinaryIO]:
        """The decompressed content as a binary stream."""
        if self.compression == "zip":
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member or "") as stream:
                yield stream
        elif self.compression == "gzip":
            with gzip.open(self.path, "rb") as stream:
                yield stream  # type: ignore[misc]
        else:
            import pyarrow as pa

            with pa.input_stream(str(self.path), compression="zstd") as stream:
                yield stream  # type: ignore[misc]


def _read_zstd(path: Path) -> bytes:
    # pyarrow (already a dependency) carries a zstd decoder; Python's own arrives only in 3.14
    import pyarrow as pa

    with pa.input_stream(str(path), compression="zstd") as stream:
        return stream.read()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no details"


def split_member(value: str | Path) -> tuple[str, str | None]:
    """``"x.zip:dir/ratings.dat"`` -> ``("x.zip", "dir/ratings.dat")``; anything else -> (value, None).

    An existing file is never split, whatever its name.
    """
    text = str(value)
    match = MEMBER_SYNTAX.match(text)
    if match is None or Path(text).exists():
        return text, None
    return match.group(1), match.group(2)


def inner_name(file_name: str) -> str:
    """The file name without a compression suffix: ``ratings.dat.gz`` -> ``ratings.dat``."""
    suffix = PurePosixPath(file_name).suffix.lower()
    return file_name[: -len(suffix)] if suffix in COMPRESSED else file_name


def display_name(path: str | Path) -> str:
    """A dataset name for reports: ``ml-1m.zip`` -> ``ml-1m``, ``log.csv.gz`` -> ``log``."""
    return PurePosixPath(inner_name(Path(path).name)).stem


def check_file(path: Path) -> None:
    """A missing or empty file is reported before anything tries to read it."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return  # a Parquet dataset directory; readers check what it holds
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def open_source(path: str | Path, member: str | None = None, preferred: str | None = None) -> Source:
    """Locate the interaction file named by ``path`` (and ``member``, for a zip archive).

    ``path`` may carry the member itself (``x.zip:dir/file``); a directory is a Parquet dataset.
    Without a member, a zip archive's file is ``preferred`` (the known member of a known archive)
    when present, else its only file, else its only ratings-like file; otherwise a ``DataError``
    lists the files to choose from.
    """
    text, named = split_member(path)
    member = member or named
    file = Path(text)
    check_file(file)
    if file.is_dir():
        if member is not None:
            raise DataError(f"{file}: only a .zip archive has members; drop ':{member}'")
        return Source(path=file, label=str(file), name=file.name)
    suffix = file.suffix.lower()
    if suffix == ".zip":
        return _zip_source(file, member, preferred)
    if member is not None:
        raise DataError(f"{file}: only a .zip archive has members; drop ':{member}'")
    if suffix in COMPRESSED:
        return Source(path=file, label=str(file), name=inner_name(file.name), compression=COMPRESSED[suffix])
    return Source(path=file, label=str(file), name=file.name)


def _zip_source(file: Path, member: str | None, preferred: str | None) -> Source:
    try:
        with zipfile.ZipFile(file) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and not _is_clutter(n)]
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{file}: not a readable zip archive ({_first_line(err)})") from None
    if not names:
        raise DataError(f"{file}: the zip archive holds no files")
    if member is None:
        member = _pick_member(file, names, preferred)
    elif member not in names:
        raise DataError(f"{file}: no member {member!r} in the archive; it holds {_show(names)}")
    return Source(path=file, label=f"{file}:{member}", name=PurePosixPath(member).name, member=member,
                  compression="zip")


def _pick_member(file: Path, names: list[str], preferred: str | None) -> str:
    if preferred in names:
        return preferred  # type: ignore[return-value]
    if len(names) == 1:
        return names[0]
    likely = [n for n in names if _ratings_like(PurePosixPath(n).name)]
    if len(likely) == 1:
        return likely[0]
    which = f"{len(likely)} look like ratings: {_show(likely)}" if likely else f"none looks like ratings: {_show(names)}"
    raise DataError(f"{file}: cannot tell which file of the archive to read ({len(names)} files, {which}); "
                    f"name it as --data {file}:MEMBER")


def _ratings_like(name: str) -> bool:
    """u.data, *.inter, or a data file whose name mentions ratings or interactions."""
    lower = name.lower()
    if lower == "u.data" or lower.endswith(".inter"):
        return True
    stem = PurePosixPath(inner_name(lower)).stem
    return lower.endswith(DATA_SUFFIXES) and ("rating" in stem or "interaction" in stem)


def _is_clutter(name: str) -> bool:
    """Files archivers add on their own (macOS resource forks, Finder metadata)."""
    return name.startswith("__MACOSX/") or PurePosixPath(name).name == ".DS_Store"


def _show(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_MEMBERS])
    return shown + (f", ... ({len(names) - SHOWN_MEMBERS} more)" if len(names) > SHOWN_MEMBERS else "")
