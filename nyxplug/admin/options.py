"""Where the admin API listens and who may call it: ``--admin`` and ``--admin-token-file``.

Kept free of third-party imports, so ``nyxplug serve --help`` works without the
``nyxplug[admin]`` extra; the server itself loads only when ``--admin`` is given.

Secure by default: the API listens on a loopback address or a Unix socket (never on the
network in plaintext), and every call but ``/health/*`` needs the bearer token read from
the token file (compared in constant time).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .._errors import NyxplugError

__all__ = ("AdminAddress", "AdminConfigError", "is_loopback", "parse_admin_address", "read_token")

#: The shortest token accepted: 128 bits of hex (``python -c 'import secrets;
#: print(secrets.token_hex(16))'``).
MIN_TOKEN_LENGTH = 32


class AdminConfigError(NyxplugError, ValueError):
    """An ``--admin`` address or token file that cannot be used (the message says why)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminAddress:
    """A loopback TCP address (``host``/``port``) or a Unix socket (``unix``)."""

    host: str | None = None
    port: int | None = None
    unix: str | None = None

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_admin_address(text: str, *, tls: bool = False) -> AdminAddress:
    """``HOST:PORT`` (loopback only, unless the API listens with TLS) or ``unix:PATH``."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise AdminConfigError(f"Expected `unix:PATH`, got `{text}` - in --admin")
        return AdminAddress(unix=os.path.abspath(path))
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise AdminConfigError(
            f"Expected `HOST:PORT` with PORT in `0..65535` or `unix:PATH`, got `{text}` - "
            "in --admin"
        )
    if not tls and not is_loopback(host):
        raise AdminConfigError(
            f"Expected a loopback address or `unix:PATH`, got `{host}` - in --admin: the admin "
            "API steers the host and would cross the network in plaintext; listen on "
            "127.0.0.1, ::1 or a Unix socket (and tunnel it, e.g. `ssh -L`), or give "
            "--admin-tls-cert for TLS"
        )
    return AdminAddress(host=host, port=int(port_text))


def read_token(path: str | os.PathLike[str]) -> bytes:
    """The bearer token in ``path`` (surrounding whitespace removed).

    Refused when the file is readable by group or others, or shorter than
    ``MIN_TOKEN_LENGTH`` characters: a token others can read, or guess, guards nothing.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        token = file.read_bytes().strip()
    except OSError as exc:
        raise AdminConfigError(
            f"Expected a readable token file, got {exc.strerror or exc} - in --admin-token-file "
            f"{file}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminConfigError(
            f"Expected a token file only its owner can read, got mode {stat.filemode(mode)} - "
            f"in --admin-token-file {file}: run `chmod 600 {file}`"
        )
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or b" " in token:
        raise AdminConfigError(
            f"Expected a token of at least {MIN_TOKEN_LENGTH} printable characters without "
            f"spaces, got {len(token)} - in --admin-token-file {file}: write one with "
            f"`python -c 'import secrets; print(secrets.token_hex(32))' > {file}`"
        )
    return token
