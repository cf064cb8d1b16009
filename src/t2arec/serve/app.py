"""The HTTP service: FastAPI app with POST /recommend, GET /health and GET /metadata.

Every 4xx body has the same shape, ``{"error": "<field>: <what is wrong>", "errors": [{"field",
"message"}, ...]}``, where a field reads like ``users[2].timestamps[3]``. Requests are validated
and mapped to item indices before they are queued, so a bad request never reaches a micro-batch.
"""
import dataclasses
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from t2arec.serve.batcher import MicroBatcher
from t2arec.serve.recommender import NonFiniteScores, Recommender, RequestError


@dataclass
class ServeSettings:
    max_batch_users: int = 64  # users per micro-batch (one model call)
    max_wait_ms: float = 5.0  # how long the first request of a micro-batch waits for company
    max_users: int = 256  # users per request
    max_history: int = 1000  # interactions per user
    max_body_bytes: int = 1_048_576  # larger bodies get 413 before they are parsed
    max_k: int = 100
    record_batches: bool = False  # keep every micro-batch's composition (tests)

    def __post_init__(self) -> None:
        for name in ("max_batch_users", "max_users", "max_history", "max_body_bytes", "max_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


def error_body(errors: list[tuple[str, str]]) -> dict[str, Any]:
    field, message = errors[0]
    return {"error": f"{field}: {message}" if field else message,
            "errors": [{"field": f, "message": m} for f, m in errors]}


def field_name(loc: tuple[Any, ...]) -> str:
    """("body", "users", 2, "timestamps") -> "users[2].timestamps"."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


UNION_TAGS = {"int", "str"}  # pydantic adds the union member to the location of an ItemId error


def validation_errors(exc: RequestValidationError) -> list[tuple[str, str]]:
    out: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            out.setdefault("body", []).append(f"invalid JSON ({reason}) at character {loc[-1]}"
                                              if loc and isinstance(loc[-1], int) else f"invalid JSON ({reason})")
            continue
        if len(loc) > 1 and loc[-1] in UNION_TAGS and isinstance(loc[-2], int) and "items" in loc:
            out.setdefault(field_name(loc[:-1]), []).append("item ids must be integers or strings")
            continue
        out.setdefault(field_name(loc), []).append(str(err.get("msg", "invalid value")))
    return [(field, "; ".join(dict.fromkeys(messages))) for field, messages in out.items()]


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies over ``max_bytes`` with 413 before parsing."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than the limit of {self.max_bytes} bytes"
        await JSONResponse(error_body([("body", message)]), status_code=413)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                await JSONResponse(error_body([("content-length", "not an integer")]), 400)(scope, receive, send)
                return
            if too_big:
                await self._refuse(scope, receive, send)
                return
        chunks, total = [], 0
        while True:  # read (and count) the whole body, whatever the headers said
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(recommender: Recommender, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    Time = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    ItemId = Union[StrictInt, StrictStr]

    class UserHistory(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[ItemId] = Field(min_length=1, max_length=settings.max_history,
                                    description="Raw item ids, oldest first.")
        timestamps: list[Time] = Field(min_length=1, max_length=settings.max_history,
                                       description="Unix seconds, one per item, non-decreasing.")
        now: Time = Field(description="The time of the predicted interaction, >= the last timestamp.")

    sample = recommender.item_ids[1:4]
    example = {"users": [{"items": sample, "timestamps": [1_700_000_000.0 + 600 * j for j in range(len(sample))],
                          "now": 1_700_003_600.0}], "k": min(10, settings.max_k)}

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})
        users: list[UserHistory] = Field(min_length=1, max_length=settings.max_users)
        k: int = Field(10, ge=1, le=settings.max_k, strict=True)
        align: StrictBool = Field(True, description="Run test-time alignment, when the model aligns (GET /metadata: "
                                  "aligns; false when no step was chosen on validation). With align_scope 'request' "
                                  "(the default) the users of this request take their own step, whatever else the "
                                  "server is doing; with 'batch' the whole micro-batch shares one.")
        exclude_seen: StrictBool = Field(False, description="Never recommend an item of the history.")
        strict: StrictBool = Field(False, description="Unknown item ids are an error instead of skipped.")

    class UserResult(BaseModel):
        items: list[ItemId]
        scores: list[float]
        skipped: int = Field(description="Unknown item ids left out of this history.")

    class RecommendResponse(BaseModel):
        results: list[UserResult]

    class FieldError(BaseModel):
        field: str
        message: str

    class ErrorResponse(BaseModel):
        error: str
        errors: list[FieldError]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(recommender, settings.max_batch_users, settings.max_wait_ms,
                               record=settings.record_batches)
        await batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="t2arec", version="0.1.0", lifespan=lifespan,
                  description="Sequential recommendation with test-time alignment (T2ARec).")
    app.state.recommender, app.state.settings = recommender, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    errors = {413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(validation_errors(exc)), status_code=422)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body([(exc.location, exc.reason)]), status_code=422)

    @app.exception_handler(NonFiniteScores)
    async def on_non_finite(request: Request, exc: NonFiniteScores) -> JSONResponse:
        message = "the model produced non-finite scores for these inputs; check the timestamps"
        return JSONResponse(error_body([("users", message)]), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = "body" if exc.status_code == 400 else ""  # FastAPI's 400: a body it could not decode
        return JSONResponse(error_body([(field, str(exc.detail))]), status_code=exc.status_code, headers=exc.headers)

    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k raw item ids for each user, in request order. The users of this request take one
        test-time step of their own (align_scope "request", the default), so the answer depends on
        this request alone; in "batch" scope they share the step of their micro-batch."""
        users = [recommender.encode_user((u.items, u.timestamps), u.now, i, body.strict)
                 for i, u in enumerate(body.users)]
        tag = body if settings.record_batches else None
        results = await app.state.batcher.submit(users, body.k, body.align, body.exclude_seen, tag)
        return {"results": [r.to_dict() for r in results]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, and a sha256 of the current parameters (read between micro-batches)."""
        batcher: MicroBatcher = app.state.batcher
        digest = await batcher.run_exclusive(recommender.parameter_digest)
        return {"status": "ok", "parameters_sha256": digest, "batches": batcher.stats.batches,
                "requests": batcher.stats.requests, "users": batcher.stats.users}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """The model, its config, the item vocabulary's size and a sample of it, whether and how it
        aligns (``align_scope``: "request" or "batch"), and the limits."""
        return {"model": recommender.model_name, "config": recommender.config.to_dict(),
                "num_items": recommender.num_items, "item_id_type": "int" if recommender.integer_ids else "str",
                "item_sample": recommender.item_ids[1:101], "max_len": recommender.max_len,
                "time_unit": "seconds", "aligns": recommender.aligns, "align_scope": recommender.scope,
                "limits": dataclasses.asdict(settings)}

    return app
