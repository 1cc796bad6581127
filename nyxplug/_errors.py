"""Every exception nyxplug raises on purpose, shared by both dispatcher twins.

Each class stores its fields in ``args`` and formats its message in ``__str__``, so
the compiled and the pure-Python dispatcher produce identical text by construction
and every exception survives pickling. Messages follow one grammar: what happened,
where (plugin and frame type), and what to do about it.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

from ._constants import Permission, frame_type_name

if TYPE_CHECKING:
    from ._info import PluginInfo

__all__ = (
    "AccessListError",
    "AlreadyLoaded",
    "AlreadyRegistered",
    "BreakerNotSet",
    "CircuitOpen",
    "DispatchError",
    "FrameDecodeError",
    "FrameError",
    "FrameTooLarge",
    "FramingError",
    "HandlerError",
    "HeaderDecodeError",
    "NotRegistered",
    "NyxplugError",
    "PermissionDenied",
    "PluginClosed",
    "PluginNotLoaded",
    "PluginNotRegistered",
    "ReplyTimeout",
    "RequestDropped",
    "SandboxViolation",
    "SessionClosed",
    "SessionError",
    "SessionViolation",
    "TlsSetupError",
    "UnknownFrameType",
    "VersionError",
    "WouldBlock",
    "WrongThread",
)


def _where(plugin_id: int | None, frame_type: int | None, info: PluginInfo | None = None) -> str:
    parts = []
    if frame_type is not None:
        parts.append(f"frame {frame_type_name(frame_type)}")
    if plugin_id is not None:
        parts.append(plugin_label(plugin_id, info))
    return " for ".join(parts)


def plugin_label(plugin_id: int | None, info: PluginInfo | None) -> str:
    """``plugin 'name' (id N)`` when the registry entry is known, else ``plugin N``."""
    if info is None:
        return f"plugin {plugin_id}"
    return f"plugin {info.name!r} (id {plugin_id})"


def _subject(plugin_id: int | None, info: PluginInfo | None) -> str:
    """``_plugin`` at the start of a sentence."""
    return "P" + plugin_label(plugin_id, info)[1:]


def _in_terms(info: PluginInfo, manifest_key: str, code: str) -> str:
    """Where to fix it, in the terms the plugin was loaded with: its manifest's
    ``manifest_key`` for a plugin declared in one, ``code`` for one built in code."""
    if info.source is not None:
        return f"{manifest_key} of {info.source}"
    return f"{code} for {info.name!r}"


class NyxplugError(Exception):
    """Base of every error nyxplug raises on purpose (``WouldBlock`` included)."""


class DispatchError(NyxplugError):
    """A frame was not enqueued (or, for ``request``, its reply failed: ``HandlerError``,
    ``ReplyTimeout``, ``RequestDropped``). ``plugin_id`` and ``frame_type`` are set where known."""

    plugin_id: int | None = None
    frame_type: int | None = None


class WouldBlock(DispatchError):
    """``dispatch_nowait`` found the plugin's queue full (or senders already waiting).

    ``info`` is the plugin's registry entry (the raising code holds it; read only when
    the message is formatted): the message then names the plugin and where to raise
    its capacity, in the terms it was loaded with.
    """

    def __init__(
        self, plugin_id: int, frame_type: int, capacity: int, info: PluginInfo | None = None
    ) -> None:
        super().__init__(plugin_id, frame_type, capacity, info)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.capacity = capacity
        self.info = info

    def __str__(self) -> str:
        info = self.info
        if info is None:
            fix = "or retry later"
        else:
            where = _in_terms(info, "[resources] capacity", "load_plugin(capacity=...)")
            fix = f"retry later, or raise {where}"
        return (
            f"Queue of {plugin_label(self.plugin_id, info)} is full (capacity {self.capacity}) - "
            f"frame {frame_type_name(self.frame_type)} was not enqueued; "
            f"await dispatch() to wait for space, {fix}"
        )


class PluginClosed(DispatchError):
    """The plugin was unloaded while the sender waited for queue space.

    ``info`` (the plugin's registry entry, when the raising code holds it) names it.
    """

    def __init__(self, plugin_id: int, frame_type: int, info: PluginInfo | None = None) -> None:
        super().__init__(plugin_id, frame_type, info)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.info = info

    def __str__(self) -> str:
        return (
            f"{_subject(self.plugin_id, self.info)} was unloaded while frame "
            f"{frame_type_name(self.frame_type)} waited for queue space - "
            "the frame was not enqueued"
        )


class CircuitOpen(DispatchError):
    """The plugin's circuit breaker refused the frame (Polly's ``BrokenCircuitException``).

    ``reason`` is ``"open"`` (tripped; ``retry_after`` is the time left open),
    ``"half_open"`` (every probe is taken; ``retry_after`` is the time to the verdict's
    deadline) or ``"forced_open"`` (an operator's, or ``forced_by`` says whose;
    ``retry_after`` is None). The frame was not enqueued and the refusal is counted
    (``circuit_open``).
    """

    def __init__(
        self,
        plugin_id: int,
        frame_type: int,
        reason: str,
        retry_after: float | None,
        info: PluginInfo | None = None,
        forced_by: str | None = None,
    ) -> None:
        super().__init__(plugin_id, frame_type, reason, retry_after, info, forced_by)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.reason = reason
        self.retry_after = retry_after
        self.info = info
        self.forced_by = forced_by

    def __str__(self) -> str:
        label = plugin_label(self.plugin_id, self.info)
        what = {
            "open": "is open after too many failed or slow calls",
            "half_open": "is half-open and every probe frame is taken",
            "forced_open": "was forced open by an operator",
        }.get(self.reason, f"refused it ({self.reason})")
        if self.forced_by is not None:
            what = f"is held open by {self.forced_by}"
            when = "retry once it recovers"
        elif self.retry_after is None:
            when = "retry once an operator closes it"
        else:
            when = f"retry after {self.retry_after:.3f} s"
        return (
            f"Circuit breaker of {label} {what} - frame {frame_type_name(self.frame_type)} "
            f"was not enqueued; {when}, or see Dispatcher.breaker_stats({self.plugin_id}) "
            f"and reset it with set_breaker_state({self.plugin_id}, BreakerState.CLOSED)"
        )


class PluginNotRegistered(DispatchError):
    """The header names a plugin id the registry does not know."""

    def __init__(self, plugin_id: int, frame_type: int) -> None:
        super().__init__(plugin_id, frame_type)
        self.plugin_id = plugin_id
        self.frame_type = frame_type

    def __str__(self) -> str:
        return (
            f"Plugin {self.plugin_id} is not registered - frame "
            f"{frame_type_name(self.frame_type)} was refused; load it with "
            "Dispatcher.load_plugin() first"
        )


class PluginNotLoaded(DispatchError):
    """The plugin is registered but has no running queue (never loaded, or unloading).

    ``info`` is the plugin's registry entry when the registry knows it: the message then
    names the plugin and how to load it, in the terms it was declared with.
    """

    def __init__(
        self, plugin_id: int, frame_type: int | None = None, info: PluginInfo | None = None
    ) -> None:
        super().__init__(plugin_id, frame_type, info)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.info = info

    def __str__(self) -> str:
        info = self.info
        if info is None or info.source is None:
            fix = "load it with Dispatcher.load_plugin() first"
        else:
            fix = (
                f"load it with PluginManager.load({info.name!r}) first "
                f"(`nyxplug enable {info.name}` on a running host)"
            )
        who = _subject(self.plugin_id, info)
        if self.frame_type is None:
            return f"{who} is not loaded - {fix}"
        return f"{who} is not loaded - frame {frame_type_name(self.frame_type)} was refused; {fix}"


class PermissionDenied(DispatchError):
    """The plugin's registry entry lacks the permission the frame type requires, or the
    network peer that sent the frame may not send it to that plugin.

    ``info`` is the plugin's registry entry when the refusing code had it at hand; the
    message then names the plugin and, for one declared in a manifest, the fix in that
    file's terms. It is only read when the message is formatted, so a refusal costs no
    more than before. ``peer`` is the identity of the connection whose access refused
    the frame (a certificate's subject CN, ``loopback``...), ``None`` for the plugin's own
    permissions: the same exception, so a peer sees the name SPEC 8 refusals use.
    """

    def __init__(
        self,
        plugin_id: int,
        frame_type: int,
        required: Permission,
        info: PluginInfo | None = None,
        peer: str | None = None,
    ) -> None:
        if peer is None:
            super().__init__(plugin_id, frame_type, required, info)
        else:
            super().__init__(plugin_id, frame_type, required, info, peer)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.required = required
        self.info = info
        self.peer = peer

    def __str__(self) -> str:
        info = self.info
        if self.peer is not None:
            return (
                f"Peer {self.peer!r} may not send frame {frame_type_name(self.frame_type)} to "
                f"{plugin_label(self.plugin_id, info)}: its access lacks "
                f"{_flag_names(self.required)} - grant it in the peer's entry of the "
                "listener's access list (nyxplug serve --acl)"
            )
        if info is None:
            who, fix = f"Plugin {self.plugin_id}", "the plugin's PluginInfo.permissions"
        else:
            who = f"Plugin {info.name!r} (id {self.plugin_id})"
            fix = (
                f"[permissions] of {info.source}"
                if info.source is not None
                else f"PluginInfo.permissions of {info.name!r}"
            )
        return (
            f"{who} lacks permission {_flag_names(self.required)} required by frame "
            f"{frame_type_name(self.frame_type)} - grant it in {fix}"
        )


class SandboxViolation(DispatchError, PermissionError):
    """The plugin's sandbox policy refused an operation (see SPEC 7).

    Also a ``PermissionError`` (errno ``EACCES``), so code that handles ``OSError`` —
    including the standard library's own clean-up, such as ``socket.create_connection``
    closing its socket — treats a refusal like the kernel refusing the call.

    ``info`` is the plugin's registry entry when the refusing code holds it: the
    message then names the plugin and where its policy is set (the manifest's
    ``[sandbox]``, or the policy given to ``load_plugin``).
    """

    def __init__(
        self,
        plugin_id: int | None,
        frame_type: int | None,
        detail: str,
        info: PluginInfo | None = None,
    ) -> None:
        # BaseException's __init__, not OSError's: that one would turn the fields into
        # (errno, strerror, filename) and break "fields in args" (and pickling).
        BaseException.__init__(self, plugin_id, frame_type, detail, info)
        self.errno = errno.EACCES
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.detail = detail
        self.info = info

    def __str__(self) -> str:
        info = self.info
        where = _where(self.plugin_id, self.frame_type, info)
        suffix = f" - {where}" if where else ""
        if info is None:
            fix = "the plugin's SandboxPolicy"
        else:
            fix = _in_terms(info, "[sandbox]", "the SandboxPolicy given to load_plugin()")
        return f"Sandbox refused {self.detail}{suffix}; allow it in {fix}"


class FrameError(DispatchError, ValueError):
    """Malformed input: the frame itself is wrong, whichever plugin it names."""


class HeaderDecodeError(FrameError):
    """The plugin header is not the CBOR ``{"id", "flags", "data"}`` item SPEC 1 describes."""

    def __init__(
        self,
        expected: str,
        found: str,
        offset: int | None = None,
        frame_type: int | None = None,
    ) -> None:
        super().__init__(expected, found, offset, frame_type)
        self.expected = expected
        self.found = found
        self.offset = offset
        self.frame_type = frame_type

    def __str__(self) -> str:
        at = "" if self.offset is None else f" at byte {self.offset}"
        where = "plugin header"
        if self.frame_type is not None:
            where += f" of frame {frame_type_name(self.frame_type)}"
        return f"Expected {self.expected}, got {self.found}{at} - in {where}"

    def _with_frame_type(self, frame_type: int | None) -> HeaderDecodeError:
        """A copy that names the frame type (the decoder itself does not know it)."""
        return HeaderDecodeError(self.expected, self.found, self.offset, frame_type)


class FrameDecodeError(HeaderDecodeError):
    """A whole ``PluginFrame`` is not the CBOR map SPEC 8 describes.

    A ``HeaderDecodeError`` too, so code that handles undecodable headers handles
    undecodable frames alike; the message says "in plugin frame" and offsets count
    from the frame's first byte.
    """

    def __str__(self) -> str:
        at = "" if self.offset is None else f" at byte {self.offset}"
        return f"Expected {self.expected}, got {self.found}{at} - in plugin frame"


class FramingError(FrameError):
    """A byte stream broke the length-prefix framing of SPEC 8; nothing after it is trusted.

    ``offset`` counts bytes from the start of the stream.
    """

    def __init__(self, expected: str, found: str, offset: int) -> None:
        super().__init__(expected, found, offset)
        self.expected = expected
        self.found = found
        self.offset = offset

    def __str__(self) -> str:
        return (
            f"Expected {self.expected}, got {self.found} at stream byte {self.offset} - in a "
            "length-prefixed stream; nothing after it can be trusted, close the connection"
        )


#: The option that raises each part's size limit, named in ``FrameTooLarge``'s message.
_SIZE_OPTIONS = {"header": "max_header_size", "frame": "max_size", "message": "max_size"}


class FrameTooLarge(FrameError):
    """The header or payload is longer than the configured limit; nothing was decoded."""

    def __init__(self, part: str, size: int, limit: int, frame_type: int | None = None) -> None:
        super().__init__(part, size, limit, frame_type)
        self.part = part
        self.size = size
        self.limit = limit
        self.frame_type = frame_type

    def __str__(self) -> str:
        where = "" if self.frame_type is None else f" of frame {frame_type_name(self.frame_type)}"
        option = _SIZE_OPTIONS.get(self.part, "max_payload_size")
        return (
            f"Expected a {self.part} of at most {self.limit} bytes, got {self.size} bytes"
            f" - in {self.part}{where}; raise {option} or send less"
        )


class UnknownFrameType(FrameError):
    """The frame type is not one the dispatcher routes (or not in ``0x50..0x5F``)."""

    def __init__(
        self, frame_type: int, plugin_id: int | None = None, registering: bool = False
    ) -> None:
        super().__init__(frame_type, plugin_id, registering)
        self.frame_type = frame_type
        self.plugin_id = plugin_id
        self.registering = registering

    def __str__(self) -> str:
        code = frame_type_name(self.frame_type)
        if self.registering:
            return (
                f"Expected a frame type in 0x50..0x5f, got {code} - the Nyx protocol "
                "reserves only that range for plugins"
            )
        where = "" if self.plugin_id is None else f" - for plugin {self.plugin_id}"
        return (
            f"Expected a frame type this dispatcher routes, got {code}{where}; the "
            "built-in types are 0x51..0x54, register_frame_type() adds others in 0x50..0x5f"
        )


class AlreadyLoaded(NyxplugError):
    """``load_plugin`` was called for an id that is loaded (or still unloading)."""

    def __init__(self, plugin_id: int, unloading: bool = False) -> None:
        super().__init__(plugin_id, unloading)
        self.plugin_id = plugin_id
        self.unloading = unloading

    def __str__(self) -> str:
        if self.unloading:
            return (
                f"Plugin {self.plugin_id} is still unloading - await its "
                "unload_plugin() before loading it again"
            )
        return f"Plugin {self.plugin_id} is already loaded - unload it first or use another id"


class VersionError(NyxplugError, ValueError):
    """A version (lane) of a plugin was named that is not loaded, already loaded, one too
    many, or still routed to (``load_version``, ``unload_version``, ``set_route``)."""

    def __init__(self, plugin_id: int, version: str, problem: str, fix: str) -> None:
        super().__init__(plugin_id, version, problem, fix)
        self.plugin_id = plugin_id
        self.version = version
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return (
            f"{self.problem} - in version {self.version!r} of plugin {self.plugin_id}; {self.fix}"
        )


class AlreadyRegistered(NyxplugError):
    """``PluginRegistry.register`` was given an id that is registered."""

    def __init__(self, plugin_id: int, name: str) -> None:
        super().__init__(plugin_id, name)
        self.plugin_id = plugin_id
        self.name = name

    def __str__(self) -> str:
        return (
            f"Plugin {self.plugin_id} is already registered (as {self.name!r}) - "
            "unregister it first or use another id"
        )


class BreakerNotSet(NyxplugError, LookupError):
    """An operator action or breaker read named a loaded plugin without a circuit breaker."""

    def __init__(self, plugin_id: int, info: PluginInfo | None = None) -> None:
        super().__init__(plugin_id, info)
        self.plugin_id = plugin_id
        self.info = info

    def __str__(self) -> str:
        return (
            f"Expected {plugin_label(self.plugin_id, self.info)} to have a circuit breaker, "
            f"got none - give it one with Dispatcher.set_breaker({self.plugin_id}, "
            "BreakerConfig(...))"
        )


class NotRegistered(NyxplugError, LookupError):
    """``PluginRegistry.unregister`` (or ``set_permissions``) was given an unknown id."""

    def __init__(self, plugin_id: int) -> None:
        super().__init__(plugin_id)
        self.plugin_id = plugin_id

    def __str__(self) -> str:
        return f"Plugin {self.plugin_id} is not registered - register it first"


class WrongThread(NyxplugError, RuntimeError):
    """A dispatcher method was called from a thread other than the one running its loop.

    A dispatcher is not thread-safe: its queues and counters belong to one event loop,
    so a call from another thread could corrupt them. Nothing was checked or counted.
    """

    def __init__(
        self, method: str, owner_id: int, owner_name: str, caller_id: int, caller_name: str
    ) -> None:
        super().__init__(method, owner_id, owner_name, caller_id, caller_name)
        self.method = method
        self.owner_id = owner_id
        self.owner_name = owner_name
        self.caller_id = caller_id
        self.caller_name = caller_name

    @classmethod
    def here(cls, method: str, owner_id: int, owner_name: str) -> WrongThread:
        """The error for a call of ``method`` from the current thread."""
        caller = threading.current_thread()
        return cls(method, owner_id, owner_name, threading.get_ident(), caller.name)

    def __str__(self) -> str:
        if self.method == "dispatch":
            fix = (
                "asyncio.run_coroutine_threadsafe(<a coroutine that awaits "
                "dispatcher.dispatch(...)>, loop)"
            )
        else:
            fix = f"loop.call_soon_threadsafe(dispatcher.{self.method}, ...)"
        return (
            f"Dispatcher.{self.method}() was called from thread {self.caller_name!r} "
            f"(id {self.caller_id}), but this dispatcher belongs to thread "
            f"{self.owner_name!r} (id {self.owner_id}), which runs its event loop; "
            f"it is not thread-safe - from another thread use {fix}"
        )


class HandlerError(DispatchError):
    """The handler raised on a frame sent with ``request``; the plugin's exception is
    ``__cause__``. The frame was handled and counted in ``PluginStats.errors``."""

    def __init__(
        self, plugin_id: int, frame_type: int, error: str, info: PluginInfo | None = None
    ) -> None:
        super().__init__(plugin_id, frame_type, error, info)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.error = error
        self.info = info

    @classmethod
    def caused_by(
        cls, plugin_id: int, frame_type: int, exc: BaseException, info: PluginInfo | None = None
    ) -> HandlerError:
        """The error for ``exc``, chained to it (``raise ... from exc`` without raising)."""
        error = cls(plugin_id, int(frame_type), f"{type(exc).__name__}: {exc}", info)
        error.__cause__ = exc
        return error

    def __str__(self) -> str:
        return (
            f"Handler of {plugin_label(self.plugin_id, self.info)} raised on frame "
            f"{frame_type_name(self.frame_type)}: {self.error} - the frame was handled and "
            "counted in PluginStats.errors; fix the plugin, or catch the error in its handler"
        )


class ReplyTimeout(DispatchError, TimeoutError):
    """``request`` gave up waiting after ``timeout`` seconds (also a ``TimeoutError``, so
    ``except TimeoutError`` and ``asyncio.timeout`` habits keep working).

    ``enqueued`` says whether the frame got into the queue: if it did, it is still
    handled and counted and only its reply is dropped; if not, nothing happened.
    """

    def __init__(
        self,
        plugin_id: int,
        frame_type: int,
        timeout: float,
        enqueued: bool,
        info: PluginInfo | None = None,
    ) -> None:
        # BaseException's __init__, not OSError's (see SandboxViolation): fields stay in args.
        BaseException.__init__(self, plugin_id, frame_type, timeout, enqueued, info)
        self.errno = errno.ETIMEDOUT
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.timeout = timeout
        self.enqueued = enqueued
        self.info = info

    def __str__(self) -> str:
        if self.enqueued:
            what = "the frame is still handled and counted; its reply will be dropped"
        else:
            what = "the queue stayed full, so the frame was not enqueued"
        return (
            f"No reply from {plugin_label(self.plugin_id, self.info)} to frame "
            f"{frame_type_name(self.frame_type)} within {self.timeout:g} s - {what}; "
            "raise the timeout or make the handler faster"
        )


class RequestDropped(DispatchError):
    """The plugin was unloaded with ``drain=False`` before it handled the request's frame."""

    def __init__(self, plugin_id: int, frame_type: int, info: PluginInfo | None = None) -> None:
        super().__init__(plugin_id, frame_type, info)
        self.plugin_id = plugin_id
        self.frame_type = frame_type
        self.info = info

    def __str__(self) -> str:
        return (
            f"{_subject(self.plugin_id, self.info)} was unloaded before it handled frame "
            f"{frame_type_name(self.frame_type)} - the frame was dropped (PluginStats.dropped) "
            "and has no reply; unload with drain=True to let queued requests finish"
        )


class AccessListError(NyxplugError, ValueError):
    """An access list (``nyxplug serve --acl FILE``) has a bad value.

    ``source`` is the file, ``key`` the dotted key (``peers[0].plugins.echo``, or ``$`` for
    the whole file), ``problem`` what was expected and found - the words of
    ``ConfigError``, so the two files read alike.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(source, key, problem)
        self.source = source
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        at = "" if self.key == "$" else f" - at `{self.key}`"
        return f"Invalid access list {self.source}: {self.problem}{at}"


class TlsSetupError(NyxplugError, ValueError):
    """A certificate, key or CA file could not be used for a TLS context.

    ``role`` says which (``certificate``, ``client CA``...), ``path`` the file, ``problem``
    what OpenSSL or the file system said.
    """

    def __init__(self, role: str, path: str, problem: str) -> None:
        super().__init__(role, path, problem)
        self.role = role
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return (
            f"Expected a PEM {self.role} file, got {self.problem} - in {self.path}; check the "
            "path and that the file holds what its option names"
        )


def _flag_names(value: Permission) -> str:
    names = [member.name for member in Permission if member in value and member.name]
    return "|".join(names) if names else "NONE"


class SessionError(NyxplugError):
    """Something went wrong in a session of nyxplug's own protocol (docs/session-protocol.md)."""


class SessionViolation(SessionError, ValueError):
    """A peer broke the session protocol: ``code`` names the rule (the ERROR message's
    code), ``detail`` says what was expected and what came. The session ends."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"Session protocol violation ({self.code}): {self.detail}"


class SessionClosed(SessionError, ConnectionError):
    """The session is over (the server said GOAWAY or ERROR, the connection was lost, or
    ``aclose`` was called): nothing more can be sent on it. Frames sent and not yet
    acknowledged are counted ``lost`` in the client's ledger."""

    def __init__(self, reason: str) -> None:
        BaseException.__init__(self, reason)  # not OSError's: the reason stays in args
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"Session closed: {self.reason} - connect a new RemoteDispatcher to send more; "
            "its statistics() count the frames lost"
        )
