"""TLS 1.3, mutual TLS mapped to plugin permissions, and a per-peer rate limit.

The pieces a listener (``nyxplug serve``, the interop ``FrameService``, the session
service) needs to let other hosts in, and only as far as they are allowed:

* ``server_tls_context`` / ``client_tls_context``: TLS 1.3 only, ALPN ``nyx/1``; given a
  client CA the server requires a client certificate signed by it (mutual TLS), so a peer
  without one fails the handshake before a byte of a frame is read.
* ``AccessList``: a TOML file mapping peers - by certificate SHA-256 fingerprint, public
  key (SPKI) pin or subject CN - to the plugins (ids or names) and frame permissions they
  may send to, with an optional frames/s rate each. Decoded strictly, with the host
  configuration's error messages.
* ``TlsPolicy`` and ``LocalPolicy``: the ``PeerPolicy`` of ``nyxplug.serving.policy``
  for TLS listeners (the peer is its certificate) and plaintext ones (loopback and Unix
  sockets; other addresses only when allowed). A certificate the access list does not name
  is admitted with no permissions, so every frame it sends is refused as
  ``PermissionDenied`` and counted, rather than vanishing in a closed connection.
* ``TokenBucket``: the rate limit, shared by the connections of one peer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import ipaddress
import math
import operator
import os
import re
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Protocol

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from .._constants import MAX_PLUGIN_ID, Permission
from .._errors import AccessListError, TlsSetupError
from .._schema import _Invalid, explain_decode_error
from .._toml import TOO_DEEP, nesting_problem, toml_value_problem
from ..source.layout import NAME_PATTERN
from .policy import PeerAccess

if TYPE_CHECKING:
    from .._info import PluginInfo

__all__ = (
    "ALPN_PROTOCOL",
    "AccessList",
    "AccessListError",
    "LocalPolicy",
    "PeerCertificate",
    "PeerGrant",
    "PeerRule",
    "TlsPolicy",
    "TlsSetupError",
    "TokenBucket",
    "client_tls_context",
    "server_tls_context",
)

#: The ALPN protocol id both contexts offer.
ALPN_PROTOCOL = "nyx/1"

_EVERYTHING = functools.reduce(operator.or_, Permission)
_NOTHING = Permission(0)
_PERMISSION_NAMES = tuple(member.name for member in Permission if member.name)
_NAME_RE = re.compile(NAME_PATTERN)
_HEX64_RE = re.compile(r"[0-9a-f]{64}")

StrPath = str | os.PathLike[str]


# -- TLS contexts ---------------------------------------------------------------------------


def server_tls_context(
    cert: StrPath, key: StrPath | None, *, client_ca: StrPath | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.3 only, ALPN ``nyx/1``, this certificate chain and key
    (``key=None``: the key is in the ``cert`` file). With ``client_ca`` a client must show
    a certificate that CA signed (``CERT_REQUIRED``: mutual TLS); no system CA is ever
    trusted for clients."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_chain(context, cert, key)
    if client_ca is not None:
        _load_ca(context, client_ca, "client CA certificate")
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


def client_tls_context(
    ca: StrPath, *, cert: StrPath | None = None, key: StrPath | None = None
) -> ssl.SSLContext:
    """A client context: TLS 1.3 only, ALPN ``nyx/1``, the server's certificate checked
    against ``ca`` (and its host name); ``cert``/``key`` are the client's own, for a
    server that requires mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_ca(context, ca, "CA certificate")
    if cert is not None:
        _load_chain(context, cert, key)
    elif key is not None:
        raise ValueError("Expected `cert` with `key`, got a key alone - pass the certificate too")
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


def _load_chain(context: ssl.SSLContext, cert: StrPath, key: StrPath | None) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        role = "certificate" if key is None else "certificate and key"
        where = os.fspath(cert) if key is None else f"{os.fspath(cert)} and {os.fspath(key)}"
        raise TlsSetupError(role, where, _tls_problem(exc)) from None


def _load_ca(context: ssl.SSLContext, ca: StrPath, role: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(role, os.fspath(ca), _tls_problem(exc)) from None


def _tls_problem(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"`{exc.reason or exc}` from OpenSSL"
    return f"`{exc.strerror or exc}`"


# -- the peer's certificate -----------------------------------------------------------------


class PeerCertificate(msgspec.Struct, frozen=True):
    """What an access list can name a peer by, read from its DER certificate."""

    #: The subject's common name (the first, if several), ``None`` without one.
    cn: str | None
    #: SHA-256 of the whole certificate, lower-case hex (``openssl x509 -fingerprint -sha256``).
    sha256: str
    #: SHA-256 of the SubjectPublicKeyInfo, base64 (curl's ``--pinnedpubkey sha256//...``);
    #: it survives a renewal that keeps the key.
    spki_sha256: str

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        parsed = x509.load_der_x509_certificate(der)
        names = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = names[0].value if names else None
        spki = parsed.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return cls(
            cn=cn if isinstance(cn, str) else None,
            sha256=hashlib.sha256(der).hexdigest(),
            spki_sha256=base64.b64encode(hashlib.sha256(spki).digest()).decode(),
        )

    @property
    def identity(self) -> str:
        """How messages name the peer: its CN, else its fingerprint."""
        return self.cn if self.cn else f"sha256:{self.sha256}"


# -- the rate limit -------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; one token per frame.

    ``take(n)`` grants what is there now (possibly fewer than asked, never more than
    ``burst`` at once), so a listener asks once per batch of frames read. Over any span of
    ``t`` seconds at most ``burst + rate * t`` frames pass. ``clock`` (seconds, monotonic)
    is injectable so tests measure the rate without waiting. Written here rather than
    taken from a library: aiolimiter, token-bucket and pyrate-limiter all answer "may
    these n pass, yes or no" (or await), not "how many of n may pass", which a batch needs.
    """

    __slots__ = ("__weakref__", "_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(
                f"Expected `rate` to be a number of frames/s, got {type(rate).__name__}"
            )
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"Expected `rate` > 0 frames/s, got {rate}")
        if burst is None:
            burst = max(1, math.ceil(rate))  # one second of frames
        elif isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"Expected `burst` to be an int >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self, n: int) -> int:
        """How many of ``n`` frames may pass now; those are spent."""
        now = self._clock()
        tokens = self._tokens
        if now > self._last:
            tokens = min(tokens + (now - self._last) * self.rate, self.burst)
            self._last = now
        granted = n if n <= tokens else int(tokens)
        self._tokens = tokens - granted
        return granted

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst})"


# -- what a peer may do ---------------------------------------------------------------------


class PeerGrant:
    """The ``PeerAccess`` the policies here hand out: permissions by plugin id or name
    (names resolved through the dispatcher's registry on every call, so a plugin reloaded
    under another id keeps its grant and an id reused by another plugin does not inherit
    it), and the peer's shared token bucket (``None``: no rate limit)."""

    def __init__(
        self,
        identity: str,
        *,
        every: Permission = _NOTHING,
        by_id: Mapping[int, Permission] | None = None,
        by_name: Mapping[str, Permission] | None = None,
        registry: _Registry | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        if by_name and registry is None:
            raise ValueError(
                f"Expected a `registry` to resolve the plugin names granted to {identity!r}, "
                "got none - pass the dispatcher's registry"
            )
        self.identity = identity
        self._every = every
        self._by_id = dict(by_id or {})
        self._by_name = dict(by_name or {})
        self._registry = registry
        self.bucket = bucket

    def permissions(self, plugin_id: int) -> Permission:
        allowed = self._every
        if self._by_id:
            allowed |= self._by_id.get(plugin_id, _NOTHING)
        if self._by_name and self._registry is not None:
            info = self._registry.get(plugin_id)
            if info is not None:
                allowed |= self._by_name.get(info.name, _NOTHING)
        return allowed

    def take(self, n: int) -> int:
        return n if self.bucket is None else self.bucket.take(n)

    def __repr__(self) -> str:
        return f"PeerGrant({self.identity!r}, bucket={self.bucket!r})"


class _Registry(Protocol):  # what PeerGrant needs of a PluginRegistry (either twin's)
    def get(self, plugin_id: int) -> PluginInfo | None: ...


class _Buckets:
    """One token bucket per peer identity, alive while a connection of that peer is."""

    def __init__(self, rate: float | None, burst: int | None, clock: Callable[[], float]) -> None:
        if rate is not None:
            TokenBucket(rate, burst, clock=clock)  # validate now, not at the first connection
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._live: weakref.WeakValueDictionary[tuple[str, ...], TokenBucket] = (
            weakref.WeakValueDictionary()
        )

    def get(
        self, key: tuple[str, ...], rate: float | None = None, burst: int | None = None
    ) -> TokenBucket | None:
        if rate is None:
            rate, burst = self.rate, self.burst if burst is None else burst
        if rate is None:
            return None
        bucket = self._live.get(key)
        if bucket is None:
            bucket = self._live[key] = TokenBucket(rate, burst, clock=self.clock)
        return bucket


class TlsPolicy:
    """The ``PeerPolicy`` of a TLS listener: the peer is its client certificate.

    With an ``acl``, a certificate it names gets that entry's plugins and permissions and
    rate; a certificate it does not name is admitted with no permissions, so each frame
    is refused as ``PermissionDenied`` and counted (the handshake already refused anyone
    without a certificate the client CA signed). A connection without TLS, or without a
    certificate while an ``acl`` is set, is refused. Without an ``acl`` every peer that
    completed the handshake may send everything: the CA alone is the gate.

    ``rate`` (frames/s) and ``burst`` apply to every peer without a rate of its own in the
    access list; connections of one peer (one entry, or one certificate) share a bucket.
    ``registry`` (the dispatcher's) resolves plugin names in the access list.
    """

    def __init__(
        self,
        acl: AccessList | None = None,
        *,
        registry: _Registry | None = None,
        rate: float | None = None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if acl is not None and acl.names_plugins and registry is None:
            raise ValueError(
                f"Expected a `registry` to resolve the plugin names of {acl.source}, got none "
                "- pass the dispatcher's registry (Dispatcher.registry)"
            )
        self.acl = acl
        self._registry = registry
        self._buckets = _Buckets(rate, burst, clock)

    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der = ssl_object.getpeercert(binary_form=True)
        if der is None:
            if self.acl is not None:
                return None
            return PeerGrant(
                "anonymous", every=_EVERYTHING, bucket=self._buckets.get(("tls", "anonymous"))
            )
        cert = PeerCertificate.from_der(der)
        if self.acl is None:
            bucket = self._buckets.get(("cert", cert.sha256))
            return PeerGrant(cert.identity, every=_EVERYTHING, bucket=bucket)
        rule = self.acl.match(cert)
        if rule is None:
            return PeerGrant(cert.identity, bucket=self._buckets.get(("cert", cert.sha256)))
        return PeerGrant(
            cert.identity,
            every=rule.every,
            by_id=rule.by_id,
            by_name=rule.by_name,
            registry=self._registry,
            bucket=self._buckets.get(("rule", *rule.key), rule.rate, rule.burst),
        )


class LocalPolicy:
    """The ``PeerPolicy`` of a plaintext listener: a Unix socket or a loopback address
    may send everything (the machine's own users; file permissions guard the socket);
    any other address is refused unless ``allow_remote`` (a trusted network).

    ``rate``/``burst`` limit each peer: all loopback connections together, all Unix-socket
    connections together, and each remote address on its own.
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int | None = None,
        allow_remote: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow_remote = allow_remote
        self._buckets = _Buckets(rate, burst, clock)

    def admit(self, transport: asyncio.BaseTransport) -> PeerAccess | None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == getattr(socket, "AF_UNIX", None):
            identity = "unix"
        else:
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            if _is_loopback(host):
                identity = "loopback"
            elif self.allow_remote and host:
                identity = host
            else:
                return None
        return PeerGrant(identity, every=_EVERYTHING, bucket=self._buckets.get(("plain", identity)))


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


# -- the access list file -------------------------------------------------------------------

Rate = Annotated[float, msgspec.Meta(gt=0)]
Burst = Annotated[int, msgspec.Meta(ge=1)]


class _PeerEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[[peers]]``: one peer, named by exactly one of ``cn``, ``sha256``, ``spki_sha256``."""

    cn: str | None = None
    sha256: str | None = None
    spki_sha256: str | None = None
    rate: Rate | None = None
    burst: Burst | None = None
    plugins: dict[str, tuple[str, ...]] = {}

    def __post_init__(self) -> None:
        named = [key for key in ("cn", "sha256", "spki_sha256") if getattr(self, key) is not None]
        if len(named) != 1:
            got = "none" if not named else " and ".join(f"`{key}`" for key in named)
            raise _Invalid(
                named[1] if len(named) > 1 else "cn",
                f"Expected exactly one of `cn`, `sha256`, `spki_sha256` to name the peer, "
                f"got {got}",
            )
        if self.cn is not None and not self.cn.strip():
            raise _Invalid("cn", "Expected a certificate subject CN, got an empty string")
        if self.sha256 is not None and not _HEX64_RE.fullmatch(_hex(self.sha256)):
            raise _Invalid(
                "sha256",
                "Expected a SHA-256 certificate fingerprint (64 hex digits, colons allowed), "
                f"got `{self.sha256}`",
            )
        if self.spki_sha256 is not None and _pin(self.spki_sha256) is None:
            raise _Invalid(
                "spki_sha256",
                "Expected the base64 SHA-256 of the certificate's public key (44 characters), "
                f"got `{self.spki_sha256}`",
            )
        if self.rate is not None and not math.isfinite(self.rate):
            raise _Invalid("rate", f"Expected a finite number of frames/s, got `{self.rate}`")
        if self.burst is not None and self.rate is None:
            raise _Invalid("burst", "Expected `rate` beside `burst`, got `burst` alone")
        for plugin, names in self.plugins.items():
            key = f'plugins."{plugin}"' if not _NAME_RE.fullmatch(plugin) else f"plugins.{plugin}"
            if plugin != "*" and not _NAME_RE.fullmatch(plugin) and _plugin_id(plugin) is None:
                raise _Invalid(
                    key,
                    f'Expected a plugin name, a plugin id in 0..{MAX_PLUGIN_ID} or "*", '
                    f"got `{plugin}`",
                )
            for index, name in enumerate(names):
                if name not in _PERMISSION_NAMES:
                    choices = ", ".join(f"`{choice}`" for choice in _PERMISSION_NAMES)
                    raise _Invalid(f"{key}[{index}]", f"Expected one of {choices}, got `{name}`")

    @property
    def key(self) -> tuple[str, str]:
        if self.cn is not None:
            return "cn", self.cn
        if self.sha256 is not None:
            return "sha256", _hex(self.sha256)
        return "spki_sha256", base64.b64encode(_pin(self.spki_sha256 or "") or b"").decode()


class _AclFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    peers: tuple[_PeerEntry, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for index, entry in enumerate(self.peers):
            key = entry.key
            if key in seen:
                raise _Invalid(
                    f"peers[{index}].{key[0]}",
                    f"Expected each peer once, got `{key[1]}` again (first in peers[{seen[key]}])",
                )
            seen[key] = index


def _hex(text: str) -> str:
    return text.replace(":", "").strip().lower()


def _pin(text: str) -> bytes | None:
    try:
        digest = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == 32 else None


def _plugin_id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_PLUGIN_ID else None


class PeerRule(msgspec.Struct, frozen=True):
    """One loaded ``[[peers]]`` entry: how it names the peer and what the peer may do."""

    #: ``("cn" | "sha256" | "spki_sha256", value)``, values normalised.
    key: tuple[str, str]
    #: Frames/s (``None``: the listener's default) and burst.
    rate: float | None
    burst: int | None
    #: Granted for every plugin (``"*"``), by plugin id, by plugin name.
    every: Permission
    by_id: dict[int, Permission]
    by_name: dict[str, Permission]


def _rule(entry: _PeerEntry) -> PeerRule:
    every = _NOTHING
    by_id: dict[int, Permission] = {}
    by_name: dict[str, Permission] = {}
    for plugin, names in entry.plugins.items():
        mask = functools.reduce(operator.or_, (Permission[name] for name in names), _NOTHING)
        if plugin == "*":
            every |= mask
        elif (plugin_id := _plugin_id(plugin)) is not None:
            by_id[plugin_id] = by_id.get(plugin_id, _NOTHING) | mask
        else:
            by_name[plugin] = mask
    return PeerRule(entry.key, entry.rate, entry.burst, every, by_id, by_name)


class AccessList:
    """Which certificates may send which frame types to which plugins, and how fast.

    The file (TOML) is a list of ``[[peers]]``, each named by exactly one of ``cn`` (the
    subject common name), ``sha256`` (the certificate's fingerprint, hex, colons allowed)
    or ``spki_sha256`` (its public key's pin, base64), with ``plugins`` mapping a plugin
    name, a plugin id (as a quoted key) or ``"*"`` to the permission names of the frame
    types that peer may send, and optionally ``rate`` (frames/s) and ``burst``::

        [[peers]]
        cn = "ingest-1"
        rate = 50000
        plugins = { echo = ["DATA_ACCESS"], "7" = ["DATA_ACCESS", "CONTROL"] }

    A certificate matching several entries gets the most specific: fingerprint, then
    public key, then CN.
    """

    def __init__(self, rules: Iterable[PeerRule], *, source: str = "<access list>") -> None:
        self.source = source
        self.rules = tuple(rules)
        self._by_key = {rule.key: rule for rule in self.rules}

    @classmethod
    def load(cls, path: StrPath) -> AccessList:
        """Read and check an access list file (``AccessListError`` names the bad key)."""
        source = os.fspath(path)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            raise AccessListError(
                source, "$", "Expected an existing file, got nothing there"
            ) from None
        except OSError as exc:
            raise AccessListError(
                source, "$", f"Expected a readable file, got `{exc.strerror}`"
            ) from None
        return cls.parse(data, source=source)

    @classmethod
    def parse(cls, data: bytes | str, *, source: str = "<access list>") -> AccessList:
        """Check and load an access list from its TOML text."""
        raw = data.encode() if isinstance(data, str) else data
        if problem := nesting_problem(raw):
            raise AccessListError(source, "$", problem)
        try:
            decoded = msgspec.toml.decode(raw.decode(), type=_AclFile)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            key, problem = explain_decode_error(exc, raw, _AclFile)
            raise AccessListError(source, key, problem) from None
        except RecursionError:
            raise AccessListError(source, "$", TOO_DEEP) from None
        except ValueError as exc:
            raise AccessListError(source, "$", toml_value_problem(exc)) from None
        return cls((_rule(entry) for entry in decoded.peers), source=source)

    @property
    def names_plugins(self) -> bool:
        """Whether some entry grants by plugin name (then a registry must resolve them)."""
        return any(rule.by_name for rule in self.rules)

    def match(self, cert: PeerCertificate) -> PeerRule | None:
        """The entry for this certificate, most specific first; ``None`` if none names it."""
        for key in (("sha256", cert.sha256), ("spki_sha256", cert.spki_sha256)):
            if (rule := self._by_key.get(key)) is not None:
                return rule
        if cert.cn is not None:
            return self._by_key.get(("cn", cert.cn))
        return None

    def __repr__(self) -> str:
        return f"AccessList({self.source!r}, {len(self.rules)} peers)"
