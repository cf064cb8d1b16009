"""Read interaction logs (RecBole atomic files, MovieLens, CSV/TSV, Parquet) into ``Interactions``.

Any of them may also sit in a zip archive (``ml-1m.zip``, or ``x.zip:dir/file`` to name the file)
or be gzip/zstd compressed (``ratings.dat.gz``, ``log.csv.zst``), and Parquet may come as a dataset
directory (``key=value/part-*.parquet``, as Spark or DuckDB write it). Messages name the file inside
an archive (``ml-1m.zip:ml-1m/ratings.dat``) or the dataset's part file.

Logs of any size: a file is scanned lazily (``scan.py``) and parsed in one streaming pass
(``encode.py``) into user/item codes and float64 seconds, so memory follows the number of rows,
not the size of the text (a compressed file is first decompressed to a scratch file on disk).
Nothing is dropped silently: bad rows raise ``DataError`` naming file, line and what is wrong;
the only rows ever removed are exact duplicates, and only when asked (``duplicates="drop"``),
and counted.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from t2arec.data.archives import Source, inner_name, open_source, split_member
from t2arec.data.datasets import for_file
from t2arec.data.encode import MS_THRESHOLD, encode
from t2arec.data.scan import NAME_CANDIDATES, ROLES, scan_parquet, scan_text
from t2arec.data.types import DataError, Interactions

FORMATS = ("recbole", "movielens", "csv", "parquet")
TIME_UNITS = ("auto", "s", "ms", "datetime")
DUPLICATES = ("keep", "drop")
__all__ = ["read_interactions", "FORMATS", "TIME_UNITS", "DUPLICATES", "ROLES", "NAME_CANDIDATES",
           "MS_THRESHOLD"]


def read_interactions(
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    time_unit: str = "auto",
    duplicates: str = "keep",
    *,
    member: str | None = None,
    fields: Sequence[str] | None = None,
) -> Interactions:
    """Read an interaction log into ``Interactions`` (user and item codes, time Float64 seconds).

    ``path``: a file, a zip archive (``x.zip`` or ``x.zip:member``), a ``.gz``/``.zst`` file or a
    directory of Parquet files.
    ``fmt``: "auto" (by file name), "recbole", "movielens", "csv" or "parquet".
    ``columns``: maps any of "user", "item", "time" to the file's column names.
    ``time_unit``: "auto", "s", "ms" or "datetime". ``duplicates``: "keep" or "drop".
    ``member``: the file to read inside a zip archive (default: see ``archives.open_source``).
    ``fields``: column names of a CSV/TSV file that has no header line.
    A file named like a known dataset's download (``t2arec datasets``: ``ml-1m.zip``,
    ``Prime_Pantry.csv``) is read the way that dataset is, unless ``fmt``/``columns`` say otherwise.
    Raises ``DataError`` with a one-line message naming the file and line/column on bad input.
    """
    _check_options(fmt, columns, time_unit, duplicates)
    archive, named = split_member(path)
    known = for_file(inner_name(Path(archive).name), member or named)  # Prime_Pantry.csv.gz too
    source = open_source(path, member, preferred=known.member if known else None)
    guessed = False  # the registry's header-less layout is only a guess for a file given by path
    if known is not None and fmt == "auto" and not columns and fields is None and source.member == known.member:
        fmt, fields, guessed = known.fmt, known.fields, known.fields is not None
    fmt, sep = _resolve_format(source, fmt)
    if fields is not None and fmt != "csv":
        raise DataError(f"{source.label}: fields (names for a file without a header) apply to csv files only")
    # Date-time strings are a CSV/Parquet feature; RecBole and MovieLens timestamps are numbers.
    dates_ok = fmt in ("csv", "parquet") or time_unit == "datetime"
    with tempfile.TemporaryDirectory(prefix="t2arec-read-") as scratch:
        file = source.local_file(Path(scratch))
        if fmt == "parquet":
            rows = scan_parquet(file, source.label, columns)
        else:
            rows = scan_text(file, source.label, fmt, sep, columns, fields, guessed, Path(scratch))
        parsed = encode(rows, time_unit, dates_ok)

    codes = parsed.codes
    rows_read = codes.height
    dropped: dict[str, int] = {}
    if duplicates == "drop":
        codes, dropped["duplicates"] = _drop_duplicates(codes)
    return Interactions.from_codes(codes, parsed.user_ids, parsed.item_ids, source=source.label,
                                   time_unit=parsed.time_unit, rows_read=rows_read, dropped=dropped)


# ----------------------------------------------------------------------------- options and format


def _check_options(fmt: str, columns: dict[str, str] | None, time_unit: str, duplicates: str) -> None:
    if fmt not in ("auto",) + FORMATS:
        raise DataError(f"unknown fmt {fmt!r}; use one of: auto, {', '.join(FORMATS)}")
    if time_unit not in TIME_UNITS:
        raise DataError(f"unknown time_unit {time_unit!r}; use one of: {', '.join(TIME_UNITS)}")
    if duplicates not in DUPLICATES:
        raise DataError(f"unknown duplicates {duplicates!r}; use one of: {', '.join(DUPLICATES)}")
    if columns is not None:
        unknown = sorted(set(columns) - set(ROLES))
        if unknown:
            raise DataError(f"unknown key(s) {', '.join(map(repr, unknown))} in columns; "
                            f"allowed keys: {', '.join(ROLES)}")


def _resolve_format(source: Source, fmt: str) -> tuple[str, str]:
    """Return (format, field separator); the separator is "" for Parquet.

    The name is the file's inside an archive or without its compression suffix (ratings.dat.gz).
    """
    if source.is_dir:
        if fmt not in ("auto", "parquet"):
            raise DataError(f"{source.label}: is a directory; a directory is read as a Parquet "
                            f"dataset (fmt='parquet'), not as {fmt}")
        return "parquet", ""
    name = source.name.lower()
    if fmt == "auto":
        if name.endswith(".inter"):
            fmt = "recbole"
        elif name == "u.data" or name.endswith(".dat"):
            fmt = "movielens"
        elif name.endswith((".csv", ".tsv", ".txt")):
            fmt = "csv"
        elif name.endswith((".parquet", ".pq")):
            fmt = "parquet"
        else:
            raise DataError(
                f"{source.label}: cannot tell the format from the file name; known formats: "
                "recbole (*.inter), movielens (ratings.dat, *.dat, u.data), csv (*.csv; "
                "*.tsv/*.txt tab-separated), parquet (*.parquet, *.pq); pass fmt=...")
    if fmt == "recbole":
        return fmt, "\t"
    if fmt == "csv":
        return fmt, "\t" if name.endswith((".tsv", ".txt")) else ","
    if fmt == "movielens":
        return fmt, "\t" if name == "u.data" else ""  # "" = sniff "::" or tab from the first line
    return fmt, ""


def _drop_duplicates(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop exact (user, item, time) repeats, keeping the first occurrence and the row order
    (on codes, which stand for the ids one to one)."""
    keep = frame.select(pl.struct("user", "item", "time").is_first_distinct()).to_series()
    kept = frame.filter(keep)
    return kept, frame.height - kept.height
