"""Tests for t2arec.data.datasets: the registry, the cache folder and what a --data value resolves to."""
from __future__ import annotations

import re
import zipfile

import pytest

from t2arec.data import datasets
from t2arec.data.datasets import (HOME_ENV, REGISTRY, URL_ENV, DataRef, UnknownDatasetError, cache_dir, for_file,
                                  format_listing, get_dataset, listing, resolve_data)
from t2arec.data.types import DataError
from tests.fileserver import closed_port_url

REQUIRED = ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "amazon2018-prime-pantry"]


def test_the_registry_has_the_required_datasets_each_fully_described():
    assert set(REQUIRED) <= set(REGISTRY)
    assert sum(name.startswith("amazon2018-") for name in REGISTRY) == 29  # every 2018 category file
    for d in REGISTRY.values():
        assert d.url.startswith("https://") and d.licence and d.homepage.startswith("https://")
        assert d.file == d.url.rsplit("/", 1)[1]
        if d.checksum is not None:
            kind, value = d.checksum
            assert kind == "md5" and re.fullmatch(r"[0-9a-f]{32}", value)


def test_movielens_archives_are_checked_by_the_publishers_md5_except_latest_small():
    for name in ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m"]:
        assert REGISTRY[name].check == "md5 (publisher)" and REGISTRY[name].url.endswith(f"/{name}.zip")
    assert REGISTRY["ml-1m"].checksum == ("md5", "c4d9eecfca2ab87c1945afe126590906")
    assert REGISTRY["ml-latest-small"].check == "size" and REGISTRY["ml-latest-small"].size == 978_202
    pantry = REGISTRY["amazon2018-prime-pantry"]
    assert pantry.check == "size (as served)" and pantry.url.endswith("/Prime_Pantry.csv")
    assert pantry.fields == ("item", "user", "rating", "timestamp") and pantry.member is None


def test_each_archive_names_the_ratings_file_in_its_layout():
    members = {name: REGISTRY[name].member for name in ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small"]}
    assert members == {"ml-100k": "ml-100k/u.data", "ml-1m": "ml-1m/ratings.dat", "ml-10m": "ml-10M100K/ratings.dat",
                       "ml-20m": "ml-20m/ratings.csv", "ml-25m": "ml-25m/ratings.csv",
                       "ml-latest-small": "ml-latest-small/ratings.csv"}


def test_names_match_loosely_and_unknown_names_get_suggestions():
    assert get_dataset("ML-1M").name == "ml-1m"
    assert get_dataset("amazon2018-Prime_Pantry").name == "amazon2018-prime-pantry"
    with pytest.raises(UnknownDatasetError) as info:
        get_dataset("ml1m")
    message = str(info.value)
    assert "not a known dataset name (did you mean 'ml-1m'" in message and "t2arec datasets" in message
    assert isinstance(info.value, DataError) and "\n" not in message


def test_for_file_recognises_known_downloads():
    assert for_file("ml-1m.zip", None).name == "ml-1m"
    assert for_file("ml-1m.zip", "ml-1m/users.dat") is None
    assert for_file("Prime_Pantry.csv", None).name == "amazon2018-prime-pantry"
    assert for_file("ratings.csv", None) is None


def test_the_cache_folder_follows_t2arec_home_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.sys, "platform", "linux")
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "datasets"
    monkeypatch.delenv(HOME_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "t2arec" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "t2arec" / "datasets"


def test_an_existing_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ml-1m").write_text("1::2::3::4\n")
    assert resolve_data("ml-1m") == DataRef(path="ml-1m", name="ml-1m")


def test_paths_resolve_to_themselves_with_a_report_name(tmp_path):
    assert resolve_data(str(tmp_path / "ratings.dat.gz")) == DataRef(path=str(tmp_path / "ratings.dat.gz"), name="ratings")
    ref = resolve_data(f"{tmp_path}/x.zip:a/ratings.csv")
    assert (ref.path, ref.member, ref.name) == (f"{tmp_path}/x.zip", "a/ratings.csv", "x")
    assert resolve_data("missing.csv").path == "missing.csv"  # a path: the reader says "file not found"


def test_a_cached_name_resolves_without_any_request(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.setenv(URL_ENV, closed_port_url())  # any request would fail
    cached = tmp_path / "datasets" / "ml-1m.zip"
    cached.parent.mkdir()
    with zipfile.ZipFile(cached, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", "1::2::3::4\n")
    ref = resolve_data("ml-1m")
    assert ref == DataRef(path=str(cached), name="ml-1m", member="ml-1m/ratings.dat", fmt="auto")
    amazon = tmp_path / "datasets" / "Prime_Pantry.csv"
    amazon.write_text("i,u,5.0,100\n")
    assert resolve_data("amazon2018-prime-pantry").fields == ("item", "user", "rating", "timestamp")


def test_the_listing_has_sizes_checks_licences_and_sources(tmp_path):
    rows = listing(home=tmp_path)
    assert [r["name"] for r in rows] == list(REGISTRY) and not any(r["cached"] for r in rows)
    text = format_listing(rows)
    header, *lines = text.splitlines()
    assert header.split()[:6] == ["name", "size", "ratings", "check", "cached", "licence"]
    ml1m = next(line for line in lines if line.startswith("ml-1m "))
    for part in ["5.9 MB", "1,000,209", "md5 (publisher)", "GroupLens", "https://files.grouplens.org/datasets/movielens/ml-1m.zip"]:
        assert part in ml1m
    pantry = next(line for line in lines if line.startswith("amazon2018-prime-pantry "))
    assert "unknown" in pantry and "size (as served)" in pantry and pantry.endswith("/Prime_Pantry.csv")
