"""Read interaction logs (RecBole atomic files, MovieLens, CSV/TSV, Parquet) into ``Interactions``.

Any of them may also sit in a zip archive (``ml-1m.zip``, or ``x.zip:dir/file`` to name the file)
or be gzip/zstd compressed (``ratings.dat.gz``, ``log.csv.zst``); they are read without unpacking
(``archives.py``), and messages name the file inside the archive (``ml-1m.zip:ml-1m/ratings.dat``).

Every reader ends in the same place: three aligned columns (user, item, time) plus the 1-based
line (or Parquet row) each value came from, so that any problem found later can be reported as
"file, line, what is wrong". Nothing is dropped silently: bad rows raise ``DataError``; the only
rows ever removed are exact duplicates, and only when asked (``duplicates="drop"``), and counted.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from t2arec.data.archives import Source, inner_name, open_source, split_member
from t2arec.data.datasets import for_file
from t2arec.data.types import DataError, Interactions

FORMATS = ("recbole", "movielens", "csv", "parquet")
TIME_UNITS = ("auto", "s", "ms", "datetime")
DUPLICATES = ("keep", "drop")
ROLES = ("user", "item", "time")

# Column names tried, in this order, when a CSV/TSV/Parquet file comes without a ``columns`` mapping.
NAME_CANDIDATES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId", "userid", "uid"),
    "item": ("item", "item_id", "itemId", "movieId", "movie_id", "iid", "product_id", "asin"),
    "time": ("time", "timestamp", "ts", "datetime", "date", "unixReviewTime"),
}
RECBOLE_DEFAULTS = {"user": "user_id", "item": "item_id", "time": "timestamp"}
MOVIELENS_FIELDS = {"user": 0, "item": 1, "time": 3}  # user::item::rating::timestamp
MOVIELENS_NAMES = ("user", "item", "rating", "timestamp")

# Numeric timestamps whose median magnitude exceeds this are milliseconds: 1e11 s is year 5138,
# 1e11 ms is 1973, so real data cannot be ambiguous.
MS_THRESHOLD = 1e11


@dataclass
class _RawColumns:
    """The three selected columns of a file before any parsing, row-aligned.

    ``user``, ``item``, ``time``: Series of length n (strings for text files, any dtype for Parquet).
    ``line``: int64 array (n,), the 1-based line (text) or row (Parquet) each row came from.
    ``names``: the file's column names for ``user``/``item``/``time``, for messages.
    """

    user: pl.Series
    item: pl.Series
    time: pl.Series
    line: np.ndarray
    names: dict[str, str]
    where: str  # "line" or "row"


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
    """Read an interaction log into an ``Interactions`` frame (user Utf8, item Utf8, time Float64 s).

    ``path``: a file, a zip archive (``x.zip`` or ``x.zip:member``) or a ``.gz``/``.zst`` file.
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
    if fmt == "parquet":
        raw, rows_read = _read_parquet(source, columns)
    else:
        raw, rows_read = _read_text(source, fmt, sep, columns, fields, guessed)

    label = source.label
    user = _clean_ids(raw.user, raw, "user", label)
    item = _clean_ids(raw.item, raw, "item", label)
    # Date-time strings are a CSV/Parquet feature; RecBole and MovieLens timestamps are numbers.
    dates_ok = fmt in ("csv", "parquet") or time_unit == "datetime"
    seconds, unit_label = _parse_time(raw.time, raw, label, time_unit, dates_ok)

    frame = pl.DataFrame({"user": user, "item": item, "time": seconds})
    dropped: dict[str, int] = {}
    if duplicates == "drop":
        frame, dropped["duplicates"] = _drop_duplicates(frame)
    return Interactions(frame=frame, source=label, time_unit=unit_label,
                        rows_read=rows_read, dropped=dropped)


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


# ----------------------------------------------------------------------------- text formats


def _read_text(source: Source, fmt: str, sep: str, columns: dict[str, str] | None,
               fields: Sequence[str] | None, guessed: bool) -> tuple[_RawColumns, int]:
    """Split a text file into fields and select the user/item/time columns.

    ``fields``: the column names of a file without a header line; ``guessed``: they come from the
    file's name only, so a first line that reads as a header (its last field is not a number)
    is taken as the header instead.
    """
    label = source.label
    text = _decode(source.read_bytes(), label)
    if guessed and fields is not None and not _first_line_is_data(text, sep):
        fields = None
    if fmt == "movielens":
        if columns:
            raise DataError(f"{label}: movielens files have fixed fields user, item, rating, "
                            "timestamp; a columns mapping is not supported (use fmt='csv')")
        sep = sep or _sniff_movielens(text, label)
    names_given = list(MOVIELENS_NAMES) if fmt == "movielens" else (list(fields) if fields is not None else None)
    # Quotes need a real CSV parser; everything else goes through the fast vectorised splitter.
    if fmt == "csv" and '"' in text:
        header, values, lines = _split_quoted(text, sep, names_given, label)
    else:
        header, values, lines = _split_plain(text, sep, names_given, label)

    if fmt == "movielens":
        index = dict(MOVIELENS_FIELDS)
        names = {role: MOVIELENS_NAMES[i] for role, i in index.items()}
    else:
        assert header is not None
        names = _resolve_columns(header, fmt, columns, label)
        index = {role: _column_index(header, name, fmt) for role, name in names.items()}
    raw = _RawColumns(user=values[index["user"]], item=values[index["item"]],
                      time=values[index["time"]], line=lines, names=names, where="line")
    return raw, len(lines)


def _decode(data: bytes, label: str) -> str:
    if not data.strip():
        raise DataError(f"{label}: file is empty")
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the byte-order mark some tools write
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{label}: line {line}: not valid UTF-8 text") from None


def _first_line_is_data(text: str, sep: str) -> bool:
    """Whether the first non-blank line is a row rather than a header: its last field is a number
    (a header names its timestamp column)."""
    head = text[: 1 << 16]  # a slice first: splitting the whole text would copy all of it
    first = next((ln for ln in head.split("\n") if ln.strip()), "")
    last = first.rstrip("\r").split(sep)[-1].strip().strip('"')
    try:
        float(last)
    except ValueError:
        return False
    return True


def _sniff_movielens(text: str, label: str) -> str:
    first = next((ln for ln in text.split("\n", 50) if ln.strip()), "")
    if "::" in first:
        return "::"
    if "\t" in first:
        return "\t"
    raise DataError(f"{label}: line 1: movielens rows must be user::item::rating::timestamp "
                    "(ML-1M) or tab-separated (ML-100K u.data)")


def _split_plain(text: str, sep: str, names: list[str] | None, label: str
                 ) -> tuple[list[str], list[pl.Series], np.ndarray]:
    """Split unquoted text on ``sep`` (any length, so "::" works) with polars string kernels.

    ``names``: the field names of a file without a header line; None: the first line is the header.
    Returns (field names, one Utf8 Series per field (n,), 1-based line numbers (n,)).
    Blank lines are skipped (they hold no row) but still counted for line numbers.
    """
    frame = (pl.DataFrame({"text": pl.Series(text.split("\n"), dtype=pl.String)})
             .with_row_index("line", offset=1)
             .with_columns(pl.col("text").str.strip_suffix("\r"))
             .filter(pl.col("text").str.strip_chars() != ""))
    if frame.height == 0:
        raise DataError(f"{label}: file is empty")
    header = names
    if header is None:
        header = [h.strip() for h in frame["text"][0].split(sep)]
        frame = frame.slice(1)
        if frame.height == 0:
            raise DataError(f"{label}: has a header line but no data rows")
    n_fields = len(header)

    parts = frame["text"].str.split(sep)
    counts = parts.list.len().to_numpy()
    lines = frame["line"].cast(pl.Int64).to_numpy()
    bad = np.flatnonzero(counts != n_fields)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{label}: line {lines[i]}: expected {n_fields} fields separated by "
                        f"{sep!r}, found {counts[i]}")
    fields = [parts.list.get(j) for j in range(n_fields)]
    return header, fields, lines


def _split_quoted(text: str, sep: str, names: list[str] | None, label: str
                  ) -> tuple[list[str], list[pl.Series], np.ndarray]:
    """Like ``_split_plain`` but honouring CSV quoting, via the csv module."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    header: list[str] | None = names
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not any(f.strip() for f in row):
                continue  # blank line
            if header is None:
                header = [h.strip() for h in row]
                continue
            if len(row) != len(header):
                raise DataError(f"{label}: line {reader.line_num}: expected {len(header)} fields "
                                f"separated by {sep!r}, found {len(row)}")
            rows.append(row)
            lines.append(reader.line_num)  # physical line where the record ends
    except csv.Error as err:
        raise DataError(f"{label}: line {reader.line_num}: {err}") from None
    if header is None or (names is not None and not rows):
        raise DataError(f"{label}: file is empty")
    if not rows:
        raise DataError(f"{label}: has a header line but no data rows")
    fields = [pl.Series(col, dtype=pl.String) for col in zip(*rows)]
    return header, fields, np.asarray(lines, dtype=np.int64)


def _column_index(header: list[str], name: str, fmt: str) -> int:
    keys = _header_keys(header, fmt)
    return keys.index(name)


def _header_keys(header: list[str], fmt: str) -> list[str]:
    """Names to match against: RecBole headers are ``name:type`` and match by ``name``."""
    if fmt == "recbole":
        return [h.split(":", 1)[0].strip() for h in header]
    return header


def _resolve_columns(header: list[str], fmt: str, columns: dict[str, str] | None,
                     label: str) -> dict[str, str]:
    """Pick the file column for each role: the explicit mapping, else defaults / common names."""
    keys = _header_keys(header, fmt)
    found = ", ".join(header)
    chosen: dict[str, str] = {}
    for role in ROLES:
        if columns and role in columns:
            want = columns[role].split(":", 1)[0].strip() if fmt == "recbole" else columns[role]
            if want not in keys:
                raise DataError(f"{label}: column {columns[role]!r} (for {role}) not found; "
                                f"columns found: {found}")
            name = want
        else:
            candidates = (RECBOLE_DEFAULTS[role],) if fmt == "recbole" else NAME_CANDIDATES[role]
            name = _guess(keys, candidates)
            if name is None:
                raise DataError(f"{label}: missing {role} column (looked for "
                                f"{', '.join(candidates)}); columns found: {found}; "
                                f"map it with --columns {role}=COLUMN (columns={{'{role}': ...}} in Python)")
        if keys.count(name) > 1:
            raise DataError(f"{label}: column {name!r} appears {keys.count(name)} times in the header")
        chosen[role] = name
    return chosen


def _guess(keys: list[str], candidates: tuple[str, ...]) -> str | None:
    """First candidate present exactly; failing that, first present ignoring case."""
    for c in candidates:
        if c in keys:
            return c
    lowered = {k.lower(): k for k in reversed(keys)}  # reversed: first occurrence wins
    for c in candidates:
        if c.lower() in lowered:
            return lowered[c.lower()]
    return None


# ----------------------------------------------------------------------------- parquet


def _read_parquet(source: Source, columns: dict[str, str] | None) -> tuple[_RawColumns, int]:
    label = source.label
    # a plain file is read by path (polars reads only the columns it needs); an archived one from memory
    data = source.path if source.compression is None else source.read_bytes()

    def target() -> Path | io.BytesIO:
        return data if isinstance(data, Path) else io.BytesIO(data)

    try:
        header = list(pl.read_parquet_schema(target()))
    except Exception as err:  # polars raises several kinds for a non-Parquet file
        raise DataError(f"{label}: cannot read as Parquet ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    names = _resolve_columns(header, "parquet", columns, label)
    frame = pl.read_parquet(target(), columns=list(dict.fromkeys(names.values())))
    if frame.height == 0:
        raise DataError(f"{label}: file is empty (0 rows)")
    raw = _RawColumns(user=frame[names["user"]], item=frame[names["item"]],
                      time=frame[names["time"]],
                      line=np.arange(1, frame.height + 1, dtype=np.int64), names=names, where="row")
    return raw, frame.height


# ----------------------------------------------------------------------------- values


def _fail(label: str, raw: _RawColumns, i: int, role: str, problem: str) -> DataError:
    """A one-line error for row ``i``: file, line/row, column, problem."""
    return DataError(f"{label}: {raw.where} {raw.line[i]}: column {raw.names[role]!r}: {problem}")


def _first(mask: pl.Series) -> int | None:
    """Index of the first True in a boolean Series (nulls count as False), or None."""
    hits = np.flatnonzero(mask.fill_null(False).to_numpy())
    return int(hits[0]) if hits.size else None


def _clean_ids(values: pl.Series, raw: _RawColumns, role: str, label: str) -> pl.Series:
    """Ids as stripped Utf8 strings, exactly as written; a missing/empty id is an error."""
    ids = _ids_as_text(values).str.strip_chars()
    i = _first(ids.is_null() | (ids == ""))
    if i is not None:
        raise _fail(label, raw, i, role, f"missing or empty {role} id")
    return ids.rename(role)


def _ids_as_text(values: pl.Series) -> pl.Series:
    if values.dtype == pl.String:
        return values
    if values.dtype.is_float():
        # Parquet written from pandas often stores integer ids as float (1.0); keep them "1".
        finite = values.drop_nulls()
        if finite.len() and bool((finite == finite.round(0)).all()) and bool(finite.is_finite().all()):
            return values.cast(pl.Int64).cast(pl.String)
    return values.cast(pl.String)


def _parse_time(values: pl.Series, raw: _RawColumns, label: str, time_unit: str,
                dates_ok: bool) -> tuple[pl.Series, str]:
    """Return (time in float64 seconds (n,), unit label for ``Interactions.time_unit``)."""
    dtype = values.dtype
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        if time_unit in ("s", "ms"):
            raise DataError(f"{label}: column {raw.names['time']!r} holds date-times, "
                            f"not numbers; use time_unit='datetime' or 'auto'")
        return _datetime_seconds(values, raw, label), "datetime"
    if dtype.is_numeric():
        if time_unit == "datetime":
            raise DataError(f"{label}: column {raw.names['time']!r} is numeric, not date-time "
                            "text; use time_unit='s', 'ms' or 'auto'")
        return _numeric_seconds(values.cast(pl.Float64), values.cast(pl.String), raw, label, time_unit)
    if dtype != pl.String:
        raise DataError(f"{label}: column {raw.names['time']!r} has type {dtype}, "
                        "expected numbers, date-times or text")

    text = values.str.strip_chars()
    i = _first(text.is_null() | (text == ""))
    if i is not None:
        raise _fail(label, raw, i, "time", "missing or empty timestamp")
    numbers = text.cast(pl.Float64, strict=False)
    if time_unit == "datetime":
        return _text_datetime_seconds(text, raw, label), "datetime"
    # auto: a column that is mostly not numbers is date-time text (if the format allows it);
    # a few non-numbers in a numeric column are reported as bad timestamps instead.
    if time_unit == "auto" and dates_ok and numbers.null_count() * 2 > len(numbers):
        return _text_datetime_seconds(text, raw, label), "datetime"
    return _numeric_seconds(numbers, text, raw, label, time_unit)


def _numeric_seconds(numbers: pl.Series, text: pl.Series, raw: _RawColumns, label: str,
                     time_unit: str) -> tuple[pl.Series, str]:
    """Seconds from numeric timestamps; ``text`` is the original value for messages."""
    i = _first(numbers.is_null())
    if i is not None:
        if text[i] is None or str(text[i]).strip() == "":
            raise _fail(label, raw, i, "time", "missing or empty timestamp")
        raise _fail(label, raw, i, "time", f"non-numeric timestamp {text[i]!r}")
    i = _first(~numbers.is_finite())
    if i is not None:
        raise _fail(label, raw, i, "time", f"timestamp {text[i]!r} is not finite")
    if time_unit == "auto":
        median = float(numbers.abs().median())  # type: ignore[arg-type]
        time_unit = "ms" if median > MS_THRESHOLD else "s"
    if time_unit == "ms":
        return (numbers / 1000.0).rename("time"), "milliseconds"
    return numbers.rename("time"), "seconds"


def _text_datetime_seconds(text: pl.Series, raw: _RawColumns, label: str) -> pl.Series:
    """Parse date-time strings (ISO 8601; naive values are taken as UTC) to epoch seconds."""
    try:
        parsed = text.str.to_datetime(strict=False, time_unit="us")
    except Exception:  # polars could not infer a format at all: the first value is the culprit
        raise _fail(label, raw, 0, "time",
                    f"cannot parse {text[0]!r} as a date-time (expected ISO 8601)") from None
    i = _first(parsed.is_null())
    if i is not None:
        raise _fail(label, raw, i, "time",
                    f"cannot parse {text[i]!r} as a date-time (expected ISO 8601, "
                    "same format on every line)")
    return _epoch_seconds(parsed)


def _datetime_seconds(values: pl.Series, raw: _RawColumns, label: str) -> pl.Series:
    i = _first(values.is_null())
    if i is not None:
        raise _fail(label, raw, i, "time", "missing timestamp")
    if values.dtype == pl.Date:
        values = values.cast(pl.Datetime("us"))
    return _epoch_seconds(values)


def _epoch_seconds(values: pl.Series) -> pl.Series:
    return (values.dt.epoch("us").cast(pl.Float64) / 1e6).rename("time")


def _drop_duplicates(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop exact (user, item, time) repeats, keeping the first occurrence and the row order."""
    keep = frame.select(pl.struct("user", "item", "time").is_first_distinct()).to_series()
    kept = frame.filter(keep)
    return kept, frame.height - kept.height
