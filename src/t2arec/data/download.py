"""Download one file over HTTP(S): resumable, verified, and in place only once it is whole.

The bytes go to ``<target>.part``. A later call continues that file with an HTTP Range request
(a server that ignores the range sends the whole file again, which starts the part afresh). The
part becomes ``<target>`` by an atomic rename only after its size and checksum are verified, so
``<target>`` is never a partial or unverified file. A part that fails its checksum is deleted: it
cannot be repaired by resuming. Every failure is one ``DownloadError`` line naming the URL, what
went wrong and how to use a copy downloaded by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from t2arec.data.types import DataError

CHUNK = 1 << 16
TIMEOUT = 30.0  # seconds without an answer (connect or read) before giving up
CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(DataError):
    """A dataset could not be downloaded or failed its check; the message is one line."""


Fail = Callable[[str], DownloadError]


def download(url: str, target: str | Path, size: int | None = None, checksum: tuple[str, str] | None = None,
             progress: bool = False, label: str | None = None, timeout: float = TIMEOUT) -> Path:
    """Download ``url`` to ``target`` (resuming ``target.part``) and return ``target``.

    ``size``: the expected byte count, checked when given (else the size the server announces is).
    ``checksum``: ``(kind, hex)`` with kind "md5" or "sha256", checked when given.
    ``label`` names the download in messages (default: the file name).
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    label = label or target.name
    hint = f"download it yourself and pass --data /path/to/{target.name}, or save it as {target}"

    def fail(what: str) -> DownloadError:
        return DownloadError(f"{label}: {what}; {hint}")

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"{label}: cannot create the cache folder {target.parent} "
                            f"({err.strerror or err}); set T2AREC_HOME to a writable folder") from None
    announced = _transfer(url, part, size, progress, timeout, label, fail)
    _verify(part, url, size, announced, checksum, fail)
    os.replace(part, target)  # atomic: readers see no file or the whole verified file
    _sync_dir(target.parent)
    return target


def _transfer(url: str, part: Path, size: int | None, progress: bool, timeout: float, label: str,
              fail: Fail) -> int | None:
    """Bring ``part`` up to the whole file; return the total size the server announced, if it did."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        return size  # nothing left to ask for (a part that is too long fails the size check)
    headers = {"User-Agent": "t2arec"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part already holds every byte there is
            return _content_range(err.headers.get("Content-Range"))[1]
        raise fail(f"cannot download {url} (HTTP {err.code} {err.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise fail(f"cannot download {url} ({reason})") from None

    with response:
        start, total = _content_range(response.headers.get("Content-Range"))
        if response.status != 206 or start != offset:
            offset, total = 0, _content_length(response)  # a whole file: start the part again
        written = _copy(response, part, offset, total, progress, label, url, fail)
    if total is not None and written < total:
        raise fail(f"the connection to {url} closed after {written:,} of {total:,} bytes; "
                   "run the same command again to resume")
    return total


def _copy(response: http.client.HTTPResponse, part: Path, offset: int, total: int | None, progress: bool,
          label: str, url: str, fail: Fail) -> int:
    """Append the response body to ``part`` (from ``offset``); return the part's size after it."""
    from tqdm import tqdm

    written = offset
    try:
        with open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                     disable=not progress, file=sys.stderr) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException):
                    break  # what arrived is kept; the caller reports how far it got
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except OSError as err:  # the disk, not the network: full, read-only, ...
        raise fail(f"cannot write {part} ({err.strerror or err})") from None
    return written


def _verify(part: Path, url: str, size: int | None, announced: int | None, checksum: tuple[str, str] | None,
            fail: Fail) -> None:
    """Check the finished part: the expected size (else the announced one), then the checksum.

    A part shorter than the server's file can still be resumed and is kept; any other mismatch
    means the file is not the one expected, and the part is removed.
    """
    got = part.stat().st_size
    expected = size if size is not None else announced
    if expected is not None and got != expected:
        if got < expected and (announced is None or got < announced):
            raise fail(f"the download of {url} stopped after {got:,} of {expected:,} bytes; "
                       "run the same command again to resume")
        part.unlink()
        raise fail(f"the download of {url} has {got:,} bytes, expected {expected:,} (the download was removed)")
    if checksum is not None:
        kind, expected = checksum
        digest = file_digest(part, kind)
        if digest != expected.lower():
            part.unlink()
            raise fail(f"{kind} mismatch for {url}: got {digest}, expected {expected} (the download was removed)")


def file_digest(path: Path, kind: str) -> str:
    """Hex digest (``kind``: md5, sha256, ...) of a file, read in chunks."""
    digest = hashlib.new(kind)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None for what it does not say."""
    match = CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _sync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); other platforms cannot open a directory."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
