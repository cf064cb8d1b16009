"""Reading interaction files inside zip archives and gzip/zstd files, without unpacking them by hand."""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from t2arec.data.archives import display_name, inner_name, split_member
from t2arec.data.readers import read_interactions
from t2arec.data.types import DataError

ML1M_ROWS = "1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n"
ML100K_ROWS = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
CSV_ROWS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n2,5,3.0,964983000\n"
PANTRY_ROWS = "B0000DIWNI,A3RS4U2PWEJ6Y6,5.0,1404604800\nB0000DIWNI,A1Z2HXTB7EYS8R,4.0,1373068800\n"


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def rows(inter) -> list[tuple[str, str, float]]:
    return list(inter.frame.iter_rows())


def message_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_interactions(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def ml1m_zip(tmp_path: Path, ratings: str = ML1M_ROWS, name: str = "ml-1m.zip") -> Path:
    """Shaped like GroupLens' ml-1m.zip: a folder with README, movies, users and ratings."""
    return make_zip(tmp_path / name, {"ml-1m/README": "MovieLens 1M\n", "ml-1m/movies.dat": "1::Toy Story (1995)::Animation\n",
                                      "ml-1m/users.dat": "1::F::1::10::48067\n", "ml-1m/ratings.dat": ratings})


def test_ml1m_zip_reads_its_ratings_member(tmp_path):
    path = ml1m_zip(tmp_path)
    inter = read_interactions(path)
    assert rows(inter) == [("1", "1193", 978300760.0), ("1", "661", 978302109.0), ("2", "1357", 978298709.0)]
    assert inter.source == f"{path}:ml-1m/ratings.dat"


def test_errors_inside_an_archive_name_the_member_and_line(tmp_path):
    path = ml1m_zip(tmp_path, ML1M_ROWS + "3::7::4::soon\n")
    message = message_of(path)
    assert message.startswith(f"{path}:ml-1m/ratings.dat: line 4: column 'timestamp'")
    assert "non-numeric timestamp 'soon'" in message


def test_ml100k_zip_reads_u_data_not_the_splits(tmp_path):
    path = make_zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": ML100K_ROWS, "ml-100k/ua.base": "1\t1\t5\t874965758\n",
                                               "ml-100k/u1.base": "1\t1\t5\t874965758\n", "ml-100k/u.item": "1|Toy\n"})
    assert rows(read_interactions(path)) == [("196", "242", 881250949.0), ("186", "302", 891717742.0)]


def test_a_renamed_archive_picks_its_only_ratings_file(tmp_path):
    path = make_zip(tmp_path / "movies-download.zip", {"ml-20m/ratings.csv": CSV_ROWS, "ml-20m/tags.csv": "userId,movieId,tag\n",
                                                       "ml-20m/movies.csv": "movieId,title\n"})
    inter = read_interactions(path)
    assert inter.frame.height == 3 and inter.source.endswith(":ml-20m/ratings.csv")


def test_an_ambiguous_archive_lists_its_files_and_says_how_to_choose(tmp_path):
    path = make_zip(tmp_path / "two.zip", {"a/ratings.csv": CSV_ROWS, "b/ratings.dat": ML1M_ROWS, "notes.txt": "x"})
    message = message_of(path)
    assert message.startswith(f"{path}: cannot tell which file of the archive to read (3 files, 2 look like ratings")
    assert "a/ratings.csv, b/ratings.dat" in message and f"--data {path}:MEMBER" in message


@pytest.mark.parametrize("how", ["syntax", "keyword"])
def test_a_member_can_be_named(tmp_path, how):
    path = make_zip(tmp_path / "two.zip", {"a/ratings.csv": CSV_ROWS, "b/ratings.dat": ML1M_ROWS})
    inter = read_interactions(f"{path}:b/ratings.dat") if how == "syntax" else read_interactions(path, member="b/ratings.dat")
    assert inter.frame.height == 3 and inter.frame["item"].to_list() == ["1193", "661", "1357"]


def test_a_missing_member_is_named_with_what_the_archive_holds(tmp_path):
    path = ml1m_zip(tmp_path)
    message = message_of(f"{path}:ml-1m/rating.dat")
    assert "no member 'ml-1m/rating.dat'" in message and "ml-1m/ratings.dat" in message


def test_a_file_that_is_not_a_zip_is_one_line(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK this is not really a zip")
    assert "not a readable zip archive" in message_of(path)


def test_gzip_movielens_ratings(tmp_path):
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(gzip.compress(ML1M_ROWS.encode()))
    inter = read_interactions(path)
    assert inter.frame.height == 3 and inter.source == str(path)


def test_gzip_csv_keeps_line_numbers_in_errors(tmp_path):
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress((CSV_ROWS + "3,,4.0,964983001\n").encode()))
    assert message_of(path).startswith(f"{path}: line 5: column 'movieId': missing or empty item id")


def test_a_truncated_gzip_file_is_one_line(tmp_path):
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(gzip.compress(ML1M_ROWS.encode() * 50)[:40])
    assert "cannot read the gzip data" in message_of(path)


def write_zstd(path: Path, data: bytes) -> Path:
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(data)
    return path


def test_zstd_recbole_atomic_file(tmp_path):
    text = "user_id:token\titem_id:token\ttimestamp:float\n1\t10\t100\n2\t20\t200\n"
    path = write_zstd(tmp_path / "toy.inter.zst", text.encode())
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # really zstd, not stored as is
    assert rows(read_interactions(path)) == [("1", "10", 100.0), ("2", "20", 200.0)]


def test_a_corrupt_zstd_file_is_one_line(tmp_path):
    path = tmp_path / "toy.inter.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    assert "cannot read the zstd data" in message_of(path)


def test_unknown_inner_format_names_the_file(tmp_path):
    path = tmp_path / "log.bin.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n"))
    assert message_of(path).startswith(f"{path}: cannot tell the format from the file name")


def test_parquet_inside_a_zip(tmp_path):
    import polars as pl

    buffer = tmp_path / "x.parquet"
    pl.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [10, 20]}).write_parquet(buffer)
    path = tmp_path / "logs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(buffer, "logs/interactions.parquet")
    assert rows(read_interactions(path)) == [("1", "5", 10.0), ("2", "6", 20.0)]


def test_the_amazon_ratings_file_is_read_without_a_header(tmp_path):
    path = tmp_path / "Prime_Pantry.csv"
    path.write_text(PANTRY_ROWS)
    inter = read_interactions(path)  # item,user,rating,timestamp: the registry knows the layout
    assert rows(inter) == [("A3RS4U2PWEJ6Y6", "B0000DIWNI", 1404604800.0), ("A1Z2HXTB7EYS8R", "B0000DIWNI", 1373068800.0)]
    gz = tmp_path / "Prime_Pantry.csv.gz"
    gz.write_bytes(gzip.compress(PANTRY_ROWS.encode()))
    assert rows(read_interactions(gz)) == rows(inter)


def test_a_file_named_like_an_amazon_download_but_with_a_header_keeps_its_header(tmp_path):
    path = tmp_path / "Software.csv"
    path.write_text("user,item,timestamp\nu1,i1,100\nu2,i2,200\n")
    assert rows(read_interactions(path)) == [("u1", "i1", 100.0), ("u2", "i2", 200.0)]


def test_explicit_fields_name_a_headerless_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("i1,u1,100\ni2,u2,200\n")
    assert rows(read_interactions(path, fields=("item", "user", "time"))) == [("u1", "i1", 100.0), ("u2", "i2", 200.0)]
    assert "apply to csv files only" in message_of(path, fmt="movielens", fields=("a", "b", "c", "d"))


def test_names_helpers():
    assert split_member("data/ml-1m.zip:ml-1m/ratings.dat") == ("data/ml-1m.zip", "ml-1m/ratings.dat")
    assert split_member("ratings.dat") == ("ratings.dat", None)
    assert inner_name("ratings.dat.gz") == "ratings.dat" and inner_name("x.csv.zst") == "x.csv"
    assert display_name("/d/ml-1m.zip") == "ml-1m" and display_name("log.csv.gz") == "log"
