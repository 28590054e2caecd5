"""Every error answer has one shape, `{"error", "message", "field"}`: the project's own `ApiError`s, FastAPI's
validation errors (the first one, with the JSON path of its field) and Starlette's HTTP errors."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.schemas import ErrorBody
from server.solve import ApiError


def field_of(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def unparsable(cause: BaseException) -> str:
    """Why a body that is not a JSON decode error still failed to parse (too deep, a huge number, not UTF-8)."""
    if isinstance(cause, RecursionError):
        return "body is not valid JSON: nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "body is not valid JSON: not UTF-8 text"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "body is not valid JSON: a number has too many digits"
    return f"body could not be parsed ({type(cause).__name__})"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in the one error shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({**exc.body(), **exc.extra}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        body = ErrorBody(error=kinds.get(exc.status_code, "http_error"), message=str(exc.detail), field=None)
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body at all
            body = ErrorBody(error="invalid_request", message=unparsable(exc.__cause__), field="body")
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = field_of(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid')}"
        if first.get("type") == "json_invalid":  # loc is ("body", character offset): name the body, not "[30]"
            field = "body"
            ctx = first.get("ctx")
            reason = ctx.get("error", "decode error") if isinstance(ctx, dict) else "decode error"
            offset = tuple(first.get("loc", ("body", "?")))[-1]
            message = f"body is not valid JSON: {reason} at character {offset}"
        return JSONResponse(
            ErrorBody(error="invalid_request", message=message, field=field).model_dump(), status_code=422
        )
