"""Tests for t2arec.data.download and datasets.fetch against a loopback server: verify, reuse, resume, fail."""
from __future__ import annotations

import hashlib

import pytest

from t2arec.data.datasets import URL_ENV, Dataset, fetch
from t2arec.data.download import DownloadError, download
from tests.fileserver import FileServer, closed_port_url

BODY = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable
MD5 = hashlib.md5(BODY).hexdigest()


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def dataset(md5: str | None = MD5, size: int | None = None) -> Dataset:
    return Dataset(name="toy", title="toy", url="https://example.invalid/data/toy.zip", member=None, fmt="csv",
                   size=size, checksum=None if md5 is None else ("md5", md5), licence="-", homepage="-")


@pytest.fixture
def server():
    with FileServer({"toy.zip": BODY}) as srv:
        yield srv


def test_fetch_downloads_verifies_and_reuses_the_cache_without_a_request(tmp_path, server, monkeypatch):
    monkeypatch.setenv(URL_ENV, server.url)
    path = fetch(dataset(), home=tmp_path)
    assert path == tmp_path / "toy.zip" and path.read_bytes() == BODY
    assert not (tmp_path / "toy.zip.part").exists()
    assert [r["path"] for r in server.requests] == ["toy.zip"] and server.requests[0]["range"] is None

    assert fetch(dataset(), home=tmp_path) == path
    assert len(server.requests) == 1  # the second call asked nothing


def test_a_truncated_part_is_resumed_with_a_range_request(tmp_path, server):
    (tmp_path / "toy.zip.part").write_bytes(BODY[:1000])
    path = download(f"{server.url}/toy.zip", tmp_path / "toy.zip", checksum=("md5", MD5))
    assert path.read_bytes() == BODY
    assert server.requests[0]["range"] == "bytes=1000-" and server.requests[0]["status"] == 206
    assert server.bytes_sent == len(BODY) - 1000  # only the missing bytes crossed the wire


def test_a_broken_transfer_keeps_the_part_and_the_next_call_finishes_it(tmp_path, server):
    server.cut_after = 3000
    target = tmp_path / "toy.zip"
    with pytest.raises(DownloadError) as err:
        download(f"{server.url}/toy.zip", target, checksum=("md5", MD5))
    message = one_line(err)
    assert f"{server.url}/toy.zip" in message and "3,000 of 10,240 bytes" in message and "resume" in message
    assert not target.exists() and (tmp_path / "toy.zip.part").stat().st_size == 3000

    download(f"{server.url}/toy.zip", target, checksum=("md5", MD5))
    assert target.read_bytes() == BODY
    assert server.requests[1]["range"] == "bytes=3000-"


def test_a_server_that_ignores_the_range_starts_the_part_again(tmp_path, server):
    server.ranges = False
    (tmp_path / "toy.zip.part").write_bytes(b"stale bytes from another file")
    path = download(f"{server.url}/toy.zip", tmp_path / "toy.zip", checksum=("md5", MD5))
    assert path.read_bytes() == BODY and server.requests[0]["status"] == 200


def test_a_complete_part_is_finished_after_the_server_answers_416(tmp_path, server):
    (tmp_path / "toy.zip.part").write_bytes(BODY)
    path = download(f"{server.url}/toy.zip", tmp_path / "toy.zip")  # no checksum: the served size decides
    assert path.read_bytes() == BODY and server.requests[0]["status"] == 416 and server.bytes_sent == 0


def test_a_checksum_mismatch_is_one_line_and_leaves_no_file(tmp_path, server, monkeypatch):
    monkeypatch.setenv(URL_ENV, server.url)
    with pytest.raises(DownloadError) as err:
        fetch(dataset(md5="0" * 32), home=tmp_path)
    message = one_line(err)
    assert message.startswith("toy: md5 mismatch for ") and f"{server.url}/toy.zip" in message
    assert f"got {MD5}" in message and "--data /path/to/toy.zip" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a part that could never be resumed


def test_a_size_mismatch_without_checksum_is_one_line_and_leaves_no_file(tmp_path, server, monkeypatch):
    monkeypatch.setenv(URL_ENV, server.url)
    with pytest.raises(DownloadError) as err:
        fetch(dataset(md5=None, size=len(BODY) + 5), home=tmp_path)
    assert "has 10,240 bytes, expected 10,245" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_size_only_datasets_pass_on_their_size(tmp_path, server, monkeypatch):
    monkeypatch.setenv(URL_ENV, server.url)
    assert fetch(dataset(md5=None, size=len(BODY)), home=tmp_path).read_bytes() == BODY


def test_a_cached_file_of_the_wrong_size_is_reported_not_used(tmp_path, server, monkeypatch):
    monkeypatch.setenv(URL_ENV, server.url)
    (tmp_path / "toy.zip").write_bytes(b"short")
    with pytest.raises(DownloadError) as err:
        fetch(dataset(md5=None, size=len(BODY)), home=tmp_path)
    assert "has 5 bytes, expected 10,240; delete it" in one_line(err) and server.requests == []


def test_offline_fails_in_one_line_naming_the_url_and_the_fix(tmp_path, monkeypatch):
    base = closed_port_url()
    monkeypatch.setenv(URL_ENV, base)
    with pytest.raises(DownloadError) as err:
        fetch(dataset(), home=tmp_path)
    message = one_line(err)
    assert message.startswith(f"toy: cannot download {base}/toy.zip (")
    assert "refused" in message.lower()
    assert f"download it yourself and pass --data /path/to/toy.zip, or save it as {tmp_path / 'toy.zip'}" in message
    assert not (tmp_path / "toy.zip").exists()


def test_http_errors_are_named(tmp_path, server):
    with pytest.raises(DownloadError) as err:
        download(f"{server.url}/missing.zip", tmp_path / "missing.zip")
    assert "HTTP 404" in one_line(err) and f"{server.url}/missing.zip" in str(err.value)


def test_an_unwritable_cache_is_one_line(tmp_path, server):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache folder should be
    with pytest.raises(DownloadError) as err:
        download(f"{server.url}/toy.zip", blocker / "cache" / "toy.zip")
    assert "cannot create the cache folder" in one_line(err) and "T2AREC_HOME" in str(err.value)


def test_the_progress_bar_goes_to_stderr(tmp_path, server, capsys):
    download(f"{server.url}/toy.zip", tmp_path / "toy.zip", progress=True, label="toy")
    captured = capsys.readouterr()
    assert captured.out == "" and "toy" in captured.err and "10.0k" in captured.err
