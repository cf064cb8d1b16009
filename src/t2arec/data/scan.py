"""Interaction files as lazy frames of their data rows, not yet parsed (``RawRows``).

Nothing here holds a file's text in memory: text files are scanned line by line by Polars
(``pl.scan_lines``), Parquet files and Parquet dataset directories by ``pl.scan_parquet``, and only
the first lines are read eagerly (to find the header and the separator). ``encode.py`` then parses
the rows in one streaming pass.

A text file keeps the rules it always had: fields are split on the separator exactly (so "::"
works), blank lines hold no row but count for line numbers, a UTF-8 byte-order mark is dropped,
and CSV quoting (any '"' in a .csv file) goes through Python's csv module, in chunks.
"""
from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from t2arec.data.types import DataError

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
PARQUET_SUFFIXES = (".parquet", ".pq")

# What Polars' ``str.strip_chars()`` removes (Unicode White_Space), which decides that a line is
# blank; Python's ``str.strip()`` would also remove U+001C..U+001F.
WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
              "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
BOM = "\ufeff"
PREFIX_CHARS = 1 << 16  # the start of the file that format sniffing looks at
QUOTED_CHUNK = 200_000  # quoted CSV rows parsed by Python per chunk written to scratch
SEARCH_BLOCK = 1 << 24  # bytes read at a time when searching a file for a byte or bad UTF-8


@dataclass
class RawRows:
    """One interaction file (or Parquet dataset) as a lazy frame of its data rows.

    ``frame`` columns: ``line`` (1-based line of a text file, row of a Parquet file or dataset),
    ``user``, ``item``, ``time`` (text, or the Parquet file's own types) and, for text files that
    were split here, ``fields`` (how many fields the line has; ``expected`` is the right number).
    ``names``: the file's column for each role, for messages. ``parts``: for a Parquet dataset
    directory, its files in scan order, so that a row can be named by file (``locate``).
    ``text``: the text file scanned, if any (to locate bad UTF-8 that Polars only reports as such).
    """

    frame: pl.LazyFrame
    label: str
    names: dict[str, str]
    where: str  # "line" or "row"
    expected: int | None = None
    sep: str = ""
    parts: list[Path] = field(default_factory=list)
    text: Path | None = None

    def locate(self, line: int) -> str:
        """"file: line N" (or "file: row N"); a dataset row is named by its file and row in it."""
        for part in self.parts:  # counted from the files' metadata, only when there is an error
            rows = pl.scan_parquet(part).select(pl.len()).collect().item()
            if line <= rows:
                return f"{part}: row {line}"
            line -= rows
        return f"{self.label}: {self.where} {line}"

    def fail(self, line: int, role: str, problem: str) -> DataError:
        """A one-line error for a data row: file, line/row, column, problem."""
        return DataError(f"{self.locate(line)}: column {self.names[role]!r}: {problem}")


# ----------------------------------------------------------------------------- columns


def resolve_columns(header: list[str], fmt: str, columns: dict[str, str] | None,
                    label: str) -> dict[str, str]:
    """Pick the file column for each role: the explicit mapping, else defaults / common names."""
    keys = header_keys(header, fmt)
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


def header_keys(header: list[str], fmt: str) -> list[str]:
    """Names to match against: RecBole headers are ``name:type`` and match by ``name``."""
    if fmt == "recbole":
        return [h.split(":", 1)[0].strip() for h in header]
    return header


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


# ----------------------------------------------------------------------------- text files


@dataclass
class _Head:
    """What the first lines of a text file say: the first non-blank line (1-based number and text,
    byte-order mark and line end removed), whether a second one follows, and the first
    ``PREFIX_CHARS`` characters of the text for sniffing."""

    first: tuple[int, str] | None
    has_second: bool
    prefix: str
    bom: bool


def scan_text(path: Path, label: str, fmt: str, sep: str, columns: dict[str, str] | None,
              fields: Sequence[str] | None, guessed: bool, scratch: Path) -> RawRows:
    """Lazy rows of a RecBole, MovieLens or CSV/TSV file (see the module docstring).

    ``fields``: the column names of a file without a header line; ``guessed``: they come from the
    file's name only, so a first line that reads as a header (its last field is not a number)
    is taken as the header instead. Problems with the file as a whole (no header, a missing column)
    are raised here; problems with single rows are found when the rows are parsed.
    """
    try:
        return _scan_text(path, label, fmt, sep, columns, fields, guessed, scratch)
    except (DataError, UnicodeDecodeError):
        # The reader used to decode the whole file before anything else: bad UTF-8 anywhere wins
        # (and a UnicodeDecodeError is always located here).
        check_utf8(path, label)
        raise


def _scan_text(path: Path, label: str, fmt: str, sep: str, columns: dict[str, str] | None,
               fields: Sequence[str] | None, guessed: bool, scratch: Path) -> RawRows:
    head = _read_head(path)
    if guessed and fields is not None and not _first_line_is_data(head.prefix, sep):
        fields = None
    if fmt == "movielens":
        if columns:
            raise DataError(f"{label}: movielens files have fixed fields user, item, rating, "
                            "timestamp; a columns mapping is not supported (use fmt='csv')")
        sep = sep or _sniff_movielens(head.prefix, label)
    names_given = list(MOVIELENS_NAMES) if fmt == "movielens" else (list(fields) if fields is not None else None)
    if fmt == "csv" and contains_byte(path, b'"'):  # quotes need a real CSV parser
        return _scan_quoted(path, label, fmt, sep, columns, names_given, scratch)

    if head.first is None:
        raise DataError(f"{label}: file is empty")
    header_line = 0
    header = names_given
    if header is None:
        header_line, text = head.first
        header = [h.strip() for h in text.split(sep)]
        if not head.has_second:
            raise DataError(f"{label}: has a header line but no data rows")
    lines = _split_lines(path, sep, header_line, head.bom)
    rows = RawRows(frame=lines, label=label, names={}, where="line", expected=len(header), sep=sep, text=path)
    try:
        rows.names, index = _roles(header, fmt, columns, label)
    except DataError:
        _raise_bad_field_count(rows)  # a malformed line was always reported before the header
        raise
    rows.frame = lines.select(
        "line", "fields",
        *[pl.col("parts").list.get(index[role], null_on_oob=True).alias(role) for role in ROLES])
    return rows


def _roles(header: list[str], fmt: str, columns: dict[str, str] | None, label: str
           ) -> tuple[dict[str, str], dict[str, int]]:
    """(column name messages use, field position) of each role."""
    if fmt == "movielens":
        return {role: MOVIELENS_NAMES[i] for role, i in MOVIELENS_FIELDS.items()}, dict(MOVIELENS_FIELDS)
    names = resolve_columns(header, fmt, columns, label)
    keys = header_keys(header, fmt)
    return names, {role: keys.index(name) for role, name in names.items()}


def _split_lines(path: Path, sep: str, header_line: int, bom: bool) -> pl.LazyFrame:
    """Non-blank lines after the header, split on ``sep``: columns line, fields, parts (list)."""
    text = pl.col("text")
    lines = pl.scan_lines(path, name="text", row_index_name="line", row_index_offset=1)
    if bom:
        lines = lines.with_columns(
            pl.when(pl.col("line") == 1).then(text.str.strip_prefix(BOM)).otherwise(text).alias("text"))
    parts = text.str.split(sep)
    return (lines.filter((pl.col("line") > header_line) & (text.str.strip_chars() != ""))
            .select("line", parts.alias("parts"))
            .with_columns(pl.col("parts").list.len().alias("fields")))


def _raise_bad_field_count(rows: RawRows) -> None:
    """Raise for the first line whose field count is wrong, if there is one."""
    bad = rows.frame.filter(pl.col("fields") != rows.expected)
    line, count = bad.select(pl.col("line").min(), pl.col("fields").sort_by("line").first()).collect(engine="streaming").row(0)
    if line is not None:
        raise DataError(f"{rows.label}: line {line}: {field_count_problem(rows.expected, rows.sep, count)}")


def field_count_problem(expected: int | None, sep: str, count: int) -> str:
    return f"expected {expected} fields separated by {sep!r}, found {count}"


def _read_head(path: Path) -> _Head:
    """Read lines until the first two non-blank ones and ``PREFIX_CHARS`` characters are seen.

    Lines end at "\\n" only (a lone "\\r" is text), as ``pl.scan_lines`` and the old splitter have it.
    Raises UnicodeDecodeError on bad UTF-8, which the caller turns into a located message.
    """
    first: tuple[int, str] | None = None
    has_second = False
    prefix: list[str] = []
    chars = 0
    bom = False
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8")
            if number == 1 and line.startswith(BOM):
                bom, line = True, line[1:]
            if chars < PREFIX_CHARS:
                prefix.append(line[: PREFIX_CHARS - chars])
                chars += len(line)
            text = line.removesuffix("\n").removesuffix("\r")
            if text.strip(WHITESPACE):
                if first is None:
                    first = (number, text)
                else:
                    has_second = True
            if has_second and chars >= PREFIX_CHARS:
                break
    return _Head(first=first, has_second=has_second, prefix="".join(prefix), bom=bom)


def _first_line_is_data(head: str, sep: str) -> bool:
    """Whether the first non-blank line is a row rather than a header: its last field is a number
    (a header names its timestamp column)."""
    first = next((ln for ln in head.split("\n") if ln.strip()), "")
    last = first.rstrip("\r").split(sep)[-1].strip().strip('"')
    try:
        float(last)
    except ValueError:
        return False
    return True


def _sniff_movielens(head: str, label: str) -> str:
    first = next((ln for ln in head.split("\n", 50) if ln.strip()), "")
    if "::" in first:
        return "::"
    if "\t" in first:
        return "\t"
    raise DataError(f"{label}: line 1: movielens rows must be user::item::rating::timestamp "
                    "(ML-1M) or tab-separated (ML-100K u.data)")


def contains_byte(path: Path, byte: bytes) -> bool:
    """Whether ``byte`` occurs anywhere in the file, read a block at a time."""
    with open(path, "rb") as handle:
        while block := handle.read(SEARCH_BLOCK):
            if byte in block:
                return True
    return False


def check_utf8(path: Path, label: str) -> None:
    """Raise "line N: not valid UTF-8 text" for the line holding the file's first bad byte.

    Blocks are cut after their last newline, so a character is never split between two blocks.
    """
    lines_before = 0
    carry = b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(SEARCH_BLOCK)
            data = carry + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            piece, carry = data[:cut], data[cut:]
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as err:
                line = lines_before + piece[: err.start].count(b"\n") + 1
                raise DataError(f"{label}: line {line}: not valid UTF-8 text") from None
            lines_before += piece.count(b"\n")
            if not block:
                return


# ----------------------------------------------------------------------------- quoted CSV


def _scan_quoted(path: Path, label: str, fmt: str, sep: str, columns: dict[str, str] | None,
                 names: list[str] | None, scratch: Path) -> RawRows:
    """CSV with quoting, parsed by the csv module a chunk at a time into Parquet files in
    ``scratch`` (only the three role columns), which are then scanned like any Parquet dataset."""
    records = _quoted_records(path, sep, label)
    header = names
    if header is None:
        first = next(records, None)
        if first is None:
            raise DataError(f"{label}: file is empty")
        header = [h.strip() for h in first[1]]
    try:
        names_found, index = _roles(header, fmt, columns, label)
    except DataError:
        # the old reader parsed every row first: a malformed row, or no rows at all, came first
        if _count_quoted(records, len(header), sep, label) == 0:
            raise _no_rows(label, names) from None
        raise
    parts = _write_quoted(records, index, len(header), sep, label, scratch)
    if not parts:
        raise _no_rows(label, names)
    frame = pl.scan_parquet(parts, schema={"line": pl.Int64, **{r: pl.String for r in ROLES}})
    return RawRows(frame=frame, label=label, names=names_found, where="line")


def _no_rows(label: str, names: list[str] | None) -> DataError:
    if names is not None:
        return DataError(f"{label}: file is empty")
    return DataError(f"{label}: has a header line but no data rows")


def _quoted_records(path: Path, sep: str, label: str) -> Iterator[tuple[int, list[str]]]:
    """(physical line where the record ends, fields) for each non-blank record."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=sep, strict=True)
        try:
            for row in reader:
                if not any(f.strip() for f in row):
                    continue  # blank line
                yield reader.line_num, row
        except csv.Error as err:
            raise DataError(f"{label}: line {reader.line_num}: {err}") from None


def _checked(line: int, row: list[str], width: int, sep: str, label: str) -> list[str]:
    if len(row) != width:
        raise DataError(f"{label}: line {line}: {field_count_problem(width, sep, len(row))}")
    return row


def _count_quoted(records: Iterator[tuple[int, list[str]]], width: int, sep: str, label: str) -> int:
    count = 0
    for line, row in records:
        _checked(line, row, width, sep, label)
        count += 1
    return count


def _write_quoted(records: Iterator[tuple[int, list[str]]], index: dict[str, int], width: int,
                  sep: str, label: str, scratch: Path) -> list[Path]:
    parts: list[Path] = []
    while chunk := list(itertools.islice(records, QUOTED_CHUNK)):
        rows = [(line, *(_checked(line, row, width, sep, label)[index[r]] for r in ROLES))
                for line, row in chunk]
        target = scratch / f"quoted-{len(parts):06d}.parquet"
        pl.DataFrame(rows, schema={"line": pl.Int64, **{r: pl.String for r in ROLES}},
                     orient="row").write_parquet(target)
        parts.append(target)
    return parts


# ----------------------------------------------------------------------------- Parquet


def scan_parquet(path: Path, label: str, columns: dict[str, str] | None) -> RawRows:
    """Lazy rows of a Parquet file, or of a directory of Parquet files (a dataset written by Spark,
    DuckDB or Polars, possibly Hive-partitioned: ``key=value/part-*.parquet``; partition keys are
    columns too). A dataset's files are read in path order; its rows are named by file and row."""
    parts = dataset_files(path, label) if path.is_dir() else [path]
    try:
        lazy = pl.scan_parquet(parts, hive_partitioning=path.is_dir())
        header = list(lazy.collect_schema())
    except Exception as err:  # polars raises several kinds for a non-Parquet file
        raise DataError(f"{label}: cannot read as Parquet ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    names = resolve_columns(header, "parquet", columns, label)
    if lazy.select(pl.len()).collect().item() == 0:
        raise DataError(f"{label}: file is empty (0 rows)")
    frame = lazy.select(*[pl.col(names[role]).alias(role) for role in ROLES]).with_row_index("line", offset=1)
    return RawRows(frame=frame, label=label, names=names, where="row", parts=parts if path.is_dir() else [])


def dataset_files(directory: Path, label: str) -> list[Path]:
    """The Parquet files of a dataset directory in path order, leaving out what writers add beside
    them (``_SUCCESS``, ``.crc`` checksums, ``_delta_log``-style folders: names starting . or _)."""
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES
                   and not any(part.startswith((".", "_")) for part in p.relative_to(directory).parts))
    if not files:
        raise DataError(f"{label}: is a directory with no Parquet files; a directory is read as a "
                        "Parquet dataset (part-*.parquet files, possibly in key=value/ folders)")
    return files
