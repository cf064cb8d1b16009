"""Parse the rows of a ``RawRows`` into compact columns in one streaming pass, with every check.

The pass keeps only what ``prepare`` needs: user and item as UInt32 codes (through categoricals
with their own categories) and time as float64 seconds, so memory follows the rows' count, not
the input text. Any bad value leaves a null behind; only then is the input read again, by
``raise_first``, to find the first row that breaks each rule, in the order the rules were always
checked (field count, user ids, item ids, then timestamps), and to name its file, line and value.

Timestamps: numbers are seconds, or milliseconds when their median magnitude exceeds
``MS_THRESHOLD`` (``time_unit="auto"``); text that is mostly not numbers is parsed as ISO 8601
date-times (CSV and Parquet, or ``time_unit="datetime"``), naive values taken as UTC.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

import numpy as np
import polars as pl

from t2arec.data.scan import RawRows, check_utf8, field_count_problem
from t2arec.data.types import DataError, split_categorical

# Numeric timestamps whose median magnitude exceeds this are milliseconds: 1e11 s is year 5138,
# 1e11 ms is 1973, so real data cannot be ambiguous.
MS_THRESHOLD = 1e11
ENGINE = "streaming"
BLOCK = 1 << 22  # values per block for NumPy work over a whole column


@dataclass
class Encoded:
    """The parsed log: ``codes`` (user UInt32, item UInt32, time Float64 seconds, in read order),
    the raw ids each code stands for, and how the time was read ("seconds", "milliseconds",
    "datetime")."""

    codes: pl.DataFrame
    user_ids: pl.Series
    item_ids: pl.Series
    time_unit: str


@dataclass
class Check:
    """A rule a row can break: ``bad`` is true on such a row; ``message`` turns ``value`` (an
    expression evaluated on that row) into what is wrong."""

    bad: pl.Expr
    message: Callable[[Any], str]
    value: pl.Expr = field(default_factory=lambda: pl.lit(None))


def encode(rows: RawRows, time_unit: str, dates_ok: bool) -> Encoded:
    """Parse and check every row; raise ``DataError`` naming the first bad one.

    ``dates_ok``: whether text timestamps may be date-times when ``time_unit`` is "auto".
    """
    schema = rows.frame.collect_schema()
    users, items = pl.Categories.random(), pl.Categories.random()
    # a line with the wrong number of fields leaves nulls, like any other bad value
    complete = pl.col("fields") == rows.expected if rows.expected is not None else pl.lit(True)
    parsed = _collect(rows, [
        pl.when(complete).then(_id_text(rows, "user", schema["user"])).cast(pl.Categorical(users)).alias("user"),
        pl.when(complete).then(_id_text(rows, "item", schema["item"])).cast(pl.Categorical(items)).alias("item"),
        pl.when(complete).then(_time_number(schema["time"])).alias("time"),
    ])
    if parsed["user"].null_count() or parsed["item"].null_count():
        raise_first(rows, _id_checks(rows, schema))
    # One contiguous column at a time: each copy lives beside the pieces of that column only.
    user, user_ids = split_categorical(parsed.drop_in_place("user"), users)
    user = user.rechunk()
    item, item_ids = split_categorical(parsed.drop_in_place("item"), items)
    item = item.rechunk()
    seconds, unit = _seconds(rows, parsed.drop_in_place("time").rechunk(), schema["time"], time_unit, dates_ok)
    codes = pl.DataFrame([user, item, seconds.rechunk()])
    return Encoded(codes=codes, user_ids=user_ids, item_ids=item_ids, time_unit=unit)


def _collect(rows: RawRows, exprs: list[pl.Expr]) -> pl.DataFrame:
    """Run the rows through ``exprs`` with the streaming engine."""
    try:
        return rows.frame.select(exprs).collect(engine=ENGINE)
    except pl.exceptions.PolarsError as err:
        raise _read_error(rows, err) from None


def _read_error(rows: RawRows, err: Exception) -> DataError:
    """A one-line message for a failed scan; bad UTF-8 in a text file is located first."""
    if rows.text is not None:
        check_utf8(rows.text, rows.label)
    text = str(err).strip()
    first = text.splitlines()[0] if text else "no details"
    return DataError(f"{rows.label}: cannot read the data ({type(err).__name__}: {first})")


# ----------------------------------------------------------------------------- ids


def _id_text(rows: RawRows, role: str, dtype: pl.DataType) -> pl.Expr:
    """Ids as stripped text exactly as written; empty ones become null (and are reported)."""
    text = pl.col(role)
    if dtype != pl.String:
        text = _number_ids_as_text(rows, role, dtype)
    text = text.str.strip_chars()
    return pl.when(text != "").then(text)


def _number_ids_as_text(rows: RawRows, role: str, dtype: pl.DataType) -> pl.Expr:
    """Parquet ids that are not text: integers as "12"; floats too ("1.0" -> "1") when every value
    is a whole number, since pandas often stores integer ids as floats."""
    column = pl.col(role)
    if dtype.is_float():
        whole = rows.frame.select(
            (column.count() > 0) & ((column == column.round(0)) & column.is_finite()).all()
        ).collect(engine=ENGINE).item()
        if whole:
            return column.cast(pl.Int64).cast(pl.String)
    return column.cast(pl.String)


def _id_checks(rows: RawRows, schema: pl.Schema) -> list[Check]:
    checks = []
    if rows.expected is not None:
        checks.append(Check(pl.col("fields") != rows.expected,
                            partial(field_count_problem, rows.expected, rows.sep), pl.col("fields")))
    for role in ("user", "item"):
        checks.append(_role_check(rows, role, _id_text(rows, role, schema[role]).is_null(),
                                  f"missing or empty {role} id"))
    return checks


def _role_check(rows: RawRows, role: str, bad: pl.Expr, problem: str | Callable[[Any], str],
                value: pl.Expr = pl.lit(None)) -> Check:
    def message(found: Any) -> str:
        what = problem if isinstance(problem, str) else problem(found)
        return f"column {rows.names[role]!r}: {what}"

    return Check(bad, message, value)


def raise_first(rows: RawRows, checks: list[Check]) -> NoReturn:
    """Raise ``DataError`` for the first row breaking the first rule (in ``checks`` order) that
    any row breaks; called once a null shows that some row does."""
    error = first_problem(rows, checks)
    if error is None:
        raise AssertionError(f"{rows.label}: a bad value was seen but no rule names it")
    raise error


def first_problem(rows: RawRows, checks: list[Check]) -> DataError | None:
    """The error for the first row breaking the first rule (in ``checks`` order) that any row
    breaks, or None. Two more passes over the input, made only when something is wrong."""
    firsts = rows.frame.select(
        [pl.col("line").filter(check.bad).min().alias(str(k)) for k, check in enumerate(checks)]
    ).collect(engine=ENGINE).row(0)
    for check, line in zip(checks, firsts):
        if line is not None:
            return DataError(f"{rows.locate(line)}: {check.message(_value_at(rows, line, check.value))}")
    return None


def _value_at(rows: RawRows, line: int, value: pl.Expr) -> Any:
    """``value`` evaluated on the row at ``line`` (one more pass)."""
    return rows.frame.filter(pl.col("line") == line).select(value).collect(engine=ENGINE).item(0, 0)


# ----------------------------------------------------------------------------- time


def _time_number(dtype: pl.DataType) -> pl.Expr:
    """Seconds as far as one streaming pass can tell: numbers (unit decided later), native
    date-times; text that is not a number gives null (date-time text is parsed in a second pass)."""
    time = pl.col("time")
    if dtype == pl.String:
        return time.str.strip_chars().cast(pl.Float64, strict=False)
    if dtype == pl.Date:
        return _epoch_seconds(time.cast(pl.Datetime("us")))
    if isinstance(dtype, pl.Datetime):
        return _epoch_seconds(time)
    if dtype.is_numeric():
        return time.cast(pl.Float64)
    return pl.lit(None, dtype=pl.Float64)


def _epoch_seconds(values: pl.Expr) -> pl.Expr:
    return values.dt.epoch("us").cast(pl.Float64) / 1e6


def _seconds(rows: RawRows, numbers: pl.Series, dtype: pl.DataType, time_unit: str,
             dates_ok: bool) -> tuple[pl.Series, str]:
    """Return (time in float64 seconds (n,), unit label) from the first pass's ``numbers``."""
    name = rows.names["time"]
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        if time_unit in ("s", "ms"):
            raise DataError(f"{rows.label}: column {name!r} holds date-times, "
                            f"not numbers; use time_unit='datetime' or 'auto'")
        if numbers.null_count():
            raise_first(rows, [_role_check(rows, "time", pl.col("time").is_null(), "missing timestamp")])
        return numbers.rename("time"), "datetime"
    if dtype.is_numeric():
        if time_unit == "datetime":
            raise DataError(f"{rows.label}: column {name!r} is numeric, not date-time "
                            "text; use time_unit='s', 'ms' or 'auto'")
        missing = _role_check(rows, "time", pl.col("time").is_null(), "missing or empty timestamp")
        return _numeric_seconds(rows, numbers, time_unit, [missing],
                                pl.col("time").cast(pl.Float64), pl.col("time").cast(pl.String))
    if dtype != pl.String:
        raise DataError(f"{rows.label}: column {name!r} has type {dtype}, "
                        "expected numbers, date-times or text")

    text = pl.col("time").str.strip_chars()
    empty = _role_check(rows, "time", text.is_null() | (text == ""), "missing or empty timestamp")
    # auto: a column that is mostly not numbers is date-time text (if the format allows it);
    # a few non-numbers in a numeric column are reported as bad timestamps instead.
    if time_unit == "datetime" or (time_unit == "auto" and dates_ok
                                   and numbers.null_count() * 2 > len(numbers)):
        return _text_datetime_seconds(rows, text, empty), "datetime"
    number = text.cast(pl.Float64, strict=False)
    non_numeric = _role_check(rows, "time", number.is_null(),
                              lambda found: f"non-numeric timestamp {found!r}", text)
    return _numeric_seconds(rows, numbers, time_unit, [empty, non_numeric], number, text)


def _numeric_seconds(rows: RawRows, numbers: pl.Series, time_unit: str, missing: list[Check],
                     number: pl.Expr, text: pl.Expr) -> tuple[pl.Series, str]:
    """Seconds from the first pass's ``numbers``. ``missing``: the checks that name a null;
    ``number``/``text``: a row's value as a number / as written, to find and show a non-finite one."""
    if numbers.null_count():
        raise_first(rows, missing)
    if not numbers.is_finite().all():
        raise_first(rows, [_role_check(rows, "time", ~number.is_finite(),
                                       lambda found: f"timestamp {found!r} is not finite", text)])
    if time_unit == "auto":
        time_unit = "ms" if median_magnitude_exceeds(numbers.to_numpy(), MS_THRESHOLD) else "s"
    if time_unit == "ms":
        return (numbers / 1000.0).rename("time"), "milliseconds"
    return numbers.rename("time"), "seconds"


def median_magnitude_exceeds(values: np.ndarray, threshold: float) -> bool:
    """Whether the median of ``|values|`` (n >= 1, finite) exceeds ``threshold``, exactly as the
    median would say (the mean of the two middle values when n is even), without sorting a copy.

    With c values above the threshold: an odd n has its middle value above it when c > n // 2;
    an even n has both middle values above it when c > n // 2, neither when c < n // 2, and when
    c == n // 2 they are the largest value not above and the smallest value above.
    """
    n = len(values)
    above = 0
    below_max, above_min = -np.inf, np.inf
    for start in range(0, n, BLOCK):
        magnitude = np.abs(values[start:start + BLOCK])
        high = magnitude > threshold
        above += int(np.count_nonzero(high))
        if high.any():
            above_min = min(above_min, float(magnitude[high].min()))
        if not high.all():
            below_max = max(below_max, float(magnitude[~high].max()))
    if n % 2 or above != n // 2:
        return above > n // 2
    return (below_max + above_min) / 2 > threshold


def _text_datetime_seconds(rows: RawRows, text: pl.Expr, empty: Check) -> pl.Series:
    """Parse ISO 8601 date-time text to epoch seconds, in a second streaming pass.

    Polars infers the format of a whole column from its first value that matches a known format;
    a batch alone could infer another, so that value leads every batch parsed here.
    """
    lead = _first_inferable(rows, text)
    if lead is None:  # no value has a format Polars knows: the first one is reported
        error = first_problem(rows, [empty])
        if error is not None:
            raise error
        line = rows.frame.select(pl.col("line").min()).collect(engine=ENGINE).item()
        first = _value_at(rows, line, text)
        raise rows.fail(line, "time", f"cannot parse {first!r} as a date-time (expected ISO 8601)")
    parsed = text.map_batches(partial(_parse_after, lead), return_dtype=pl.Float64, is_elementwise=True)
    seconds = _collect(rows, [parsed.alias("time")])["time"]
    if seconds.null_count():
        raise_first(rows, [empty, _role_check(
            rows, "time", parsed.is_null(),
            lambda found: f"cannot parse {found!r} as a date-time (expected ISO 8601, same format on every line)",
            text)])
    return seconds


def _parse_after(lead: str, values: pl.Series) -> pl.Series:
    """Epoch seconds of ``values`` parsed with the format Polars infers from ``lead``."""
    both = pl.concat([pl.Series([lead], dtype=pl.String), values.cast(pl.String)])
    parsed = both.str.to_datetime(strict=False, time_unit="us").slice(1)
    return (parsed.dt.epoch("us").cast(pl.Float64) / 1e6).rename(values.name)


def _first_inferable(rows: RawRows, text: pl.Expr) -> str | None:
    """The first value (in file order) whose date-time format Polars can infer, or None."""
    for batch in rows.frame.select(text.alias("time")).collect_batches(maintain_order=True, engine=ENGINE):
        values = batch["time"]
        if _infers(values):  # some value of this batch matches a format: find the first one
            lead = next((v for v in values if v is not None and _infers(pl.Series([v], dtype=pl.String))), None)
            if lead is not None:
                return lead
    return None


def _infers(values: pl.Series) -> bool:
    try:
        return values.str.to_datetime(strict=False, time_unit="us").null_count() < len(values)
    except pl.exceptions.PolarsError:  # "could not find an appropriate format"
        return False
