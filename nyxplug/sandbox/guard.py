"""``SandboxGuard``: one plugin's policy, compiled into cheap yes/no checks (SPEC 7).

The guard answers questions; it does not watch anything. ``audit.py`` asks it about
the operations a plugin performs, the dispatcher asks ``preflight`` about CONTROL
frames. Host patterns are split into sets and tuples and the allowed folders are
resolved once, when the guard is built, so each check is a few string operations
(plus one ``realpath`` when a ``filesystem_allowlist`` applies).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from .._errors import SandboxViolation
from .._info import PluginInfo
from .policy import FilesystemAccess, SandboxPolicy

__all__ = ("SandboxGuard",)

_NONE = FilesystemAccess.NONE
_READ_ONLY = FilesystemAccess.READ_ONLY

_SBX = b"SBX:"
_SBX_CONNECT = b"SBX:CONNECT "
_SBX_OPEN = b"SBX:OPEN "


class _Header(Protocol):
    """What ``preflight`` reads: either twin's ``PluginHeader``."""

    @property
    def data(self) -> bytes: ...


def _norm_host(host: str) -> str:
    """Hosts compare lower-case, without brackets or the trailing dot of an absolute name."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith(".") and host != ".":
        host = host[:-1]
    return host


def _split_dest(dest: object) -> tuple[str, str]:
    """``(host, shown)`` of a ``host``, ``host:port``, ``[v6]:port`` or ``(host, port)`` dest."""
    if isinstance(dest, tuple):
        raw: Any = dest[0] if dest else ""
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw).decode("utf-8", "replace")
        host = str(raw)
        if len(dest) < 2:
            return _norm_host(host), host
        shown = f"[{host}]:{dest[1]}" if ":" in host else f"{host}:{dest[1]}"
        return _norm_host(host), shown
    text = str(dest).strip()
    if text.startswith("["):
        end = text.find("]")
        host = text[1:end] if end != -1 else text[1:]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        host = text  # a bare name, address or IPv6 literal (its colons are not a port)
    return _norm_host(host), text


class SandboxGuard:
    """Checks one plugin's operations against its ``SandboxPolicy``.

    ``check_connect``, ``check_open`` and ``check_memory`` return None or raise
    ``SandboxViolation(plugin_id, None, detail, info)``: ``info``, the plugin's
    ``PluginInfo`` when the code that built the guard knows it, names the plugin and
    where its policy is set (its manifest's ``[sandbox]`` or the code's SandboxPolicy).
    ``violations`` counts what the audit hook refused under this guard (the dispatcher
    adds it to the plugin's ``sandbox_violations``); direct ``check_*`` calls and
    ``preflight`` do not count.
    """

    __slots__ = (
        "_any_host",
        "_exact",
        "_filesystem",
        "_info",
        "_memory_limit",
        "_network",
        "_plugin_id",
        "_policy",
        "_prefixes",
        "_roots",
        "_suffixes",
        "violations",
    )

    def __init__(
        self, policy: SandboxPolicy, plugin_id: int | None = None, *, info: PluginInfo | None = None
    ) -> None:
        if not isinstance(policy, SandboxPolicy):
            raise TypeError(f"Expected `policy` to be a SandboxPolicy, got {type(policy).__name__}")
        if plugin_id is not None and (
            isinstance(plugin_id, bool) or not isinstance(plugin_id, int)
        ):
            raise TypeError(
                f"Expected `plugin_id` to be an int or None, got {type(plugin_id).__name__}"
            )
        if info is not None and not isinstance(info, PluginInfo):
            raise TypeError(
                f"Expected `info` to be a PluginInfo or None, got {type(info).__name__}"
            )
        self._policy = policy
        self._plugin_id = plugin_id
        self._info = info
        self.violations = 0
        self._network = policy.allow_network
        self._filesystem = policy.filesystem
        self._memory_limit = policy.memory_limit
        exact: set[str] = set()
        suffixes: list[str] = []
        prefixes: list[str] = []
        any_host = not policy.network_allowlist
        for pattern in policy.network_allowlist:
            if pattern == "*":
                any_host = True
            elif pattern.startswith("*"):
                suffixes.append(_norm_host(pattern[1:]))
            elif pattern.endswith("*"):
                prefixes.append(pattern[:-1].lower())
            elif pattern.startswith("."):
                name = _norm_host(pattern[1:])
                exact.add(name)
                suffixes.append("." + name)
            else:
                exact.add(_norm_host(pattern))
        self._any_host = any_host
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)
        self._prefixes = tuple(prefixes)
        # Folders are resolved now, against today's cwd: a later chdir cannot move them.
        roots: list[tuple[str, str]] = []
        for prefix in policy.filesystem_allowlist:
            root = os.path.normcase(os.path.realpath(prefix))
            roots.append((root, root if root.endswith(os.sep) else root + os.sep))
        self._roots = tuple(roots)

    @property
    def policy(self) -> SandboxPolicy:
        """The policy this guard enforces."""
        return self._policy

    @property
    def plugin_id(self) -> int | None:
        """The plugin refusals are attributed to (None for an anonymous guard)."""
        return self._plugin_id

    @property
    def info(self) -> PluginInfo | None:
        """The plugin's info, which refusals name (None when the guard was built without)."""
        return self._info

    def __repr__(self) -> str:
        return (
            f"SandboxGuard({self._policy!r}, plugin_id={self._plugin_id!r}, "
            f"violations={self.violations})"
        )

    # -- public checks ---------------------------------------------------------------

    def check_connect(self, dest: str | tuple[Any, ...]) -> None:
        """Refuse connecting to ``dest`` (``host``, ``host:port``, ``[v6]:port``, a tuple)."""
        if not isinstance(dest, (str, tuple)):
            raise TypeError(
                f"Expected `dest` to be a str or a (host, port) tuple, got {type(dest).__name__}"
            )
        detail = self._connect_refusal(dest)
        if detail is not None:
            raise SandboxViolation(self._plugin_id, None, detail, self._info)

    def check_open(self, path: str | bytes | os.PathLike[Any], write: bool = False) -> None:
        """Refuse opening ``path`` for reading (or writing, with ``write=True``)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(
                f"Expected `path` to be str, bytes or os.PathLike, got {type(path).__name__}"
            )
        detail = self._path_refusal(
            os.fsdecode(os.fspath(path)), write, "write to" if write else "read of"
        )
        if detail is not None:
            raise SandboxViolation(self._plugin_id, None, detail, self._info)

    def check_memory(self, nbytes: int) -> None:
        """Refuse using ``nbytes`` bytes when that is more than ``memory_limit``."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"Expected `nbytes` to be an int, got {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"Expected `nbytes` to be a non-negative int, got {nbytes}")
        if nbytes > self._memory_limit:
            raise SandboxViolation(
                self._plugin_id,
                None,
                f"memory use of {nbytes} bytes (memory_limit is {self._memory_limit} bytes)",
                self._info,
            )

    def preflight(self, header: _Header) -> str | None:
        """The refusal detail for a CONTROL frame's ``SBX:CONNECT``/``SBX:OPEN`` header, or None.

        Any other ``header.data`` is None. Never raises and never counts: the
        dispatcher raises and counts, as it does for its other checks.
        """
        data = header.data
        if not data.startswith(_SBX):
            return None
        if data.startswith(_SBX_CONNECT):
            return self._connect_refusal(
                data[len(_SBX_CONNECT) :].decode("utf-8", "replace").strip()
            )
        if data.startswith(_SBX_OPEN):
            path = data[len(_SBX_OPEN) :].decode("utf-8", "replace").strip()
            return self._path_refusal(path, False, "read of")
        return None

    # -- the answers (None = allowed), shared by the checks, preflight and the audit hook --

    def _connect_refusal(self, dest: object, action: str = "connect to") -> str | None:
        host, shown = _split_dest(dest)
        if not self._network:
            return f"{action} {shown!r} (network is disabled)"
        if self._host_allowed(host):
            return None
        return f"{action} {shown!r} (host not in network_allowlist)"

    def _host_allowed(self, host: str) -> bool:
        return (
            self._any_host
            or host in self._exact
            or host.endswith(self._suffixes)
            or host.startswith(self._prefixes)
        )

    def _path_refusal(self, path: str, write: bool, action: str) -> str | None:
        """Why ``action`` (e.g. "write to", "os.remove of") on ``path`` is refused, or None."""
        filesystem = self._filesystem
        if filesystem is _NONE:
            return f"{action} {path!r} (filesystem is disabled)"
        if write and filesystem is _READ_ONLY:
            return f"{action} {path!r} (filesystem is read-only)"
        if not self._roots:
            return None
        try:
            # Non-strict realpath resolves what exists and appends the rest, so a new
            # file is judged by its nearest existing folder, symlinks and ".." included.
            real = os.path.normcase(os.path.realpath(path))
        except (OSError, ValueError):
            return f"{action} {path!r} (path cannot be resolved)"
        for root, root_sep in self._roots:
            if real == root or real.startswith(root_sep):
                return None
        if real != path:
            return f"{action} {path!r} (resolves to {real!r}, not in filesystem_allowlist)"
        return f"{action} {path!r} (path not in filesystem_allowlist)"
