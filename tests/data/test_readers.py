"""Tests for t2arec.data.readers: every format, time handling, duplicates and every error message."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from t2arec.data.readers import read_interactions
from t2arec.data.types import DataError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rows(inter) -> list[tuple[str, str, float]]:
    return list(inter.frame.iter_rows())


def raises(path: Path, *fragments: str, **kwargs) -> str:
    """Read ``path`` expecting a DataError whose message names the file and holds ``fragments``."""
    with pytest.raises(DataError) as info:
        read_interactions(path, **kwargs)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message  # one line
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- formats


def test_recbole_with_extra_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "toy.inter",
                 "user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n"
                 "196\t242\t3\t881250949\tgood film\n"
                 "186\t302\t3\t891717742\tok\n"
                 " 22 \t377\t1\t878887116\t\n")
    inter = read_interactions(path)
    assert inter.frame.columns == ["user", "item", "time"]
    assert inter.frame.dtypes == [pl.String, pl.String, pl.Float64]
    assert rows(inter) == [("196", "242", 881250949.0), ("186", "302", 891717742.0),
                           ("22", "377", 878887116.0)]
    assert inter.time_unit == "seconds"
    assert inter.rows_read == 3
    assert inter.dropped == {}
    assert inter.source == str(path)


def test_recbole_column_order_and_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "toy.inter",
                 "ts:float\tiid:token\tuid:token\n"
                 "100\tb\tu1\n"
                 "50\ta\tu2\n")
    inter = read_interactions(path, columns={"user": "uid", "item": "iid", "time": "ts"})
    assert rows(inter) == [("u1", "b", 100.0), ("u2", "a", 50.0)]
    # the mapping may also carry the ":type" suffix
    again = read_interactions(path, columns={"user": "uid:token", "item": "iid", "time": "ts"})
    assert rows(again) == rows(inter)


def test_movielens_1m_double_colon(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.dat",
                 "1::1193::5::978300760\n1::661::3::978302109\r\n2::1357::5::978298709\n\n")
    inter = read_interactions(path)
    assert rows(inter) == [("1", "1193", 978300760.0), ("1", "661", 978302109.0),
                           ("2", "1357", 978298709.0)]
    assert inter.rows_read == 3


def test_movielens_100k_u_data(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    inter = read_interactions(path)
    assert rows(inter) == [("196", "242", 881250949.0), ("186", "302", 891717742.0)]


def test_movielens_explicit_fmt_sniffs_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "ml1m_ratings", "7::8::4::1000\n")
    assert rows(read_interactions(path, fmt="movielens")) == [("7", "8", 1000.0)]
    tabbed = write(tmp_path, "ml100k_ratings", "7\t8\t4\t1000\n")
    assert rows(read_interactions(tabbed, fmt="movielens")) == [("7", "8", 1000.0)]


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "customer,sku,price,when\nc1,s9,2.5,10\nc2,s1,1.0,20\n")
    inter = read_interactions(path, columns={"user": "customer", "item": "sku", "time": "when"})
    assert rows(inter) == [("c1", "s9", 10.0), ("c2", "s1", 20.0)]


def test_csv_guesses_common_names(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    assert rows(read_interactions(path)) == [("1", "31", 1260759144.0)]
    amazon = write(tmp_path, "amazon.csv", "reviewerID,asin,overall,unixReviewTime\nA1,B00X,5,1400000000\n")
    assert rows(read_interactions(amazon, columns={"user": "reviewerID"})) == [("A1", "B00X", 1400000000.0)]


def test_csv_quoted_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "quoted.csv", 'user,item,time\n"u,1","item ""x""",5\nu2,plain,6\n')
    assert rows(read_interactions(path)) == [("u,1", 'item "x"', 5.0), ("u2", "plain", 6.0)]


def test_tsv_and_txt_are_tab_separated(tmp_path: Path) -> None:
    text = "user\titem\ttime\na b\tx\t1\nc\ty\t2\n"
    for name in ("log.tsv", "log.txt"):
        inter = read_interactions(write(tmp_path, name, text))
        assert rows(inter) == [("a b", "x", 1.0), ("c", "y", 2.0)]


def test_ids_are_kept_exactly_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.csv", "user,item,time\n007 , 0x1F,1\n7,1e3,2\n")
    assert rows(read_interactions(path)) == [("007", "0x1F", 1.0), ("7", "1e3", 2.0)]


def test_parquet_with_datetime_column(tmp_path: Path) -> None:
    from datetime import datetime

    path = tmp_path / "log.parquet"
    pl.DataFrame({
        "user_id": [3, 1],
        "product_id": ["p1", "p2"],
        "date": [datetime(2020, 1, 1), datetime(2020, 1, 2, 0, 0, 30)],
    }).write_parquet(path)
    inter = read_interactions(path)
    assert rows(inter) == [("3", "p1", 1577836800.0), ("1", "p2", 1577923230.0)]
    assert inter.time_unit == "datetime"


def test_parquet_numeric_ms_and_float_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.pq"
    pl.DataFrame({"u": [1.0, 2.0], "i": [10, 11], "t": [1_600_000_000_500, 1_600_000_001_000]}).write_parquet(path)
    inter = read_interactions(path, columns={"user": "u", "item": "i", "time": "t"})
    assert rows(inter) == [("1", "10", 1_600_000_000.5), ("2", "11", 1_600_000_001.0)]
    assert inter.time_unit == "milliseconds"


def test_datetime_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "dates.csv",
                 "user,item,datetime\na,x,2020-01-01T00:00:00\nb,y,2020-01-01T01:00:30\n")
    inter = read_interactions(path)
    assert rows(inter) == [("a", "x", 1577836800.0), ("b", "y", 1577840430.0)]
    assert inter.time_unit == "datetime"
    dates = write(tmp_path, "days.csv", "user,item,date\na,x,2020-01-02\nb,y,2020-01-03\n")
    assert [r[2] for r in rows(read_interactions(dates))] == [1577923200.0, 1578009600.0]
    offset = write(tmp_path, "tz.csv", "user,item,time\na,x,2020-01-01T02:00:00+02:00\n")
    assert rows(read_interactions(offset))[0][2] == 1577836800.0


def test_milliseconds_detected_from_median(tmp_path: Path) -> None:
    path = write(tmp_path, "ms.csv", "user,item,ts\na,x,1600000000123\nb,y,1600000001000\nc,z,5\n")
    inter = read_interactions(path)
    assert inter.time_unit == "milliseconds"
    assert [r[2] for r in rows(inter)] == pytest.approx([1600000000.123, 1600000001.0, 0.005], abs=1e-6)
    secs = write(tmp_path, "s.csv", "user,item,ts\na,x,99999999999\nb,y,1\n")  # median below 1e11
    assert read_interactions(secs).time_unit == "seconds"


def test_explicit_time_unit(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "user,item,time\na,x,2000\nb,y,3000\n")
    as_ms = read_interactions(path, time_unit="ms")
    assert (as_ms.time_unit, [r[2] for r in rows(as_ms)]) == ("milliseconds", [2.0, 3.0])
    big = write(tmp_path, "big.csv", "user,item,time\na,x,1600000000000\n")
    as_s = read_interactions(big, time_unit="s")
    assert (as_s.time_unit, rows(as_s)[0][2]) == ("seconds", 1.6e12)
    stamps = write(tmp_path, "stamps.csv", "user,item,time\na,x,2021-06-01 12:00:00\n")
    assert read_interactions(stamps, time_unit="datetime").frame["time"][0] == 1622548800.0


def test_blank_lines_skipped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "gaps.csv", "user,item,time\n\na,x,1\n   \nb,y,zz\n")
    assert read_interactions(write(tmp_path, "ok.csv", "user,item,time\n\na,x,1\n\n")).rows_read == 1
    raises(path, "line 5", "'zz'")


# ----------------------------------------------------------------------------- duplicates


def test_duplicates_keep_and_drop(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.csv",
                 "user,item,time\na,x,1\na,x,1\nb,y,2\na,x,2\nb,y,2\na,x,1\n")
    kept = read_interactions(path)
    assert kept.frame.height == 6 and kept.dropped == {}
    dropped = read_interactions(path, duplicates="drop")
    assert rows(dropped) == [("a", "x", 1.0), ("b", "y", 2.0), ("a", "x", 2.0)]
    assert dropped.dropped == {"duplicates": 3}
    assert dropped.rows_read == 6


# ----------------------------------------------------------------------------- errors


def test_error_missing_file(tmp_path: Path) -> None:
    raises(tmp_path / "nope.inter", "not found")


def test_error_empty_file(tmp_path: Path) -> None:
    raises(write(tmp_path, "empty.csv", ""), "empty")
    raises(write(tmp_path, "blank.inter", "\n \n"), "empty")
    raises(write(tmp_path, "header.csv", "user,item,time\n"), "no data rows")
    path = tmp_path / "none.parquet"
    pl.DataFrame({"user": [], "item": [], "time": []},
                 schema={"user": pl.String, "item": pl.String, "time": pl.Float64}).write_parquet(path)
    raises(path, "empty")


def test_error_unknown_extension(tmp_path: Path) -> None:
    message = raises(write(tmp_path, "log.json", "{}"), "fmt")
    for fmt in ("recbole", "movielens", "csv", "parquet"):
        assert fmt in message


def test_error_unknown_column_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,time\na,x,1\n")
    with pytest.raises(DataError, match="'rating'"):
        read_interactions(path, columns={"user": "user", "rating": "r"})


def test_error_missing_column_lists_found(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,product,time\na,x,1\n")
    raises(path, "item", "columns found: user, product, time")
    inter = write(tmp_path, "log.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    raises(inter, "timestamp", "user_id:token, item_id:token, rating:float")
    raises(path, "'sku'", "columns found", columns={"item": "sku"})


def test_error_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "log.inter",
                 "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\t3\n1\t2\n")
    raises(path, "line 4", "expected 3 fields", "found 2")
    ml = write(tmp_path, "ratings.dat", "1::2::3::4\n1::2::3::4::5\n")
    raises(ml, "line 2", "expected 4", "found 5")
    quoted = write(tmp_path, "q.csv", 'user,item,time\n"a",x,1\n"b",y\n')
    raises(quoted, "line 3", "expected 3", "found 2")


def test_error_non_numeric_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "log.inter",
                 "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tsoon\n")
    raises(path, "line 3", "non-numeric timestamp 'soon'", "'timestamp'")
    csv_path = write(tmp_path, "log.csv", "user,item,time\na,x,1\nb,y,2\nc,z,two\n")
    raises(csv_path, "line 4", "'two'")
    forced = write(tmp_path, "forced.csv", "user,item,time\na,x,2020-01-01\n")
    raises(forced, "line 2", "non-numeric", time_unit="s")


@pytest.mark.parametrize("row, what", [
    ("\t2\t3", "user"),
    ("1\t \t3", "item"),
    ("1\t2\t", "timestamp"),
])
def test_error_empty_fields(tmp_path: Path, row: str, what: str) -> None:
    path = write(tmp_path, "log.inter",
                 f"user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n{row}\n")
    raises(path, "line 3", what, "empty")


def test_error_missing_values_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user": ["a", None], "item": ["x", "y"], "time": [1.0, 2.0]}).write_parquet(path)
    raises(path, "row 2", "user")
    times = tmp_path / "t.parquet"
    pl.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "time": [1.0, None]}).write_parquet(times)
    raises(times, "row 2", "timestamp")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_error_non_finite_timestamp(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "u.data", f"1\t2\t3\t4\n1\t3\t3\t{value}\n")
    raises(path, "line 2", "not finite", repr(value))


def test_error_bad_datetime(tmp_path: Path) -> None:
    path = write(tmp_path, "dates.csv",
                 "user,item,time\na,x,2020-01-01T00:00:00\nb,y,2020-01-02T00:00:00\nc,z,yesterday\n")
    raises(path, "line 4", "'yesterday'", "date-time", "'time'")


def test_error_bad_options(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,time\na,x,1\n")
    for kwargs in ({"fmt": "xml"}, {"time_unit": "hours"}, {"duplicates": "merge"}):
        with pytest.raises(DataError):
            read_interactions(path, **kwargs)


def test_error_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item,time\na,x,1\nb,\xff,2\n")
    raises(path, "line 3", "UTF-8")


def test_reads_a_million_lines_quickly(tmp_path: Path) -> None:
    import time

    path = tmp_path / "ratings.dat"
    line = "6040::3952::5::956703932\n"
    path.write_text(line * 1_000_000)
    start = time.perf_counter()
    inter = read_interactions(path)
    elapsed = time.perf_counter() - start
    assert inter.rows_read == 1_000_000
    assert elapsed < 5.0
