"""Batch recommendation from a JSON-lines file: one user per line in, one result per line out."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2arec.checkpoint import atomic_write
from t2arec.data.types import DataError
from t2arec.serve.recommender import EncodedUser, Recommender, RequestError

FIELDS = {"items", "timestamps", "now"}
OPTIONAL = {"id"}


def read_requests(recommender: Recommender, path: str | Path,
                  strict: bool = False) -> tuple[list[EncodedUser], list[dict[str, Any]]]:
    """Validate every line of ``path``; a bad line raises ``DataError`` naming the line and field.

    A line is ``{"items": [raw ids], "timestamps": [seconds], "now": seconds}`` with an optional
    ``"id"`` that is copied to the output. Blank lines are skipped (they still count as lines).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    users, extras = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing, unknown = FIELDS - record.keys(), record.keys() - FIELDS - OPTIONAL
            if missing:
                raise DataError(f"{where}: {sorted(missing)[0]}: field required")
            if unknown:
                raise DataError(f"{where}: {sorted(unknown)[0]}: unknown field (expected items, timestamps, now, id)")
            try:
                users.append(recommender.encode_user((record["items"], record["timestamps"]), record["now"],
                                                     strict=strict))
            except RequestError as err:
                raise DataError(f"{where}: {err.field}: {err.reason}") from None
            extras.append({"id": record["id"]} if "id" in record else {})
    if not users:
        raise DataError(f"{path}: no requests in the file")
    return users, extras


def recommend_file(recommender: Recommender, path: str | Path, output: str | Path | None, k: int = 10,
                   align: bool = True, exclude_seen: bool = False, strict: bool = False,
                   batch_size: int | None = None) -> list[str]:
    """Recommend for every line of ``path`` in batches of ``batch_size`` users (default the
    checkpoint's ``align.batch_size``, as in evaluation). Each line is one request: in request scope
    (the recommender's ``scope``) every line takes its own alignment step, so its output does not
    depend on the other lines or on ``batch_size``; in batch scope one step covers each batch.
    Writes ``output`` atomically when given and returns the output lines."""
    batch_size = batch_size or recommender.config.align.batch_size
    if batch_size < 1 or k < 1:
        raise ValueError("--batch-size and --k must be >= 1")
    users, extras = read_requests(recommender, path, strict)
    lines = []
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        recs = recommender.recommend_encoded(chunk, k, align, exclude_seen, requests=range(len(chunk)))
        for extra, rec in zip(extras[start:start + batch_size], recs):
            lines.append(json.dumps({**extra, **rec.to_dict()}))
    if output is not None:
        text = "".join(line + "\n" for line in lines).encode("utf-8")
        atomic_write(output, lambda handle: handle.write(text))
    return lines
