"""A loopback HTTP file server for the download tests: Range requests, counted bytes, broken transfers.

No test touches the internet: datasets are "downloaded" from here (``T2AREC_DATASETS_URL``).
"""
from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RANGE = re.compile(r"bytes=(\d+)-$")


class FileServer:
    """Serves ``files`` (name -> bytes) at ``url`` + "/" + name on 127.0.0.1.

    ``requests``: one dict per GET (path, range header, status, bytes sent).
    ``ranges``: honour Range requests (False: always answer 200 with the whole file).
    ``cut_after``: send only this many body bytes of the next response, then close the connection.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[dict[str, Any]] = []
        self.ranges = True
        self.cut_after: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def bytes_sent(self) -> int:
        return sum(r["sent"] for r in self.requests)

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        record = {"path": self.path.lstrip("/"), "range": self.headers.get("Range"), "status": 0, "sent": 0}
        owner.requests.append(record)
        body = owner.files.get(record["path"])
        if body is None:
            record["status"] = 404
            self.send_error(404, "Not Found")
            return
        start = 0
        match = RANGE.match(record["range"] or "")
        if match and owner.ranges:
            start = int(match.group(1))
            if start >= len(body):
                record["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            record["status"] = 206
        else:
            self.send_response(200)
            record["status"] = 200
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))  # announced in full, even when cut below
        self.end_headers()
        if owner.cut_after is not None:
            payload, owner.cut_after = payload[: owner.cut_after], None
            self.close_connection = True
        self.wfile.write(payload)
        record["sent"] = len(payload)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


def closed_port_url() -> str:
    """A loopback URL on which nothing listens: connecting is refused at once, as when offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
