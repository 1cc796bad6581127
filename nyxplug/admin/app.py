"""The admin API as an ASGI app (Starlette), built from ``OPERATIONS``.

Each call goes through the same steps: where it comes from (loopback or a Unix socket,
else 403), the bearer token (constant-time compare, else 401), the body cap (413), the
query and body decoded into the operation's msgspec types (400), the handler, and the
answer - the operation's type as JSON, or an RFC 9457 problem built from the typed
nyxplug error, with the message users see elsewhere. Refused calls and every mutating
call are written to the host's audit log with their caller.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._errors import NyxplugError
from .metrics import MetricsEndpoint
from .openapi import PROBLEM_TYPE, openapi_document
from .operations import OPERATIONS, AdminHost, Call, Operation, Problem, RolloutOptionsError
from .options import is_loopback

if TYPE_CHECKING:
    from ..plugins.manager import PluginManager

__all__ = ("build_app", "problem_for")

logger = logging.getLogger("nyxplug.admin")

_ENCODER = msgspec.json.Encoder()


class _Refused(Exception):
    """A call stopped before its handler (status, title, detail)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def problem_for(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and title of a typed error raised by a handler."""
    from .._errors import VersionError
    from ..plugins.errors import (
        DependencyError,
        PluginLoadError,
        PluginNotFound,
        PluginStateError,
        RolloutStateError,
    )
    from ..trust.errors import TrustError

    if isinstance(exc, PluginNotFound | LookupError):
        return 404, "Not found"
    if isinstance(exc, PluginStateError | DependencyError):
        return 409, "Conflict with the plugin's state"
    if isinstance(exc, RolloutStateError | VersionError):  # a version in use, one too many
        return 409, "Conflict with the plugin's versions or rollout"
    if isinstance(exc, PluginLoadError | TrustError | RolloutOptionsError):
        return 422, "Refused"
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError | ValueError):
        return 400, "Bad request"
    return 409, "Refused"


def _kebab(name: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in name).lstrip("-")


def _problem(status: int, title: str, detail: str, path: str, error: str | None = None) -> Response:
    body = Problem(
        type=f"urn:nyxplug:problem:{_kebab(error) if error else status}",
        title=title,
        status=status,
        detail=detail,
        instance=path,
        error=error,
    )
    headers = {"WWW-Authenticate": 'Bearer realm="nyxplug"'} if status == 401 else None
    return Response(_ENCODER.encode(body), status, headers, media_type=PROBLEM_TYPE)


def _caller(request: Request) -> str:
    client = request.client
    if client is None or not client.host:
        return "unix"
    return f"{client.host}:{client.port}"


class _Endpoint:
    """The ASGI endpoint of one operation."""

    def __init__(self, app: AdminApp, op: Operation) -> None:
        self.app, self.op = app, op

    async def handle(self, request: Request) -> Response:
        op, caller = self.op, _caller(request)
        params = dict(request.path_params)
        try:
            self.app.check_caller(request, op)
            call = Call(
                params=params,
                query=self._query(request),
                body=await self._body(request),
                caller=caller,
            )
        except _Refused as refused:
            if refused.status in (401, 403) or op.mutating:
                self.app.audit(op, caller, params, "refused", refused.status, refused.detail)
            return _problem(refused.status, refused.title, refused.detail, request.url.path)
        try:
            result = await op.handler(self.app.host, call)
        except (NyxplugError, LookupError, ValueError, msgspec.MsgspecError) as exc:
            status, title = problem_for(exc)
            if op.mutating:
                self.app.audit(op, caller, params, "failed", status, str(exc))
            return _problem(status, title, str(exc), request.url.path, type(exc).__name__)
        if op.mutating:
            self.app.audit(op, caller, params, "done", op.status, None)
        status = op.status
        if op.extra_responses and isinstance(result, msgspec.Struct):
            status = _status_of(result, op.status)
        return Response(_ENCODER.encode(result), status, media_type="application/json")

    def _query(self, request: Request) -> Any:
        op = self.op
        if op.query is None:
            if request.query_params:
                raise _Refused(
                    400, "Bad request",
                    f"Expected no query parameters, got `{', '.join(request.query_params)}` "
                    f"- in {op.method} {op.path}",
                )  # fmt: skip
            return None
        raw = request.query_params
        if len(set(raw.keys())) != len(raw.multi_items()):
            raise _Refused(400, "Bad request", f"Expected each query parameter once - in {op.path}")
        try:
            return msgspec.convert(dict(raw), op.query, strict=False)
        except msgspec.ValidationError as exc:
            raise _Refused(400, "Bad request", f"{exc} - in the query string") from None

    async def _body(self, request: Request) -> Any:
        op = self.op
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > op.max_body:
            raise _Refused(
                413, "Body too large",
                f"Expected a body of at most {op.max_body} bytes, got {declared} - in "
                f"{op.method} {op.path}",
            )  # fmt: skip
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > op.max_body:
                raise _Refused(
                    413, "Body too large",
                    f"Expected a body of at most {op.max_body} bytes, got more - in "
                    f"{op.method} {op.path}",
                )  # fmt: skip
            chunks.append(chunk)
        data = b"".join(chunks)
        if op.body is None:
            if data:
                raise _Refused(
                    400, "Bad request", f"Expected no body, got {size} bytes - in {op.method} "
                    f"{op.path}",
                )  # fmt: skip
            return None
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise _Refused(
                415, "Unsupported media type",
                f"Expected `application/json`, got `{kind or 'no content type'}` - in "
                f"{op.method} {op.path}",
            )  # fmt: skip
        try:
            return msgspec.json.decode(data, type=op.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _Refused(400, "Bad request", f"{exc} - in the request body") from None


def _status_of(result: msgspec.Struct, default: int) -> int:
    """503 for a ``Ready`` that is not."""
    return 503 if getattr(result, "ready", True) is False else default


class AdminApp:
    """The admin API of one host: the Starlette app and the checks it applies."""

    def __init__(
        self,
        manager: PluginManager,
        token: bytes,
        *,
        examples: Mapping[str, Any] | None = None,
        metrics_cache: float = 1.0,
        remote: bool = False,
    ) -> None:
        self.host = AdminHost(manager)
        #: Callers off loopback are served (the API listens with TLS); else refused.
        self.remote = remote
        self._token = b"Bearer " + token
        self.metrics = MetricsEndpoint(manager, cache_seconds=metrics_cache)
        names = [s.name for s in manager.catalog()]
        self.document = openapi_document(
            {"name": names[0], **(examples or {})} if names else examples
        )
        document = _ENCODER.encode(self.document)
        routes = [
            Route(op.path, _Endpoint(self, op).handle, methods=[op.method], name=op.operation_id)
            for op in OPERATIONS
        ]
        routes.append(Route("/openapi.json", self._guarded(lambda: document, "application/json")))
        routes.append(Route("/metrics", self._metrics))
        self.starlette = Starlette(routes=routes)

    def check_caller(self, request: Request, op: Operation | None) -> None:
        client = request.client
        if not self.remote and client is not None and client.host and not is_loopback(client.host):
            raise _Refused(
                403, "Forbidden",
                f"Expected a call from loopback or the Unix socket, got one from {client.host} - "
                "the admin API is local; tunnel it (e.g. `ssh -L`)",
            )  # fmt: skip
        if op is not None and not op.auth:
            return
        given = request.headers.get("authorization", "").encode("latin-1")
        if not given:
            raise _Refused(
                401, "Unauthorized",
                "Expected `Authorization: Bearer TOKEN` (the token in --admin-token-file), got "
                "no Authorization header",
            )  # fmt: skip
        if not hmac.compare_digest(given, self._token):
            raise _Refused(
                401, "Unauthorized",
                "Expected the bearer token of --admin-token-file, got another - check the "
                "token file the caller reads",
            )  # fmt: skip

    def audit(
        self,
        op: Operation | str,
        caller: str,
        params: Mapping[str, str],
        decision: str,
        status: int,
        reason: str | None,
    ) -> None:
        log = self.host.audit
        if log is None:
            return
        operation = op if isinstance(op, str) else op.operation_id
        try:
            log.record(
                "admin", decision, operation=operation, caller=caller, plugin=params.get("name"),
                status=status, reason=reason,
            )  # fmt: skip
        except OSError:
            logger.exception("Could not write the audit entry of %s by %s", operation, caller)

    def _guarded(self, body: Any, media_type: str) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                self.check_caller(request, None)
            except _Refused as refused:
                self.audit(request.url.path, _caller(request), {}, "refused", refused.status,
                           refused.detail)  # fmt: skip
                return _problem(refused.status, refused.title, refused.detail, request.url.path)
            return Response(body(), media_type=media_type)

        return endpoint

    async def _metrics(self, request: Request) -> Response:
        try:
            self.check_caller(request, None)
        except _Refused as refused:
            self.audit("/metrics", _caller(request), {}, "refused", refused.status,
                       refused.detail)  # fmt: skip
            return _problem(refused.status, refused.title, refused.detail, request.url.path)
        body, media_type = await self.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=media_type)


def build_app(
    manager: PluginManager,
    token: bytes,
    *,
    examples: Mapping[str, Any] | None = None,
    remote: bool = False,
) -> AdminApp:
    """The admin API of ``manager``'s host; ``app.starlette`` is the ASGI app. ``remote``
    serves callers off loopback too: only for an API that listens with TLS."""
    return AdminApp(manager, token, examples=examples, remote=remote)
