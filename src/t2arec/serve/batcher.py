"""Micro-batching: requests that arrive together share one model call.

One asyncio task gathers queued requests until ``max_batch_users`` users or ``max_wait_ms`` after
the first one, then runs the batch in a single dedicated thread, so the model is never used by two
threads at once. While it computes, new requests queue up for the next batch.

The model call keeps the request boundaries (each request's users carry its label). In request scope
(``align.scope = "request"``, the serving default) every request takes its own test-time step from
the trained parameters, computed for all requests of the call at once, and the model's parameters
are never modified: a request's answer is the same whoever shares its micro-batch. In batch scope
one step covers the whole call: it changes the parameters only inside ``score_batch``, which restores
them before it returns, and the next batch starts only after that, so adapted parameters never leak
from one micro-batch to another (but a user's result depends on the micro-batch it lands in).

Within a gathered batch, requests are grouped by ``align`` (one model call per group, in arrival
order); ``k`` and ``exclude_seen`` only act on the scores, so they may differ inside a group. A
request is never split: one with more users than ``max_batch_users`` runs as a batch of its own.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from t2arec.serve.recommender import EncodedUser, NonFiniteScores, Recommendation, Recommender

T = TypeVar("T")


@dataclass
class Pending:
    users: list[EncodedUser]
    k: int
    align: bool
    exclude_seen: bool
    future: asyncio.Future
    tag: Any = None  # kept in the batch record (e.g. the request as received), for tests


@dataclass
class BatchRecord:
    """One model call: its ``align`` and the tags of its requests, in the order they were concatenated."""

    align: bool
    tags: list[Any]
    users: int


@dataclass
class BatcherStats:
    batches: int = 0
    requests: int = 0
    users: int = 0
    isolated: int = 0  # batches re-run request by request after non-finite scores
    busy_seconds: float = 0.0


@dataclass
class MicroBatcher:
    recommender: Recommender
    max_batch_users: int = 64
    max_wait_ms: float = 5.0
    record: bool = False
    records: list[BatchRecord] = field(default_factory=list)
    stats: BatcherStats = field(default_factory=BatcherStats)

    def __post_init__(self) -> None:
        if self.max_batch_users < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch_users must be >= 1 and max_wait_ms >= 0")
        self._queue: asyncio.Queue[Pending] | None = None
        self._carry: Pending | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2arec-model")
        self._task = asyncio.create_task(self._worker(), name="t2arec-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        leftovers = [self._carry] if self._carry else []
        while self._queue is not None and not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- the public side ----------------------------------------------------------------------------
    async def submit(self, users: list[EncodedUser], k: int, align: bool, exclude_seen: bool,
                     tag: Any = None) -> list[Recommendation]:
        """Queue one request (already validated and encoded) and wait for its results."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(Pending(users, k, align, exclude_seen, future, tag))
        return await future

    async def run_exclusive(self, job: Callable[[], T]) -> T:
        """Run ``job`` in the model thread, between two batches (e.g. to read the parameters)."""
        if self._executor is None:
            raise RuntimeError("the batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    # --- the worker ------------------------------------------------------------------------------------
    async def _gather(self) -> list[Pending]:
        assert self._queue is not None
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, users = [first], len(first.users)
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while users < self.max_batch_users:
            try:
                if self._queue.empty():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                else:
                    nxt = self._queue.get_nowait()
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if users + len(nxt.users) > self.max_batch_users:
                self._carry = nxt  # starts the next batch
                break
            batch.append(nxt)
            users += len(nxt.users)
        return [p for p in batch if not p.future.done()]  # a cancelled client is not computed

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            for align in (True, False):
                group = [p for p in batch if p.align == align]
                if not group:
                    continue
                start = time.perf_counter()
                outcomes, calls = await loop.run_in_executor(self._executor, self._compute, group, align)
                self.stats.busy_seconds += time.perf_counter() - start
                for call in calls:
                    self.stats.batches += 1
                    if self.record:
                        self.records.append(BatchRecord(align, [p.tag for p in call], sum(len(p.users) for p in call)))
                self.stats.isolated += len(calls) > 1
                for pending, outcome in zip(group, outcomes):
                    self.stats.requests += 1
                    self.stats.users += len(pending.users)
                    if pending.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)

    def _compute(self, group: list[Pending], align: bool) -> tuple[list[Any], list[list[Pending]]]:
        """In the model thread: one call for the group; per request when it gave non-finite scores."""
        try:
            return self._call(group, align), [group]
        except NonFiniteScores as err:
            if len(group) == 1:
                return [err], [group]
        except Exception as err:  # an unexpected failure fails this batch, not the server
            return [err] * len(group), [group]
        outcomes: list[Any] = []
        for pending in group:  # isolate the request whose inputs made the scores blow up
            try:
                outcomes += self._call([pending], align)
            except Exception as err:
                outcomes.append(err)
        return outcomes, [[p] for p in group]

    def _call(self, group: list[Pending], align: bool) -> list[list[Recommendation]]:
        users = [u for p in group for u in p.users]
        ks = [p.k for p in group for _ in p.users]
        excludes = [p.exclude_seen for p in group for _ in p.users]
        requests = [number for number, p in enumerate(group) for _ in p.users]  # request boundaries
        flat = self.recommender.recommend_encoded(users, ks, align, excludes, requests)
        out, start = [], 0
        for p in group:
            out.append(flat[start:start + len(p.users)])
            start += len(p.users)
        return out
