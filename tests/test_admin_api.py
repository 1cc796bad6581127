"""The admin API against its own OpenAPI document, and its guards.

Schemathesis drives every operation of the document the running host serves (all its
checks, positive and negative data, ~100 examples each) over a real loopback socket;
a test then asserts each operation answered at least one 2xx (a path parameter example
that names no real plugin would only ever reach 404s). The guards - no token, a wrong
token, a caller off loopback - are tested for refusal, audit entry and no change.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from admin_helpers import AdminHost, ThreadedHost, call
from hypothesis import HealthCheck, given, reject, settings
from nyx_helpers import DATA
from plugin_helpers import write_plugin

from nyxplug import CircuitOpen, PluginHeader
from nyxplug.admin import OPERATIONS, build_app, openapi_document
from nyxplug.trust import install_package

pytestmark = pytest.mark.timeout(600)

#: operationId -> statuses seen during the schemathesis run.
SEEN: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Any:
    host = AdminHost(tmp_path_factory.mktemp("admin"))
    # acme-pkg is installed once, so that uninstallPlugin can succeed before installPlugin ran.
    install_package(host.package, host.state / "packages", host.manager().trust)
    # A second version of echo (the higher one is stable): loadVersion loads it,
    # unloadVersion unloads it, startRollout rolls it out and rolloutAction pauses that.
    older = write_plugin(host.plugins, "echo-0.9.0", 7, version="0.9.0")
    (older / "nyxplug.toml").write_text(
        (older / "nyxplug.toml").read_text().replace('name = "echo-0.9.0"', 'name = "echo"')
    )
    examples = {
        "name": "echo",
        "version": "0.9.0",
        "action": "pause",
        "uninstallPlugin.name": "acme-pkg",
        "installPlugin": {"package": base64.b64encode(host.package.read_bytes()).decode()},
        "setBreaker": {"state": "closed"},
        "loadVersion": {"version": "0.9.0"},
        "startRollout": {"version": "0.9.0", "interval": 3600.0},
    }
    with ThreadedHost(host, examples) as threaded:
        yield threaded


@pytest.fixture(scope="module")
def api_schema(running: ThreadedHost) -> Any:
    status, _, document = call(running.address, "GET", "/openapi.json", token=running.host.token)
    assert status == 200
    config = schemathesis.Config.from_dict(
        {
            "checks": {
                # 422: a package that fails verification is refused though it is valid
                # base64 - the document says so; every other check keeps its defaults.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
                },
            },
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)
    address = running.address
    schema.config.update(base_url=f"http://{address.host}:{address.port}")
    return schema


def exercise(
    operation_id: str, op: Any, strategy: Any, examples: int, *, negative: bool,
    headers: dict[str, str],
) -> None:  # fmt: skip
    """``examples`` cases of ``strategy``, each called and checked by schemathesis."""

    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=strategy)
    def run(case: Any) -> None:
        if negative and sent_as_valid(op, case):
            reject()  # e.g. an extra query parameter of value None, which is not sent
        response = case.call_and_validate(headers=headers)
        SEEN[operation_id][response.status_code] += 1

    run()


def sent_as_valid(op: Any, case: Any) -> bool:
    """Whether a "negative" case is valid once serialized: the requests transport leaves
    out query parameters whose value is None or [], and the Authorization header is always
    sent here, so some generated violations never reach the server."""
    from nyxplug.admin.operations import PATH_SCHEMAS

    for name, value in (case.path_parameters or {}).items():
        schema = PATH_SCHEMAS[name]
        if not isinstance(value, str):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
        if "enum" in schema and value not in schema["enum"]:
            return False
    # requests leaves out None and empty lists and sends a one-item list as that item; a
    # longer list repeats the key, which the server refuses.
    query = {
        k: v[0] if isinstance(v, list) and len(v) == 1 else v
        for k, v in (case.query or {}).items()
        if v is not None and v != []
    }
    if any(isinstance(v, list | dict) for v in query.values()):
        return False
    if op.query is None:
        if query:
            return False
    else:
        text = {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in query.items()}
        try:
            msgspec.convert(text, op.query, strict=False)
        except msgspec.ValidationError:
            return False
    if op.body is not None:
        try:
            msgspec.json.decode(json.dumps(case.body), type=op.body)
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError, ValueError):
            return False
    return True


@pytest.mark.parametrize("operation_id", [op.operation_id for op in OPERATIONS])
def test_every_operation_conforms_to_the_document(
    operation_id: str, running: ThreadedHost, api_schema: Any
) -> None:
    """Positive and negative examples of one operation, every built-in check; ``echo`` is
    enabled again first (a disable run leaves it off, which the next run would only meet)."""
    from schemathesis import GenerationMode

    token = running.host.token
    assert call(running.address, "POST", "/api/v1/plugins/echo/enable", token=token)[0] == 200
    operation = api_schema.find_operation_by_id(operation_id)
    headers = {"Authorization": f"Bearer {token.decode()}"}
    op = next(op for op in OPERATIONS if op.operation_id == operation_id)
    modes = [(GenerationMode.POSITIVE, 100)]
    if "{" in op.path or op.query is not None or op.body is not None:  # else no negative data
        modes.append((GenerationMode.NEGATIVE, 50))
    for mode, examples in modes:
        exercise(operation_id, op, operation.as_strategy(generation_mode=mode), examples,
                 negative=mode is GenerationMode.NEGATIVE, headers=headers)  # fmt: skip


def test_every_operation_reached_a_success() -> None:
    if not SEEN:
        pytest.skip("the conformance run did not run (selected alone?)")
    missing = {
        op.operation_id: dict(SEEN.get(op.operation_id, {}))
        for op in OPERATIONS
        if not any(200 <= status < 300 for status in SEEN.get(op.operation_id, {}))
    }
    assert not missing, f"operations that never answered 2xx (statuses seen): {missing}"


def test_the_document_is_valid_openapi_and_matches_the_routes(tmp_path: Path) -> None:
    from openapi_spec_validator import validate

    document = openapi_document({"name": "echo", "version": "1.0.0", "action": "pause"})
    validate(document)
    documented = {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }
    host = AdminHost(tmp_path)
    app = build_app(host.manager(), host.token)
    routed = {
        (method, route.path)  # type: ignore[attr-defined]
        for route in app.starlette.routes
        for method in (route.methods or ())  # type: ignore[attr-defined]
        if method != "HEAD" and route.path not in ("/openapi.json", "/metrics")  # type: ignore[attr-defined]
    }
    assert routed == documented
    for op in OPERATIONS:
        for parameter in document["paths"][op.path][op.method.lower()].get("parameters", ()):
            if parameter["in"] == "path":
                expected = {"name": "echo", "version": "1.0.0", "action": "pause"}
                assert parameter["example"] == expected[parameter["name"]], op.operation_id


# -- guards -------------------------------------------------------------------------------


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    *,
    client: tuple[str, int],
    token: bytes | None,
    body: Any = None,
) -> tuple[int, dict[str, Any]]:
    """One call straight into the ASGI app, from ``client`` (no socket can fake that);
    ``path`` may end in ``?query``."""
    path, _, query = path.partition("?")
    headers = [(b"host", b"admin")]
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token))
    data = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": headers, "client": client, "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app.starlette(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


@pytest.mark.parametrize(
    ("case", "client", "status", "detail"),
    [
        ("no token", ("127.0.0.1", 5000), 401, r"got no Authorization header"),
        ("wrong token", ("127.0.0.1", 5000), 401, r"got another"),
        ("off loopback", ("192.0.2.7", 5000), 403, r"got one from 192\.0\.2\.7"),
    ],
)
async def test_a_refused_call_changes_nothing_and_is_audited(
    tmp_path: Path, case: str, client: tuple[str, int], status: int, detail: str
) -> None:
    host = AdminHost(tmp_path)
    manager = host.manager()
    await manager.start()
    try:
        app = build_app(manager, host.token)
        token = {"no token": None, "wrong token": b"f" * 64}.get(case, host.token)
        async with asyncio.timeout(10):
            got, body = await asgi_call(
                app, "POST", "/api/v1/plugins/echo/disable", client=client, token=token
            )
        assert got == status
        assert body["status"] == status and re.search(detail, body["detail"]), body
        assert manager.status("echo").state == "active" and manager.status("echo").enabled
        assert manager.audit is not None
        entry = manager.audit.entries()[-1]
        assert entry["event"] == "admin" and entry["decision"] == "refused"
        assert entry["operation"] == "disablePlugin" and entry["status"] == status
        assert entry["caller"] == f"{client[0]}:{client[1]}"
    finally:
        await manager.aclose()


async def test_health_needs_no_token_but_the_rest_does(tmp_path: Path) -> None:
    host = AdminHost(tmp_path)
    manager = host.manager()
    await manager.start()
    try:
        app = build_app(manager, host.token)
        loopback = ("127.0.0.1", 5000)
        assert (await asgi_call(app, "GET", "/health/ready", client=loopback, token=None))[1] == {
            "ready": True,
            "waiting": {},
        }
        for path in ("/openapi.json", "/metrics", "/api/v1/plugins"):
            status, _ = await asgi_call(app, "GET", path, client=loopback, token=None)
            assert status == 401, path
    finally:
        await manager.aclose()


def test_a_problem_carries_the_message_users_see_elsewhere(tmp_path: Path) -> None:
    host = AdminHost(tmp_path)
    with ThreadedHost(host) as running:
        status, headers, body = call(
            running.address, "POST", "/api/v1/plugins/nope/reload", token=host.token
        )
        assert status == 404 and headers["content-type"] == "application/problem+json"
        assert body["error"] == "PluginNotFound" and body["type"].endswith("plugin-not-found")
        assert body["detail"] == (
            "No plugin named 'nope' in the catalog; known plugins: echo, spare - run `nyxplug list`"
        )
        big = {"package": "A" * 100}
        status, _, body = call(
            running.address, "POST", "/api/v1/plugins", token=host.token,
            body=msgspec.json.encode(big), headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        assert status == 415 and "Expected `application/json`" in body["detail"]


async def test_one_audit_trail_holds_lifecycle_and_admin_calls(tmp_path: Path) -> None:
    """Reloads, unloads and the admin calls that caused them land in one log (with the
    trust decisions: signed loads and installs)."""
    host = AdminHost(tmp_path)
    manager = host.manager()
    await manager.start()
    try:
        app = build_app(manager, host.token)
        loopback = ("127.0.0.1", 5000)
        async with asyncio.timeout(10):
            for path in ("/api/v1/plugins/echo/reload", "/api/v1/plugins/echo/disable"):
                status, _ = await asgi_call(app, "POST", path, client=loopback, token=host.token)
                assert status == 200
    finally:
        await manager.aclose()
    assert manager.audit is not None
    trail = [
        (e["event"], e["decision"], e.get("operation"))
        for e in manager.audit.entries()
        if e.get("plugin") == "echo"
    ]
    assert trail == [
        ("reload", "swapped", None),
        ("admin", "done", "reloadPlugin"),
        ("unload", "done", None),
        ("admin", "done", "disablePlugin"),
    ]


async def test_an_operator_forces_a_breaker_open_and_resets_it(tmp_path: Path) -> None:
    """POST .../breaker moves the breaker (frames refused, then admitted again); GET shows
    it; the call, the operator's action (with the caller) and each transition are audited."""
    host = AdminHost(tmp_path)
    manager = host.manager()
    await manager.start()
    try:
        app = build_app(manager, host.token)
        loopback = ("127.0.0.1", 5000)
        path = "/api/v1/plugins/echo/breaker"
        async with asyncio.timeout(10):
            status, view = await asgi_call(app, "GET", path, client=loopback, token=host.token)
            assert status == 200
            assert view == {"name": "echo", "version": "1.0.0", "state": None, "breaker": None,
                            "recovery": None}  # fmt: skip
            status, view = await asgi_call(
                app, "POST", path, client=loopback, token=host.token,
                body={"state": "forced_open"},
            )  # fmt: skip
            assert status == 200 and view["state"] == "forced_open"
            with pytest.raises(CircuitOpen):
                manager.dispatcher.dispatch_nowait(DATA, PluginHeader(7).encode(), b"x")
            status, view = await asgi_call(app, "GET", path, client=loopback, token=host.token)
            assert view["state"] == "forced_open" and view["breaker"]["refused_forced_open"] == 1
            status, view = await asgi_call(
                app, "POST", path, client=loopback, token=host.token, body={"state": "open"}
            )
            assert status == 400, view  # OPEN is the breaker's own state
            status, view = await asgi_call(
                app, "POST", path, client=loopback, token=host.token, body={"state": "closed"}
            )
            assert status == 200 and view["state"] == "closed"
            manager.dispatcher.dispatch_nowait(DATA, PluginHeader(7).encode(), b"x")
            manager.flush_breaker_audit()
    finally:
        await manager.aclose()
    assert manager.audit is not None
    trail = [
        (e["event"], e["decision"], e.get("state") or e.get("previous"), e.get("caller"))
        for e in manager.audit.entries()
        if e.get("plugin") == "echo" and e["event"] in ("admin", "breaker")
    ]
    assert trail == [
        ("breaker", "set", "forced_open", "127.0.0.1:5000"),
        ("breaker", "forced_open", "closed", None),
        ("admin", "done", None, "127.0.0.1:5000"),
        ("admin", "refused", None, "127.0.0.1:5000"),  # the body names no operator state
        ("breaker", "set", "closed", "127.0.0.1:5000"),
        ("breaker", "closed", "forced_open", None),
        ("admin", "done", None, "127.0.0.1:5000"),
    ]


async def test_versions_and_a_rollout_through_the_api(tmp_path: Path, impl: Any) -> None:
    """A second version lands; it is loaded, unloaded, rolled out, paused and aborted over
    HTTP; refusals are problem documents with the runtime's messages (404 an unknown
    version, 409 the stable one or an ended rollout, 422 options that do not make a
    rollout); every change is audited with the caller. Both twins."""
    host = AdminHost(tmp_path)
    manager = host.manager(impl.Dispatcher())
    await manager.start()
    newer = write_plugin(host.plugins, "echo-1.1.0", 7, version="1.1.0")
    toml = newer / "nyxplug.toml"
    toml.write_text(toml.read_text().replace('"echo-1.1.0"', '"echo"'))
    me = ("127.0.0.1", 5000)
    try:
        app = build_app(manager, host.token)

        async def ask(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            return await asgi_call(app, method, "/api/v1/plugins/echo" + path, client=me,
                                   token=host.token, body=body)  # fmt: skip

        async with asyncio.timeout(10):
            status, listed = await ask("GET", "/versions")
            assert status == 200
            assert [(v["version"], v["role"], v["loaded"]) for v in listed["versions"]] == [
                ("1.0.0", "stable", True), ("1.1.0", "available", False),
            ]  # fmt: skip
            status, loaded = await ask("POST", "/versions", {"version": "1.1.0"})
            assert (status, loaded["role"], loaded["weight"]) == (201, "loaded", 0.0)
            status, problem = await ask("DELETE", "/versions/1.0.0")
            assert (status, problem["error"]) == (409, "VersionStateError")
            assert problem["detail"].startswith(
                "Cannot unload version 1.0.0 of plugin 'echo': it is the stable version - "
            )
            status, problem = await ask("DELETE", "/versions/9.9.9")
            assert (status, problem["error"]) == (404, "VersionNotFound")
            status, gone = await ask("DELETE", "/versions/1.1.0")
            assert (status, gone["version"], gone["stats"]["messages_processed"]) == (
                200, "1.1.0", 0
            )  # fmt: skip

            status, view = await ask("GET", "/rollout")
            assert (status, view) == (200, {"name": "echo", "rollout": None})
            status, problem = await ask("POST", "/rollout/pause")
            assert (status, problem["error"]) == (409, "RolloutStateError")
            assert problem["detail"] == (
                "Cannot pause the rollout of plugin 'echo': it has none - start one first: "
                "`nyxplug rollout start echo VERSION` (start_rollout); `nyxplug versions echo` "
                "lists the versions"
            )
            bad = {"version": "1.1.0", "strategy": "split", "weight": 20.0}
            status, problem = await ask("POST", "/rollout", bad)
            assert (status, problem["error"]) == (422, "RolloutOptionsError")
            assert problem["detail"].startswith("Expected `hold`")
            start = {"version": "1.1.0", "steps": [20.0, 60.0], "interval": 3600.0}
            status, rollout = await ask("POST", "/rollout", start)
            assert status == 201, rollout
            assert (rollout["stable"], rollout["candidate"], rollout["strategy"]) == (
                "1.0.0", "1.1.0", "canary"
            )  # fmt: skip
            assert (rollout["state"], rollout["weight"]) == ("progressing", 20.0)
            status, rollout = await ask("POST", "/rollout/pause")
            assert (status, rollout["state"]) == (200, "paused")
            # The candidate's own breaker, by its version: forced open, the stable's untouched.
            forced = {"state": "forced_open"}
            status, view = await ask("POST", "/breaker?version=1.1.0", forced)
            assert status == 200, view
            assert (view["version"], view["state"], view["recovery"]) == (
                "1.1.0", "forced_open", None
            )  # fmt: skip
            status, view = await ask("GET", "/breaker?version=1.1.0")
            assert (status, view["state"]) == (200, "forced_open")
            status, view = await ask("GET", "/breaker")
            assert (status, view["version"], view["state"]) == (200, "1.0.0", None)
            status, problem = await ask("POST", "/breaker?version=9.9.9", forced)
            assert (status, problem["error"]) == (404, "VersionNotFound")
            assert problem["detail"].startswith(
                "Expected a loaded version of plugin 'echo', got '9.9.9' - loaded: 1.0.0 "
                "(stable), 1.1.0 (candidate); found: 1.0.0, 1.1.0"
            )
            status, view = await ask("POST", "/breaker?version=1.1.0", {"state": "closed"})
            assert (status, view["state"]) == (200, "closed")
            status, problem = await ask("POST", "/rollout", start)
            assert (status, problem["error"]) == (409, "RolloutStateError")
            assert problem["detail"].startswith(
                "Cannot start a rollout of plugin 'echo': its canary rollout 1.0.0 -> 1.1.0 is "
                "paused - abort it first: `nyxplug rollout abort echo`"
            )
            status, problem = await ask("POST", "/rollout/explode")
            assert status == 400 and problem["detail"].startswith("Expected a rollout action")
            status, rollout = await ask("POST", "/rollout/abort")
            assert (status, rollout["state"]) == (200, "aborted")
            status, problem = await ask("POST", "/rollout/resume")
            assert (status, problem["detail"]) == (409, (
                "Cannot resume the rollout of plugin 'echo': its canary rollout 1.0.0 -> 1.1.0 "
                "has ended (aborted) - start a new one (from step 0): `nyxplug rollout start "
                "echo 1.1.0` (start_rollout('echo', '1.1.0'))"
            ))  # fmt: skip
            status, view = await ask("GET", "/rollout")
            kinds = [e["kind"] for e in view["rollout"]["events"]]
            assert kinds == ["started", "paused", "aborted"]
    finally:
        await manager.aclose()
    assert manager.audit is not None
    entries = manager.audit.entries()
    rollout_trail = [(e["decision"], e.get("caller")) for e in entries if e["event"] == "rollout"]
    assert rollout_trail == [
        ("started", "127.0.0.1:5000"), ("paused", "127.0.0.1:5000"), ("aborted", "127.0.0.1:5000"),
    ]  # fmt: skip
    versions = [(e["decision"], e["version"], e.get("caller")) for e in entries
                if e["event"] == "version"]  # fmt: skip
    assert versions[:2] == [("loaded", "1.1.0", "127.0.0.1:5000"),
                            ("unloaded", "1.1.0", "127.0.0.1:5000")]  # fmt: skip
    done = [e["operation"] for e in entries if e["event"] == "admin" and e["decision"] == "done"]
    assert done == ["loadVersion", "unloadVersion", "startRollout", "rolloutAction",
                    "setBreaker", "setBreaker", "rolloutAction"]  # fmt: skip
    breakers = [(e["state"], e.get("version"), e["caller"]) for e in entries
                if e["event"] == "breaker" and e["decision"] == "set"]  # fmt: skip
    assert breakers == [("forced_open", "1.1.0", "127.0.0.1:5000"),
                        ("closed", "1.1.0", "127.0.0.1:5000")]  # fmt: skip
    failed = [(e["operation"], e["status"]) for e in entries
              if e["event"] == "admin" and e["decision"] == "failed"]  # fmt: skip
    assert failed == [
        ("unloadVersion", 409), ("unloadVersion", 404), ("rolloutAction", 409),
        ("startRollout", 422), ("setBreaker", 404), ("startRollout", 409),
        ("rolloutAction", 400), ("rolloutAction", 409),
    ]  # fmt: skip
