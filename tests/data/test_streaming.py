"""Logs of any size: the streaming reader and the array-based preparation give exactly what a
straightforward reading of the rules gives, keep every error message, and read Parquet datasets."""
from __future__ import annotations

import gzip
import math
import random
import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from t2arec.data import encode, prepare as prepare_module, scan
from t2arec.data.archives import Source
from t2arec.data.prepare import core_mask, prepare
from t2arec.data.readers import read_interactions
from t2arec.data.types import DataError, Interactions

WS = scan.WHITESPACE
CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


# ----------------------------------------------------------------------------- the reference


def reference(path: Path, sep: str, header: bool, columns: tuple[int, int, int], names: dict[str, str],
              min_count: int, drop_duplicates: bool, dates_ok: bool = False) -> dict:
    """What reading + preparing ``path`` must give, by the rules written out plainly (whole text
    in memory, Python lists and dicts): {"error": message} or the prepared sequences."""
    label = str(path)
    text = path.read_bytes().decode("utf-8-sig")
    rows: list[tuple[int, list[str]]] = []
    width = None
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip(WS):
            continue  # blank: no row, but counted
        if header and width is None:
            width = len(line.split(sep))
            continue
        rows.append((number, line.split(sep)))
    width = width or 4
    for number, fields in rows:
        if len(fields) != width:
            return {"error": f"{label}: line {number}: expected {width} fields separated by {sep!r}, found {len(fields)}"}
    iu, ii, it = columns
    table = [(number, f[iu].strip(WS), f[ii].strip(WS), f[it].strip(WS)) for number, f in rows]
    for role, k in (("user", 1), ("item", 2)):
        for row in table:
            if row[k] == "":
                return {"error": f"{label}: line {row[0]}: column {names[role]!r}: missing or empty {role} id"}
    for row in table:
        if row[3] == "":
            return {"error": f"{label}: line {row[0]}: column {names['time']!r}: missing or empty timestamp"}
    non_numeric = [row for row in table if not is_number(row[3])]
    if dates_ok and len(non_numeric) * 2 > len(table):
        # mostly not numbers: read as date-times; none of these values is one, so no format is
        # found and the first value is named
        return {"error": f"{label}: line {table[0][0]}: column {names['time']!r}: cannot parse "
                         f"{table[0][3]!r} as a date-time (expected ISO 8601)"}
    for row in non_numeric[:1]:
        return {"error": f"{label}: line {row[0]}: column {names['time']!r}: non-numeric timestamp {row[3]!r}"}
    for row in table:
        if not math.isfinite(float(row[3])):
            return {"error": f"{label}: line {row[0]}: column {names['time']!r}: timestamp {row[3]!r} is not finite"}
    scale = 1000.0 if statistics.median(abs(float(r[3])) for r in table) > 1e11 else 1.0
    events = [(u, i, float(t) / scale) for _, u, i, t in table]
    read = len(events)
    dropped = {}
    if drop_duplicates:
        seen: set = set()
        kept = [e for e in events if not (e in seen or seen.add(e))]
        dropped["duplicates"] = len(events) - len(kept)
        events = kept
    indexed = list(enumerate(events))
    while True:
        users = Counter(e[0] for _, e in indexed)
        items = Counter(e[1] for _, e in indexed)
        smaller = [(r, e) for r, e in indexed if users[e[0]] >= min_count and items[e[1]] >= min_count]
        if len(smaller) == len(indexed):
            break
        indexed = smaller
    dropped["k_core_filter"] = len(events) - len(indexed)
    if not indexed:
        return {"error": f"{label}: no interactions left after keeping users and items with >= {min_count} "
                         f"interactions (min_count={min_count})"}
    lengths = Counter(e[0] for _, e in indexed)
    short = [u for u in dict.fromkeys(e[0] for _, e in indexed) if lengths[u] < 3]
    if short:
        return {"error": f"{label}: {len(short)} user(s) have fewer than 3 interactions after filtering with "
                         f"min_count={min_count} (e.g. user {short[0]!r} has {lengths[short[0]]}); "
                         "leave-one-out needs >= 3, use min_count >= 3"}
    sequences: dict = {}
    for row, (u, i, t) in sorted(indexed, key=lambda x: (x[1][2], x[0])):
        sequences.setdefault(u, []).append((i, t))
    return {"sequences": sequences, "user_ids": vocabulary({e[0] for _, e in indexed}),
            "item_ids": vocabulary({e[1] for _, e in indexed}), "rows_read": read,
            "dropped": dropped, "interactions": len(indexed)}


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def vocabulary(ids: set[str]) -> list:
    if all(CANONICAL_INT.fullmatch(i) and -2**63 <= int(i) < 2**63 for i in ids):
        return sorted(int(i) for i in ids)
    return sorted(ids)


def actual(path: Path, min_count: int, drop_duplicates: bool, **kwargs) -> dict:
    """The same, from the library."""
    try:
        inter = read_interactions(path, duplicates="drop" if drop_duplicates else "keep", **kwargs)
        data = prepare(inter, "x", min_count=min_count)
    except DataError as err:
        return {"error": str(err)}
    sequences = {}
    for u, (items, times) in enumerate(zip(data.items, data.times)):
        key = data.user_ids[u]
        sequences[str(key)] = [(str(data.item_ids[i]), float(t)) for i, t in zip(items, times)]
        assert items.dtype == np.int64 and times.dtype == np.float64
    return {"sequences": sequences, "user_ids": data.user_ids, "item_ids": data.item_ids[1:],
            "rows_read": data.report.rows_read, "dropped": data.report.dropped,
            "interactions": data.report.interactions}


# ----------------------------------------------------------------------------- random logs


IDS = {"int": lambda r: str(r.randint(-2, 25)),
       "zeros": lambda r: r.choice(["7", "07", "007", "+7", "-0", "0", "12", "3", "5", "9"]),
       "text": lambda r: r.choice(["a", "b", "B", "é", "ab", "a b", "10", "9", " x ", "Zz"]) + str(r.randint(0, 3))}
BAD = {"user": lambda f: f.__setitem__(0, r" "), "item": lambda f: f.__setitem__(1, ""),
       "time": lambda f: f.__setitem__(3, random.Random(len(f)).choice(["", "soon", "inf", "-inf", "1e999"])),
       "short": lambda f: f.pop(), "long": lambda f: f.append("x")}


def random_log(tmp_path: Path, seed: int, fmt: str, bad: int) -> tuple[Path, dict]:
    """A log with ties, duplicates, blank lines, CRLF and ``bad`` broken rows; returns the file
    and how to read it with ``reference``."""
    r = random.Random(seed)
    kind = r.choice(list(IDS))
    users = [IDS[kind](r) for _ in range(r.randint(2, 7))]
    items = [IDS[kind](r) for _ in range(r.randint(2, 7))]
    big = r.random() < 0.2  # milliseconds
    lines = []
    for _ in range(r.randint(1, 80)):
        t = r.choice([r.randint(0, 9), -r.randint(0, 3), 0]) * (1_000_000_000_000 if big else 1)
        time = r.choice([str(t), str(t), f"{t}.0", f"{t}.5", "-0"])
        row = [r.choice(users), r.choice(items), str(r.randint(1, 5)), time]
        lines.append(list(lines[-1]) if lines and r.random() < 0.15 else row)
    for _ in range(bad):
        BAD[r.choice(list(BAD))](lines[r.randrange(len(lines))])
    eol = r.choice(["\n", "\r\n"])
    if fmt == "recbole":
        sep, header, path = "\t", "user_id:token\titem_id:token\trating:float\ttimestamp:float", tmp_path / f"log{seed}.inter"
        names = {"user": "user_id", "item": "item_id", "time": "timestamp"}
    elif fmt == "csv":
        sep, header, path = ",", "user,item,rating,time", tmp_path / f"log{seed}.csv"
        names = {"user": "user", "item": "item", "time": "time"}
    else:
        sep, header, path = "::", None, tmp_path / f"log{seed}.dat"
        names = {"user": "user", "item": "item", "time": "timestamp"}
    body = [sep.join(f) for f in lines]
    for _ in range(r.randint(0, 3)):
        body.insert(r.randint(0, len(body)), r.choice(["", "  ", "\t"]))
    text = eol.join(([header] if header else []) + body) + r.choice([eol, ""])
    path.write_text(("\ufeff" if r.random() < 0.1 else "") + text, encoding="utf-8", newline="")
    how = {"sep": sep, "header": header is not None, "columns": (0, 1, 3), "names": names, "dates_ok": fmt == "csv"}
    return path, how


@pytest.mark.parametrize("fmt", ["recbole", "csv", "movielens"])
@pytest.mark.parametrize("seed", range(12))
def test_same_as_the_plain_rules_on_random_logs(tmp_path: Path, fmt: str, seed: int) -> None:
    for bad in (0, 0, 1, 3):
        for min_count in (0, 1, 2):
            for drop in (False, True):
                path, how = random_log(tmp_path, seed * 100 + bad, fmt, bad)
                want = reference(path, min_count=min_count, drop_duplicates=drop, **how)
                got = actual(path, min_count, drop)
                assert got == want, (path.read_text(), min_count, drop)


def test_the_prepared_arrays_are_what_the_rules_say_on_a_bigger_log(tmp_path: Path) -> None:
    """Thousands of rows with many ties and several k-core passes, through the whole radix sort."""
    rng = np.random.default_rng(5)
    n = 6000
    frame = pl.DataFrame({"user": rng.zipf(1.6, n) % 90_000 + 70_000,  # two 16-bit digits of users
                          "item": rng.zipf(1.4, n) % 300, "time": rng.integers(-50, 50, n) * 1.5})
    path = tmp_path / "big.csv"
    frame.write_csv(path)
    how = {"sep": ",", "header": True, "columns": (0, 1, 2), "names": {"user": "user", "item": "item", "time": "time"}}
    want = reference(path, min_count=3, drop_duplicates=False, **how)
    assert "sequences" in want and want["dropped"]["k_core_filter"] > 0
    assert actual(path, 3, False) == want


# ----------------------------------------------------------------------------- pieces


def test_whitespace_is_what_polars_strips() -> None:
    chars = [chr(c) for c in range(0x3100)]
    series = pl.Series(chars)
    assert set(series.filter(series.str.strip_chars() == "").to_list()) == set(WS)


@pytest.mark.parametrize("seed", range(5))
def test_radix_order_is_lexsort_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    user = rng.integers(0, 200_000 if seed % 2 else 50, n).astype(np.uint32)
    time = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 1e9, 1e9 + 1, 3.0]), n)
    keep = rng.random(n) < 0.8
    index = np.full(200_000, -1, dtype=np.int64)
    present = np.unique(user[keep])
    index[present] = rng.permutation(len(present))  # any dense numbering
    rows = np.flatnonzero(keep)
    want = rows[np.lexsort((time[rows], index[user[rows]]))]  # -0.0 == 0.0 for lexsort: file order
    assert np.array_equal(prepare_module._user_time_order(user, time, keep, index), want)


def test_median_test_matches_polars_median() -> None:
    rng = np.random.default_rng(0)
    pool = np.array([0.0, -0.0, 5.0, -5.0, 9.0, 10.0, 11.0, -10.0, 1e12, 7.5, 12.5])
    for _ in range(3000):
        values = rng.choice(pool, rng.integers(1, 8))
        threshold = rng.choice([10.0, 7.5, 5.0, 0.0])
        want = float(pl.Series(values).abs().median()) > threshold
        assert encode.median_magnitude_exceeds(values, threshold) == want, (values, threshold)


def test_core_mask_needs_several_passes() -> None:
    # u4 keeps a, b, e after one pass; e goes in the second, u4 in the third
    pairs = [(u, i) for u, items in {0: "abc", 1: "abc", 2: "abc", 3: "abe", 4: "ex", 5: "ey"}.items() for i in items]
    user = np.array([u for u, _ in pairs], dtype=np.uint32)
    item = np.array(["abcexy".index(i) for _, i in pairs], dtype=np.uint32)
    assert core_mask(user, item, 3).tolist() == [True] * 9 + [False] * 7


def test_interactions_keep_compact_codes_and_decode_to_the_frame() -> None:
    frame = pl.DataFrame({"user": ["b", "a", "b"], "item": ["x", "x", "007"], "time": [3.0, 1.0, 2.0]})
    inter = Interactions(frame=frame, source="s", time_unit="seconds", rows_read=3)
    assert inter.codes.dtypes == [pl.UInt32, pl.UInt32, pl.Float64]
    assert inter.frame.equals(frame)
    assert inter.user_ids.gather(inter.codes["user"]).to_list() == ["b", "a", "b"]


def test_reading_never_loads_the_whole_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain and compressed files are scanned from disk, never read into one bytes object."""
    def refuse(*args, **kwargs):
        raise AssertionError("read the whole file into memory")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    monkeypatch.setattr(Source, "read_bytes", refuse)
    text = "user,item,time\n" + "".join(f"u{k % 7},i{k % 5},{k}\n" for k in range(50))
    plain = tmp_path / "log.csv"
    with open(plain, "w") as handle:
        handle.write(text)
    packed = tmp_path / "log.csv.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(text)
    assert read_interactions(plain).rows_read == 50
    assert read_interactions(packed).frame.equals(read_interactions(plain).frame)


# ----------------------------------------------------------------------------- messages


def message(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_interactions(path, **kwargs)
    return str(info.value)


def test_a_malformed_line_is_reported_before_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,product,time\n" + "a,x,1\n" * 30 + "b,y\n")
    assert message(path) == f"{path}: line 32: expected 3 fields separated by ',', found 2"
    path.write_text("user,product,time\n" + "a,x,1\n" * 30)
    assert "missing item column" in message(path)


def test_rules_are_checked_in_their_order_over_the_whole_file(tmp_path: Path) -> None:
    """Field counts, then user ids, then item ids, then timestamps, each over every line: the
    first rule broken anywhere is reported, at its first line."""
    path = tmp_path / "log.inter"
    lines = ["user_id:token\titem_id:token\ttimestamp:float", "1\t2\t3", "1\t\tsoon", "1\t2\tlater", "\t2\t3",
             "1\t2\t3"]
    path.write_text("\n".join(lines) + "\n")
    assert message(path) == f"{path}: line 5: column 'user_id': missing or empty user id"
    path.write_text("\n".join(lines + ["1\t2"]) + "\n")
    assert message(path) == f"{path}: line 7: expected 3 fields separated by '\\t', found 2"
    lines[4] = "1\t2\t3"  # no user problem left: the empty item id on line 3 comes next
    path.write_text("\n".join(lines) + "\n")
    assert message(path) == f"{path}: line 3: column 'item_id': missing or empty item id"


def test_bad_utf8_anywhere_is_reported_before_a_header_problem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(scan, "SEARCH_BLOCK", 7)  # blocks cut through lines and characters
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,product,time\n" + "é,ü,1\n".encode() * 20 + b"b,\xc3,2\n")
    assert message(path) == f"{path}: line 22: not valid UTF-8 text"
    path.write_bytes(b"user,item,time\n" + "é,ü,1\n".encode() * 20 + b"b,\xff,2\n" + b"c,z,3\n")
    assert message(path) == f"{path}: line 22: not valid UTF-8 text"


def test_quoted_csv_is_parsed_in_chunks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(scan, "QUOTED_CHUNK", 3)
    path = tmp_path / "q.csv"
    rows = [f'"u,{k % 3}",i{k % 4},{k}' for k in range(10)]
    path.write_text("user,item,time\n" + "\n".join(rows[:5]) + '\n\n"multi\nline",z,99\n' + "\n".join(rows[5:]) + "\n")
    inter = read_interactions(path)
    assert inter.rows_read == 11
    assert inter.frame.row(5) == ("multi\nline", "z", 99.0)
    assert inter.frame["user"].to_list()[:3] == ["u,0", "u,1", "u,2"]
    path.write_text(path.read_text() + "u9,i9,later\n")
    assert message(path) == f"{path}: line 15: column 'time': non-numeric timestamp 'later'"


def test_date_times_are_parsed_with_the_format_of_the_first_value(tmp_path: Path) -> None:
    """Polars infers one format from a column's first parsable value: a time-zone-aware first value
    makes naive ones unreadable, as reading the whole column at once would, whatever the batch."""
    batch = pl.Series(["2020-01-03T10:00:00"])
    assert encode._parse_after("2020-01-02T10:00:00+02:00", batch).to_list() == [None]
    assert encode._parse_after("2020-01-02T10:00:00", batch).to_list() == [1578045600.0]
    path = tmp_path / "dates.csv"
    path.write_text("user,item,time\nnot,a,date\na,x,2020-01-02T10:00:00+02:00\nb,y,2020-01-03T10:00:00\n")
    assert message(path) == (f"{path}: line 2: column 'time': cannot parse 'date' as a date-time "
                             "(expected ISO 8601, same format on every line)")
    path.write_text("user,item,time\na,x,2020-01-02T10:00:00+02:00\nb,y,2020-01-03T10:00:00\n")
    assert message(path).startswith(f"{path}: line 3: column 'time': cannot parse '2020-01-03T10:00:00'")
    path.write_text("user,item,time\na,x,noon\nb,y,dusk\n")
    assert message(path) == f"{path}: line 2: column 'time': cannot parse 'noon' as a date-time (expected ISO 8601)"


# ----------------------------------------------------------------------------- Parquet datasets


def write_dataset(root: Path) -> Path:
    """Hive-partitioned like Spark writes it, with the files Spark adds beside the data."""
    parts = {"day=2020-01-01": [("1", "a", 30), ("2", "b", 10), ("3", "a", 5)],
             "day=2020-01-02": [("1", "b", 40), ("2", "a", 45), ("3", "b", 41)],
             "day=2020-01-03": [("2", "c", 50), ("3", "c", 60), ("1", "c", 70)]}
    for folder, rows in parts.items():
        (root / folder).mkdir(parents=True)
        pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "ts": pl.Int64},
                     orient="row").write_parquet(root / folder / "part-00000-x.snappy.parquet")
        (root / folder / ".part-00000-x.snappy.parquet.crc").write_bytes(b"crc")
    (root / "_SUCCESS").write_bytes(b"")
    (root / "_temporary" / "0").mkdir(parents=True)  # a task's unfinished output: not data
    (root / "_temporary" / "0" / "part-00009.parquet").write_bytes(b"PAR1 half-written")
    return root


def test_a_hive_partitioned_parquet_directory_is_a_log(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "events")
    inter = read_interactions(root)
    assert inter.source == str(root)
    assert inter.frame.rows()[:4] == [("1", "a", 30.0), ("2", "b", 10.0), ("3", "a", 5.0), ("1", "b", 40.0)]
    assert inter.rows_read == 9
    by_day = read_interactions(root, columns={"time": "day"})  # a partition key is a column too
    assert by_day.time_unit == "datetime" and by_day.frame["time"][3] == 1577923200.0
    data = prepare(inter, "events", min_count=0)
    assert data.user_ids == [1, 2, 3] and [s.tolist() for s in data.items] == [[1, 2, 3], [2, 1, 3], [1, 2, 3]]


def test_dataset_errors_name_the_part_file_and_its_row(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "events")
    bad = root / "day=2020-01-03" / "part-00000-x.snappy.parquet"
    pl.DataFrame({"user_id": ["2", None], "item_id": ["a", "b"], "ts": [1, 2]}).write_parquet(bad)
    assert message(root) == f"{bad}: row 2: column 'user_id': missing or empty user id"
    assert "directory" in message(root, fmt="csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert message(empty).startswith(f"{empty}: is a directory with no Parquet files")


def test_a_directory_works_as_data_path(tmp_path: Path) -> None:
    from t2arec.config import DataConfig, RunConfig
    from t2arec.pipeline import load_data

    root = write_dataset(tmp_path / "events")
    data = load_data(RunConfig(data=DataConfig(path=str(root) + "/", min_count=0)))
    assert (data.num_users, data.num_items, data.num_interactions) == (3, 3, 9)
    assert data.report.name == "events"
