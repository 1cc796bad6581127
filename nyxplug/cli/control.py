"""The control socket of a running host: ``<state_dir>/control.sock``.

``nyxplug run --watch`` and ``nyxplug serve`` serve it; ``nyxplug reload``, ``list``,
``info``, ``enable``, ``disable``, ``send``, ``breaker``, ``versions`` and ``rollout``
ask it.
The protocol is one JSON request line answered by one JSON reply line (msgspec
Structs, tagged by ``op`` and ``reply``), several per connection if the client
likes. A request is at most :data:`MAX_REQUEST` bytes; anything that does not
decode is answered with an ``error`` reply and the host carries on.

Only the host's user may connect (the socket is created mode 0600). The host reads who
connected from the socket itself (``SO_PEERCRED``), so a change an operator makes is
written to the audit log with a caller no client can forge: ``local:USER (uid N, pid N)``.
A socket file left by a host that died is found (connecting is refused) and replaced; one
that answers means another host owns the state dir, and the new one refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .._breaker import BreakerConfig, BreakerState, BreakerStats
from .._recovery import RecoveryStats
from .._stats import PluginStats
from ..admin.operations import RolloutOptions
from ..plugins import PluginStatus, ReloadResult, RolloutStatus, VersionStatus
from ._common import OPERATOR_STATES, ROLLOUT_VERBS, Problem

__all__ = (
    "LOCK_FILE",
    "MAX_REPLY",
    "MAX_REQUEST",
    "OPERATOR_STATES",
    "SOCKET_FILE",
    "ROLLOUT_VERBS",
    "BreakerReply",
    "BreakerRequest",
    "ControlServer",
    "DisableRequest",
    "EnableRequest",
    "Failure",
    "HostRunning",
    "NoHost",
    "PluginEntry",
    "Reloaded",
    "ReloadRequest",
    "Reply",
    "Request",
    "RolloutReply",
    "RolloutRequest",
    "SendRequest",
    "Sent",
    "Status",
    "StatusRequest",
    "Toggled",
    "VersionsReply",
    "VersionsRequest",
    "peer_caller",
    "request",
    "socket_path",
)

#: The socket's name under the host's state dir.
SOCKET_FILE = "control.sock"
#: Held (flock) by the running host, so two hosts starting at once cannot both win.
LOCK_FILE = "control.lock"
#: Longest request line the host reads (bytes, newline included).
MAX_REQUEST = 64 * 1024
#: Longest reply line a client reads (a status reply grows with the catalog).
MAX_REPLY = 16 * 1024 * 1024
# sun_path is 108 bytes on Linux (104 on the BSDs), the terminating NUL included.
_MAX_SOCKET_PATH = 103

logger = logging.getLogger("nyxplug.runtime")


# -- the protocol ------------------------------------------------------------------------


class _Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
               tag_field="op"):  # fmt: skip
    pass


class ReloadRequest(_Request, tag="reload", frozen=True):
    """``{"op": "reload", "name": ...}``: reload that plugin now (always swaps)."""

    name: str
    allow_downgrade: bool = False


class StatusRequest(_Request, tag="status", frozen=True):
    """``{"op": "status"}``: the live catalog and each plugin's dispatcher counters."""


class DisableRequest(_Request, tag="disable", frozen=True):
    """``{"op": "disable", "name": ...}``: remember it disabled; drain and unload it if active."""

    name: str


class EnableRequest(_Request, tag="enable", frozen=True):
    """``{"op": "enable", "name": ...}``: remember it enabled and load it (re-validated)."""

    name: str


class SendRequest(_Request, tag="send", frozen=True):
    """``{"op": "send", "name": ..., "frame_type": 82, ...}``: dispatch one frame to that
    plugin (its header names the plugin's id), wait until it was handled, and answer with
    the plugin's counters (``bytes`` travel base64-encoded)."""

    name: str
    frame_type: int
    payload: bytes = b""
    header_data: bytes = b""
    flags: int = 0


class BreakerRequest(_Request, tag="breaker", frozen=True):
    """``{"op": "breaker", "name": ..., "state": null}``: show the plugin's circuit
    breaker; with ``state`` (one of :data:`OPERATOR_STATES`) set it first - audited with
    the caller the host reads from the socket. ``version``: that loaded version's breaker
    (None: the stable one's)."""

    name: str
    state: str | None = None
    version: str | None = None


class VersionsRequest(_Request, tag="versions", frozen=True):
    """``{"op": "versions", "name": ...}``: every version of the plugin the host found;
    with ``load`` or ``unload`` (a version) load it beside the running one, or drain and
    unload it, first."""

    name: str
    load: str | None = None
    unload: str | None = None


class RolloutRequest(_Request, tag="rollout", frozen=True):
    """``{"op": "rollout", "name": ..., "verb": "status"}``; ``start`` takes the candidate
    ``version`` and ``options`` (None: the plugin's own rollout configuration)."""

    name: str
    verb: str
    version: str | None = None
    options: RolloutOptions | None = None


Request = (
    ReloadRequest | StatusRequest | DisableRequest | EnableRequest | SendRequest
    | BreakerRequest | VersionsRequest | RolloutRequest
)  # fmt: skip


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="reply"):
    pass


class Reloaded(_Reply, tag="reloaded", frozen=True):
    """The reload ran: ``result.outcome`` is ``swapped`` or ``unchanged``."""

    result: ReloadResult


class PluginEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One catalog entry and, when the plugin is loaded, its dispatcher counters."""

    status: PluginStatus
    stats: PluginStats | None = None


class Status(_Reply, tag="status", frozen=True):
    """The host's live catalog (sorted by name) and who is answering."""

    pid: int
    plugins: list[PluginEntry]
    discovery_errors: list[str] = []


class Failure(_Reply, tag="error", frozen=True):
    """The request did not succeed; ``message`` is the whole story in one line.

    ``error`` is ``bad-request``, ``not-found``, ``state`` (the plugin, a version or the
    rollout does not allow it now), ``reload-failed``, ``load-failed``, ``refused`` (a
    sent frame) or ``internal``; ``step``, ``reason``, ``running`` (the version that keeps serving)
    and ``transient`` are a failed reload's.
    """

    error: str
    message: str
    name: str | None = None
    step: str | None = None
    reason: str | None = None
    running: str | None = None
    transient: bool = False


class Toggled(_Reply, tag="toggled", frozen=True):
    """An enable or disable ran: ``changed`` is False when it already was so.

    ``status`` is the plugin's entry afterwards; ``stats`` the counters of a plugin the
    host just drained and unloaded (``None`` when it was not running).
    """

    name: str
    enabled: bool
    changed: bool
    status: PluginStatus
    stats: PluginStats | None = None


class Sent(_Reply, tag="sent", frozen=True):
    """The frame was dispatched and handled; ``before``/``stats`` are the plugin's counters
    around it (``errors`` grew: its handler raised).

    ``answer`` is where the handler's reply goes once replies exist (SPEC 8,
    ``Dispatcher.request``); until then it is always ``None``.
    """

    name: str
    plugin_id: int
    frame_type: int
    before: PluginStats
    stats: PluginStats
    answer: bytes | None = None


class BreakerReply(_Reply, tag="breaker", frozen=True):
    """The plugin's circuit breaker now (after the change, if one was asked for).

    ``breaker`` is None when the plugin runs without one; ``config`` is the breaker's
    configuration (the manifest's ``[breaker]``, else the host's ``[defaults.breaker]``,
    else the default one an operator's change gives it); ``changed_by`` the caller the
    change was audited with (None when nothing was set). ``version`` is the version whose
    breaker this is and ``role`` its role (``stable``, ``candidate``...).
    """

    name: str
    version: str | None
    plugin_id: int
    breaker: BreakerStats | None
    config: BreakerConfig | None = None
    recovery: RecoveryStats | None = None
    changed_by: str | None = None
    #: The other loaded versions (side by side), each with its own breaker.
    others: list[VersionStatus] = []
    role: str = "stable"


class VersionsReply(_Reply, tag="versions", frozen=True):
    """Every version the host found of the plugin (after a load or unload, if asked):
    role, weight, counters, breaker, health. ``changed`` names what was loaded or
    unloaded, ``stats`` an unloaded version's last counters."""

    name: str
    versions: list[VersionStatus]
    changed: str | None = None
    stats: PluginStats | None = None


class RolloutReply(_Reply, tag="rollout", frozen=True):
    """The plugin's latest rollout (None before the first), after what was asked."""

    name: str
    rollout: RolloutStatus | None


Reply = Reloaded | Status | Toggled | Sent | BreakerReply | VersionsReply | RolloutReply | Failure

_request_decoder: msgspec.json.Decoder[Request] = msgspec.json.Decoder(Request)
_reply_decoder: msgspec.json.Decoder[Reply] = msgspec.json.Decoder(Reply)
_encoder = msgspec.json.Encoder()


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the host using ``state_dir`` listens (absolute, so messages are unambiguous)."""
    return Path(os.path.abspath(state_dir)) / SOCKET_FILE


class HostRunning(Problem):
    """Another host already serves this state dir's control socket."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"another host is running: {path} answers - stop it (Ctrl-C or SIGTERM) or give "
            "this one another --state-dir"
        )
        self.path = path


class NoHost(Problem):
    """Nothing answers on the control socket: no host is running with this state dir."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no running host at {path} - start one with `nyxplug run --watch` or `nyxplug serve`"
        )
        self.path = path


# -- the client -----------------------------------------------------------------------------


def request(path: Path, message: Request, *, timeout: float) -> Reply:
    """Send one request to the host at ``path`` and return its reply (blocking).

    ``NoHost`` when nothing listens there (no socket file, or a dead host's file);
    ``Problem`` for anything else that keeps the exchange from completing.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoHost(path) from None
        except OSError as exc:
            raise Problem(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(_encoder.encode(message) + b"\n")
            line = _read_line(sock, path)
        except TimeoutError:
            raise Problem(
                f"the host at {path} did not answer within {timeout:g} s - is it stuck? "
                "(its plugins' on_load/health may be slow)"
            ) from None
        except OSError as exc:
            raise Problem(
                f"lost the connection to the host at {path}: {exc.strerror or exc}"
            ) from None
    try:
        return _reply_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise Problem(
            f"Expected a reply line from the host at {path}, got {line[:80]!r}: {exc} - "
            "is it a host of another nyxplug version?"
        ) from None


def _read_line(sock: socket.socket, path: Path) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise Problem(
                f"the host at {path} closed the connection without a reply - see its output"
            )
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY:
            raise Problem(f"the host at {path} sent a reply longer than {MAX_REPLY} bytes")


# -- the server -----------------------------------------------------------------------------


class ControlServer:
    """Answers control requests for one host's ``PluginManager``.

    ``claim()`` takes the socket (before the plugins start, so a second host fails
    fast without running anyone's ``on_load``); ``start()`` begins answering;
    ``aclose()`` stops, waits for reloads it started, and removes the socket file.
    ``on_outcome(request, outcome)`` is called with each reload's ``ReloadResult`` or
    ``ReloadFailed`` once it ran, even if the client hung up meanwhile.
    """

    def __init__(
        self,
        manager: Any,
        path: Path,
        *,
        on_outcome: Callable[[ReloadRequest, object], None] | None = None,
    ) -> None:
        self.manager = manager
        self.path = path
        self.on_outcome = on_outcome
        self._sock: socket.socket | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._reloads: set[asyncio.Task[Any]] = set()

    # -- owning the socket file --------------------------------------------------------

    def claim(self) -> None:
        """Take the lock, replace a dead host's socket file, bind and listen (mode 0600)."""
        if self._sock is not None:
            return
        if len(os.fsencode(self.path)) > _MAX_SOCKET_PATH:
            raise Problem(
                f"Expected a control socket path of at most {_MAX_SOCKET_PATH} bytes, got "
                f"{len(os.fsencode(self.path))} ({self.path}) - choose a shorter state dir"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(
                self.path.parent / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise Problem(f"cannot use {self.path.parent}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HostRunning(self.path) from None
            self._remove_stale()
            self._sock = self._bind()
        except BaseException:
            self._release_lock()
            raise

    def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise Problem(f"{self.path} exists and is not a socket - move it away")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:  # its host died without cleaning up
                logger.info("Replacing the stale control socket %s", self.path)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return
            except OSError as exc:
                raise Problem(f"cannot check {self.path}: {exc.strerror or exc}") from None
        raise HostRunning(self.path)

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # umask, not a chmod afterwards: no moment where another user could connect.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise HostRunning(self.path) from None
            raise Problem(f"cannot create {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        sock.listen(16)
        return sock

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin answering requests (claims the socket first if needed)."""
        self.claim()
        if self._server is None:
            self._server = await asyncio.start_unix_server(
                self._connection, sock=self._sock, limit=MAX_REQUEST
            )

    async def aclose(self) -> None:
        """Stop answering, let started reloads finish, remove the socket file, unlock."""
        try:
            if self._server is not None:
                self._server.close()
            # Hang up rather than cancel: the stream machinery reports a cancelled
            # handler as an error, while a closed connection simply ends the loop below.
            for writer in self._connections.values():
                writer.close()
            if self._connections:
                await asyncio.wait(list(self._connections))
            if self._reloads:
                await asyncio.wait(list(self._reloads))
        finally:
            self._server = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._remove_own_socket()
            self._release_lock()

    def _remove_own_socket(self) -> None:
        """Unlink the socket file only if it is still the one this host bound."""
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()
        self._inode = None

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        caller = peer_caller(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_REQUEST: no way to find the next line
                    writer.write(_encoder.encode(_too_long()) + b"\n")
                    await writer.drain()
                    break
                if not line:
                    break
                reply = await self.answer(line, caller=caller)
                writer.write(_encoder.encode(reply) + b"\n")
                await writer.drain()
        except ConnectionError:
            pass  # the client left, or the host is stopping: nobody to answer
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def answer(self, line: bytes, *, caller: str | None = None) -> Reply:
        """The reply to one request line; never raises (a bad request is a ``Failure``).

        ``caller`` is who sent it (``peer_caller``), for the audit log.
        """
        try:
            req = _request_decoder.decode(line)
        except msgspec.DecodeError as exc:
            return Failure(
                error="bad-request",
                message=f'Expected one JSON request line like {{"op": "status"}} or '
                f'{{"op": "reload", "name": "NAME"}}, got {_preview(line)}: {exc}',
            )
        try:
            if isinstance(req, StatusRequest):
                return self.status()
            if isinstance(req, DisableRequest | EnableRequest):
                return await self._toggle(req)
            if isinstance(req, SendRequest):
                return await self._send(req)
            if isinstance(req, BreakerRequest):
                return self._breaker(req, caller)
            if isinstance(req, VersionsRequest):
                return await self._versions(req, caller)
            if isinstance(req, RolloutRequest):
                return await self._rollout(req, caller)
            return await self._reload(req)
        except Exception as exc:  # a bug must not take the host down: say it, keep serving
            logger.exception("Control request %r failed", req)
            return Failure(error="internal", message=f"{type(exc).__name__}: {exc}")

    def status(self) -> Status:
        """The live catalog, with each loaded plugin's dispatcher counters."""
        manager = self.manager
        return Status(
            pid=os.getpid(),
            plugins=[PluginEntry(status=s, stats=manager.stats(s.name)) for s in manager.catalog()],
            discovery_errors=list(manager.discovery_errors),
        )

    async def _reload(self, req: ReloadRequest) -> Reply:
        from ..plugins import PluginLoadError, PluginNotFound, PluginStateError, ReloadFailed

        # Its own task, shielded: a client that hangs up must not cancel a swap half-way.
        task = asyncio.ensure_future(
            self.manager.reload(req.name, allow_downgrade=req.allow_downgrade)
        )
        self._reloads.add(task)
        task.add_done_callback(lambda done: self._reload_done(req, done))
        try:
            result = await asyncio.shield(task)
        except ReloadFailed as exc:
            return Failure(
                error="reload-failed", message=str(exc), name=exc.name, step=exc.step,
                reason=exc.reason, running=exc.running, transient=exc.transient,
            )  # fmt: skip
        except PluginLoadError as exc:
            return Failure(
                error="reload-failed", message=str(exc), name=exc.name, step=exc.step,
                reason=exc.reason,
            )  # fmt: skip
        except PluginNotFound as exc:
            return Failure(error="not-found", message=str(exc), name=req.name)
        except PluginStateError as exc:
            return Failure(error="state", message=str(exc), name=req.name)
        return Reloaded(result=result)

    async def _toggle(self, req: DisableRequest | EnableRequest) -> Reply:
        from ..plugins import PluginLoadError, PluginNotFound, PluginStateError

        # Its own task, shielded as a reload is: a client that hangs up must not leave a
        # plugin half-drained.
        task = asyncio.ensure_future(self._apply_toggle(req))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        try:
            return await asyncio.shield(task)
        except PluginNotFound as exc:
            return Failure(error="not-found", message=str(exc), name=req.name)
        except PluginStateError as exc:
            return Failure(error="state", message=str(exc), name=req.name)
        except PluginLoadError as exc:
            return Failure(
                error="load-failed", message=str(exc), name=exc.name, step=exc.step,
                reason=exc.reason,
            )  # fmt: skip

    async def _apply_toggle(self, req: DisableRequest | EnableRequest) -> Toggled:
        """Disable: remember it, then drain and unload it if it runs. Enable: remember it,
        then load it if it is valid and not running (its dependencies must be active)."""
        manager = self.manager
        name = req.name
        was_enabled = manager.status(name).enabled
        stats = None
        if isinstance(req, DisableRequest):
            manager.disable(name)
            if manager.status(name).state == "active":
                stats = await manager.unload(name, drain=True)
                manager.disable(name)  # not running any more: now listed as disabled
        else:
            manager.enable(name)
            if manager.status(name).state in ("validated", "unloaded"):
                await manager.load(name)
        return Toggled(
            name=name,
            enabled=isinstance(req, EnableRequest),
            changed=was_enabled != isinstance(req, EnableRequest),
            status=manager.status(name),
            stats=stats,
        )

    async def _send(self, req: SendRequest) -> Reply:
        """Dispatch the frame as any sender would: every check and counter applies."""
        from .._errors import DispatchError
        from .._impl import PluginHeader
        from ..plugins import PluginNotFound

        manager = self.manager
        try:
            status = manager.status(req.name)
        except PluginNotFound as exc:
            return Failure(error="not-found", message=str(exc), name=req.name)
        if status.id is None:
            return Failure(
                error="state", name=req.name,
                message=f"Plugin {req.name!r} has no valid manifest, so no id to send to - "
                "fix it (`nyxplug info` gives the reason)",
            )  # fmt: skip
        if not 0 <= req.flags <= 255:
            return Failure(
                error="bad-request", name=req.name,
                message=f"Expected `flags` in `0..255`, got `{req.flags}`",
            )  # fmt: skip
        dispatcher = manager.dispatcher
        header = PluginHeader(status.id, req.flags, req.header_data).encode()
        before = manager.stats(req.name) or PluginStats()
        try:
            # A refusal is raised by the call itself or by awaiting it (SPEC 3).
            await dispatcher.dispatch(req.frame_type, header, req.payload)
            await dispatcher.wait_idle(status.id)
        except DispatchError as exc:
            return Failure(
                error="refused", name=req.name, reason=type(exc).__name__, message=str(exc)
            )
        # The seam for SPEC 8: once Dispatcher.request exists, send with it and put the
        # handler's reply in Sent.answer.
        return Sent(
            name=req.name,
            plugin_id=status.id,
            frame_type=req.frame_type,
            before=before,
            stats=manager.stats(req.name) or before,
        )

    def _breaker(self, req: BreakerRequest, caller: str | None) -> Reply:
        """Show (and with ``state``, first set) the plugin's circuit breaker."""
        from ..plugins import PluginNotFound

        manager, name = self.manager, req.name
        if req.state is not None and req.state not in OPERATOR_STATES:
            return Failure(
                error="bad-request", name=name,
                message=f"Expected a breaker state in {', '.join(OPERATOR_STATES)}, got "
                f"{req.state!r} - for plugin {name!r}",
            )  # fmt: skip
        try:
            status = manager.status(name)
        except PluginNotFound as exc:
            return Failure(error="not-found", message=str(exc), name=name)
        if status.state != "active" or status.id is None:
            what = "set" if req.state is not None else "show"
            return Failure(
                error="state", name=name,
                message=f"Cannot {what} the circuit breaker of plugin {name!r}: it is "
                f"{status.state}, not active, and a breaker exists only while the plugin "
                f"runs - start it (`nyxplug enable {name}`, or see `nyxplug info {name}` "
                "for why it is not running) and try again",
            )  # fmt: skip
        changed_by = None
        version = req.version
        try:
            if req.state is not None:
                state = BreakerState[req.state.upper().replace("-", "_")]
                changed_by = caller or "local"
                manager.set_breaker_state(name, state, version=version, caller=changed_by)
            stats = manager.breaker(name, version=version)
            loaded = [v for v in manager.versions(name) if v.loaded]
        except Exception as exc:  # it stopped between the calls; a version not loaded
            return _runtime_failure(exc, name)
        shown = version if version is not None else status.version
        this = next((v for v in loaded if v.version == shown), None)
        stable = this is None or this.role == "stable"
        return BreakerReply(
            name=name, version=shown, plugin_id=status.id, breaker=stats,
            config=self._breaker_config(name, version) if stats is not None else None,
            recovery=manager.status(name).recovery if stable else None,
            changed_by=changed_by, others=[v for v in loaded if v.version != shown],
            role=this.role if this is not None else "stable",
        )  # fmt: skip

    async def _versions(self, req: VersionsRequest, caller: str | None) -> Reply:
        """List the versions; load or unload one first (shielded, as a reload is)."""
        manager, name = self.manager, req.name
        changed, stats = None, None
        manager.discover()  # a release may have landed since the last scan
        if req.load is not None or req.unload is not None:
            if req.load is not None and req.unload is not None:
                return Failure(
                    error="bad-request", name=name,
                    message=f"Expected `load` or `unload`, got both - for plugin {name!r}",
                )  # fmt: skip
            if req.load is not None:
                changed = req.load
                work = manager.load_version(name, req.load, caller=caller or "local")
            else:
                changed = req.unload
                work = manager.unload_version(
                    name, req.unload, drain=True, caller=caller or "local"
                )
            task = asyncio.ensure_future(work)
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
            try:
                done = await asyncio.shield(task)
            except Exception as exc:
                return _runtime_failure(exc, name)
            if req.unload is not None:
                stats = done
        try:
            versions = manager.versions(name)
        except Exception as exc:
            return _runtime_failure(exc, name)
        return VersionsReply(name=name, versions=versions, changed=changed, stats=stats)

    async def _rollout(self, req: RolloutRequest, caller: str | None) -> Reply:
        """Start, show or act on the plugin's rollout (audited with ``caller``)."""
        from ..admin.operations import rollout_config_for

        manager, name = self.manager, req.name
        who = caller or "local"
        if req.verb not in ROLLOUT_VERBS:
            return Failure(
                error="bad-request", name=name,
                message=f"Expected a rollout verb in {', '.join(ROLLOUT_VERBS)}, got "
                f"{req.verb!r} - for plugin {name!r}",
            )  # fmt: skip
        try:
            if req.verb == "status":
                return RolloutReply(name=name, rollout=manager.rollout(name))
            if req.verb != "start":
                return RolloutReply(
                    name=name, rollout=manager.rollout_action(name, req.verb, caller=who)
                )
            if req.version is None:
                return Failure(
                    error="bad-request", name=name,
                    message=f"Expected the candidate `version` to start a rollout of {name!r}, "
                    "got none",
                )  # fmt: skip
            manager.discover()  # a release may have landed since the last scan
            options = req.options
            config = None
            if options is not None and options.given():
                config = rollout_config_for(manager, name, options)
            task = asyncio.ensure_future(
                manager.start_rollout(name, req.version, config, caller=who)
            )
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
            return RolloutReply(name=name, rollout=await asyncio.shield(task))
        except Exception as exc:
            return _runtime_failure(exc, name)

    def _breaker_config(self, name: str, version: str | None = None) -> BreakerConfig:
        manifest = self.manager.manifest(name, version=version)
        config: BreakerConfig | None = manifest.breaker if manifest is not None else None
        if config is None:
            config = self.manager.config.defaults.breaker
        return config if config is not None else BreakerConfig()

    def _reload_done(self, req: ReloadRequest, task: asyncio.Task[Any]) -> None:
        self._reloads.discard(task)
        from ..plugins import PluginLoadError

        if task.cancelled():
            return
        outcome: object = task.exception() or task.result()
        # An unknown name or a plugin that is not active: nothing ran, nothing to report.
        if self.on_outcome is not None and isinstance(outcome, ReloadResult | PluginLoadError):
            try:
                self.on_outcome(req, outcome)
            except Exception:
                logger.exception("Reporting the reload of %r failed", req.name)


def _runtime_failure(exc: Exception, name: str) -> Failure:
    """The ``Failure`` for a typed error of the versions and rollouts API (else re-raised:
    a bug is answered as ``internal`` by ``answer``)."""
    from .._errors import NyxplugError, VersionError
    from ..plugins import PluginLoadError, PluginNotFound, PluginStateError, RolloutStateError

    if isinstance(exc, PluginNotFound | LookupError):
        return Failure(error="not-found", message=str(exc), name=name)
    if isinstance(exc, PluginStateError | RolloutStateError | VersionError):
        return Failure(error="state", message=str(exc), name=name)
    if isinstance(exc, PluginLoadError):
        return Failure(
            error="load-failed", message=str(exc), name=exc.name, step=exc.step, reason=exc.reason
        )
    if isinstance(exc, ValueError | TypeError):
        return Failure(error="bad-request", message=str(exc), name=name)
    if isinstance(exc, NyxplugError):  # the runtime refused: a version in use, one too many
        return Failure(error="state", message=str(exc), name=name)
    raise exc


def peer_caller(sock: socket.socket | None) -> str:
    """Who is at the other end of a Unix socket: ``local:USER (uid N, pid N)``.

    Read from the kernel (``SO_PEERCRED``), not from the request, so the audit log's
    caller cannot be forged by a client; ``local`` where the platform has no such option.
    """
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return "local"
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, peercred, 12)
    except OSError:
        return "local"
    import pwd
    import struct

    pid, uid, _gid = struct.unpack("3i", raw)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return f"local:{user} (uid {uid}, pid {pid})"


def _too_long() -> Failure:
    return Failure(
        error="bad-request",
        message=f"Expected a request line of at most {MAX_REQUEST} bytes, got a longer one - "
        "the connection is closed",
    )


def _preview(line: bytes) -> str:
    text = line.rstrip(b"\n")
    return repr(text[:60]) + ("..." if len(text) > 60 else "")
