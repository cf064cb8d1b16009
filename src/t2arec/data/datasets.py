"""Public datasets by name: where each one is published, how it is checked and which file to read.

``--data ml-1m`` (or ``data.path = "ml-1m"``) downloads the publisher's archive once into the cache
(``cache_dir()``), checks it and reads the ratings file inside it; ``t2arec datasets`` prints
``REGISTRY``. A value that names an existing file is always read as a file, so a local copy wins
over a name.

Checks: GroupLens publishes an MD5 next to each MovieLens zip (``<url>.md5``); those values are
recorded here and verified. Where no publisher checksum is known (ml-latest-small, whose published
MD5 we could not confirm, and the Amazon files, which come without one) the size is verified instead:
the recorded size when it is known, else the size the server announces for the download.
"""
from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from t2arec.data.types import DataError

HOME_ENV = "T2AREC_HOME"  # the cache folder; default: the per-user cache folder of the platform
URL_ENV = "T2AREC_DATASETS_URL"  # a mirror (or a test server) that serves every file by its name


class UnknownDatasetError(DataError):
    """A ``--data`` value that is neither an existing file nor a known dataset name."""


@dataclass(frozen=True)
class Dataset:
    """One downloadable dataset and how to read it.

    ``member``: the file to read inside a zip archive (None: the download is the ratings file).
    ``fmt``/``fields``: how ``read_interactions`` reads it; ``fields`` names the columns of a file
    without a header line. ``size``: bytes of the download when known. ``checksum``: (kind, hex
    digest) published by the publisher, or None when only the size can be checked.
    """

    name: str
    title: str
    url: str
    member: str | None
    fmt: str
    size: int | None
    checksum: tuple[str, str] | None
    licence: str
    homepage: str
    ratings: int | None = None
    fields: tuple[str, ...] | None = None

    @property
    def file(self) -> str:
        """The download's file name (the cache keeps it under this name)."""
        return PurePosixPath(self.url).name

    @property
    def check(self) -> str:
        """What is verified after a download, in words for the listing."""
        if self.checksum is not None:
            return f"{self.checksum[0]} (publisher)"
        return "size" if self.size is not None else "size (as served)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "url": self.url, "member": self.member,
                "format": self.fmt, "size": self.size, "check": self.check,
                "checksum": None if self.checksum is None else {"kind": self.checksum[0], "value": self.checksum[1]},
                "licence": self.licence, "homepage": self.homepage, "ratings": self.ratings}


GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
GROUPLENS_TERMS = "GroupLens: non-commercial, no redistribution"


def _movielens(name: str, title: str, member: str, size: int, md5: str | None, ratings: int,
               page: str) -> Dataset:
    return Dataset(name=name, title=title, url=f"{GROUPLENS}{name}.zip", member=member, fmt="auto", size=size,
                   checksum=None if md5 is None else ("md5", md5), licence=GROUPLENS_TERMS,
                   homepage=f"https://grouplens.org/datasets/movielens/{page}/", ratings=ratings)


# MD5s: the values GroupLens publishes as <url>.md5, as quoted by several independent projects.
# Sizes: the archives' byte counts (tensorflow/datasets' url_checksums/movielens.txt; ml-10m from a
# project that records its size next to the same MD5). For MD5-checked archives the size is shown only.
MOVIELENS = [
    _movielens("ml-100k", "MovieLens 100K (1998)", "ml-100k/u.data", 4_924_029,
               "0e33842e24a9c977be4e0107933c0723", 100_000, "100k"),
    _movielens("ml-1m", "MovieLens 1M (2003)", "ml-1m/ratings.dat", 5_917_549,
               "c4d9eecfca2ab87c1945afe126590906", 1_000_209, "1m"),
    _movielens("ml-10m", "MovieLens 10M (2009)", "ml-10M100K/ratings.dat", 65_566_137,
               "ce571fd55effeba0271552578f2648bd", 10_000_054, "10m"),
    _movielens("ml-20m", "MovieLens 20M (2015)", "ml-20m/ratings.csv", 198_702_078,
               "cd245b17a1ae2cc31bb14903e1204af3", 20_000_263, "20m"),
    _movielens("ml-25m", "MovieLens 25M (2019)", "ml-25m/ratings.csv", 261_978_986,
               "6b51fb2759a8657d3bfcbfc42b592ada", 25_000_095, "25m"),
    # GroupLens publishes an MD5 for this one too, but we could not confirm its value: size only.
    _movielens("ml-latest-small", "MovieLens latest, small (2018; changes over time)",
               "ml-latest-small/ratings.csv", 978_202, None, 100_836, "latest"),
]

AMAZON_2018 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/"
AMAZON_TERMS = "research use, cite Ni et al. 2019"
# The per-category "ratings only" files of Amazon Review Data (2018): item,user,rating,timestamp
# without a header; the publisher gives neither checksums nor byte sizes.
AMAZON_CATEGORIES = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music",
    "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific",
    "Kindle_Store", "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)
AMAZON_FIELDS = ("item", "user", "rating", "timestamp")
AMAZON_RATINGS = {"Prime_Pantry": 471_614}


def _amazon_name(category: str) -> str:
    slug = category.lower().replace("_", "-")
    return "amazon2018-" + ("fashion" if slug == "amazon-fashion" else slug)


AMAZON = [
    Dataset(name=_amazon_name(c), title=f"Amazon Review Data (2018), {c.replace('_', ' ')}, ratings only",
            url=f"{AMAZON_2018}{c}.csv", member=None, fmt="csv", size=None, checksum=None, licence=AMAZON_TERMS,
            homepage="https://nijianmo.github.io/amazon/index.html", ratings=AMAZON_RATINGS.get(c),
            fields=AMAZON_FIELDS)
    for c in AMAZON_CATEGORIES
]

REGISTRY: dict[str, Dataset] = {d.name: d for d in MOVIELENS + AMAZON}


# ----------------------------------------------------------------------------- look-up


def _key(name: str) -> str:
    """Names match ignoring case and ``_`` versus ``-`` (``amazon2018-Prime_Pantry`` works)."""
    return name.strip().lower().replace("_", "-")


def find_dataset(name: str) -> Dataset | None:
    """The registry entry called ``name``, or None."""
    wanted = _key(name)
    return next((d for d in REGISTRY.values() if _key(d.name) == wanted), None)


def get_dataset(name: str) -> Dataset:
    """The registry entry called ``name``; ``UnknownDatasetError`` (with close matches) otherwise."""
    found = find_dataset(name)
    if found is None:
        raise UnknownDatasetError(f"{name}: no such file and not a known dataset name{suggest(name)}; "
                                  "'t2arec datasets' lists the names")
    return found


def suggest(name: str) -> str:
    """``" (did you mean 'ml-1m'?)"`` for a near miss, else ""."""
    close = difflib.get_close_matches(_key(name), list(REGISTRY), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def for_file(file_name: str, member: str | None) -> Dataset | None:
    """The entry whose download is called ``file_name`` (and holds ``member``, when one is named):
    a local copy of a known archive is read exactly like the downloaded one."""
    for d in REGISTRY.values():
        if d.file == file_name and (member is None or member == d.member):
            return d
    return None


def looks_like_path(value: str) -> bool:
    """Whether a ``--data`` value is meant as a file (so a missing one is "file not found")."""
    if any(sep in value for sep in ("/", os.sep)):
        return True
    return PurePosixPath(value).suffix != "" and find_dataset(value) is None


# ----------------------------------------------------------------------------- cache and URLs


def cache_dir() -> Path:
    """Where downloads are kept: ``$T2AREC_HOME/datasets``, else the platform's per-user cache."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "datasets"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "t2arec" / "Cache" / "datasets"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "t2arec" / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "t2arec" / "datasets"


def download_url(dataset: Dataset) -> str:
    """The publisher's URL, or ``$T2AREC_DATASETS_URL/<file>`` when a mirror is set."""
    mirror = os.environ.get(URL_ENV)
    return f"{mirror.rstrip('/')}/{dataset.file}" if mirror else dataset.url


def cached_path(dataset: Dataset, home: Path | None = None) -> Path:
    return (home or cache_dir()) / dataset.file


def fetch(dataset: Dataset | str, home: Path | None = None, progress: bool = False) -> Path:
    """The verified download of ``dataset`` in the cache, downloading it first when it is missing.

    A cached file is reused without any request (its size is checked when the registry knows it).
    Raises ``DownloadError`` (a ``DataError``) with a one-line message naming the URL on failure.
    """
    from t2arec.data.download import DownloadError, download  # urllib is only needed here

    if isinstance(dataset, str):
        dataset = get_dataset(dataset)
    target = cached_path(dataset, home)
    url = download_url(dataset)
    if target.is_file():
        size = target.stat().st_size
        if dataset.size is None or dataset.checksum is not None or size == dataset.size:
            return target
        raise DownloadError(f"{dataset.name}: the cached {target} has {size:,} bytes, expected "
                            f"{dataset.size:,}; delete it to download {url} again")
    # a publisher checksum settles it; the recorded size is then only shown, never enforced
    size = None if dataset.checksum is not None else dataset.size
    return download(url, target, size=size, checksum=dataset.checksum, progress=progress, label=dataset.name)


# ----------------------------------------------------------------------------- --data values


@dataclass(frozen=True)
class DataRef:
    """What a ``--data`` value resolved to: the file to read and how (for ``read_interactions``)."""

    path: str
    name: str  # the dataset's name in reports
    member: str | None = None
    fmt: str = "auto"
    fields: tuple[str, ...] | None = None


def resolve_data(value: str, home: Path | None = None, progress: bool = False) -> DataRef:
    """Turn a ``--data`` value into a ``DataRef``: an existing file (or ``archive.zip:member``) is
    read as given; otherwise a known dataset name is fetched into the cache."""
    from t2arec.data.archives import display_name, split_member

    archive, member = split_member(value)
    if Path(archive).exists() or looks_like_path(value):
        return DataRef(path=archive, member=member, name=display_name(archive))
    dataset = get_dataset(value)
    path = fetch(dataset, home=home, progress=progress)
    return DataRef(path=str(path), name=dataset.name, member=dataset.member, fmt=dataset.fmt,
                   fields=dataset.fields)


# ----------------------------------------------------------------------------- listing


def human_size(size: int | None) -> str:
    if size is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return ""  # unreachable


def listing(home: Path | None = None) -> list[dict[str, Any]]:
    """One row per known dataset, with whether it is already in the cache."""
    return [{**d.to_dict(), "cached": cached_path(d, home).is_file()} for d in REGISTRY.values()]


def format_listing(rows: list[dict[str, Any]]) -> str:
    """The listing as a text table (the URL last: it is the widest column)."""
    head = ("name", "size", "ratings", "check", "cached", "licence", "source")
    table = [head] + [(r["name"], human_size(r["size"]), f"{r['ratings']:,}" if r["ratings"] else "?",
                       r["check"], "yes" if r["cached"] else "no", r["licence"], r["url"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table)
