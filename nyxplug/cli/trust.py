"""``nyxplug trust add / list / remove / revoke-key / revoke-package`` and ``nyxplug audit``.

The host's trust store (which publisher keys it trusts, for which plugins, until when;
revocations; rollback floors) and its audit log, both in the host's state dir
(``--config FILE`` / ``--state-dir DIR``, ``nyxplug.cli._host``). ``keygen`` trusts a new
key the way ``trust add`` does (:func:`grant`). Output is plain text on stdout; a problem
is one line on stderr, ``nyxplug COMMAND: what went wrong - what to do``, and exit status
1; usage errors are argparse's (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _host
from ._common import Problem

if TYPE_CHECKING:  # imported when used: `nyxplug --help` stays a cheap import
    import datetime as dt

    from ..config import HostConfig
    from ..trust import AuditLog, PublicKey, TrustedKey, TrustStore

__all__ = ("COMMANDS", "add_commands", "grant", "grant_options", "run", "signed_by")

#: The subcommands this module adds to ``nyxplug``.
COMMANDS = ("trust", "audit")

_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# -- arguments ------------------------------------------------------------------------


def _expiry(text: str) -> dt.datetime:
    from ..trust.store import parse_expiry

    try:
        return parse_expiry(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scope(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a plugin-name pattern such as 'acme-*' or '*', got {text!r}"
        )
    return text


def _key_id(text: str) -> str:
    value = text.strip().lower()
    if not _KEY_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"expected a key id of 16 hex digits (see `nyxplug trust list`), got {text!r}"
        )
    return value


def _package(text: str) -> str:
    """A package file or folder that exists, or a sha256 (resolved when the command runs)."""
    if _SHA256_RE.fullmatch(text.strip().lower()) or os.path.exists(text):
        return text
    raise argparse.ArgumentTypeError(
        "expected a package file (.nyxp), an installed package's folder, or a package "
        "sha256 of 64 hex digits (printed by `nyxplug package` and `nyxplug verify`), "
        f"got {text!r}"
    )


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def grant_options() -> argparse.ArgumentParser:
    """``--scope`` and ``--expires``: the trust a host gives a key (a parent parser)."""
    grant = argparse.ArgumentParser(add_help=False)
    grant.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        type=_scope,
        metavar="PATTERN",
        help="trust the key only for plugin names matching PATTERN (fnmatch, e.g. 'acme-*'); "
        "repeat for more (default: '*', every plugin)",
    )
    grant.add_argument(
        "--expires",
        type=_expiry,
        metavar="DATE",
        help="stop trusting the key at DATE (2027-01-31, or 2027-01-31T12:00:00Z; default: never)",
    )
    return grant


def add_commands(commands: _host.Commands) -> None:
    """Add ``trust`` and ``audit`` to ``nyxplug``'s subparsers (``commands``)."""
    host = _host.store_options()
    trust = commands.add_parser(
        "trust",
        help="the trust store: trusted publisher keys, revocations, rollback floors",
        description="Show or change which publisher keys this host trusts, and for what.",
    )
    actions = trust.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        parents=[host, grant_options()],
        help="trust a publisher's public key (a .pub file)",
        description="Trust the key in PUBFILE for plugins matching --scope (default: all).",
    )
    add.add_argument("pubfile", metavar="PUBFILE", help="the publisher's .pub file")
    actions.add_parser(
        "list",
        parents=[host],
        help="trusted keys, revocations and rollback floors",
        description="Print the trusted keys, the revoked keys and packages, and the floors.",
    )
    remove = actions.add_parser(
        "remove",
        parents=[host],
        help="stop trusting a key (it can be trusted again later)",
        description="Remove KEYID from the trusted keys.",
    )
    remove.add_argument("key_id", type=_key_id, metavar="KEYID", help="16 hex digits")
    revoke_key = actions.add_parser(
        "revoke-key",
        parents=[host],
        help="refuse everything a key signed, for good",
        description="Revoke KEYID: packages it signed are refused; it cannot be trusted again.",
    )
    revoke_key.add_argument("key_id", type=_key_id, metavar="KEYID", help="16 hex digits")
    revoke_package = actions.add_parser(
        "revoke-package",
        parents=[host],
        help="refuse one package, whoever signed it",
        description="Revoke a package: give its .nyxp file, its installed folder, its "
        "index sha256 (printed by `nyxplug package` and `nyxplug verify`), or the .nyxp "
        "file's own SHA-256 while that file is at hand (in the current folder, or one this "
        "host verified or installed). A hash this host cannot place is refused unless "
        "--unseen says it is an index sha256 from an advisory.",
    )
    revoke_package.add_argument(
        "package",
        type=_package,
        metavar="PACKAGE",
        help="a .nyxp file, an installed package folder, or a sha256 (64 hex digits)",
    )
    revoke_package.add_argument(
        "--unseen",
        action="store_true",
        help="revoke a 64-hex index sha256 this host has never seen (from an advisory)",
    )

    audit = commands.add_parser(
        "audit",
        parents=[host],
        help="the latest trust decisions, trust-store changes and admin API calls",
        description="Print the last N entries of STATE_DIR/audit.jsonl, oldest first.",
    )
    audit.add_argument(
        "--last",
        type=_count,
        default=20,
        metavar="N",
        help="how many entries (default: 20)",
    )
    audit.add_argument(
        "--event",
        metavar="EVENT",
        help="only entries of this event (install, load, trust-add, admin, ...)",
    )
    audit.add_argument("--plugin", metavar="NAME", help="only entries about this plugin")


# -- running ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    if args.command == "audit":
        return _host.run("audit", _audit, args)
    return _host.run(f"trust {args.trust_command}", _trust, args)


def grant(
    store: TrustStore, audit: AuditLog, public: PublicKey, args: argparse.Namespace, source: str
) -> TrustedKey:
    """Trust ``public`` as ``--scope`` and ``--expires`` say, and log it (from ``source``).

    A ``ValueError`` when the key is revoked here.
    """
    scopes = tuple(args.scopes) if args.scopes else ("*",)
    entry = store.add_key(public, scopes=scopes, expires=args.expires)
    audit.record(
        "trust-add", "done", key_id=entry.key_id, signer=entry.name, scopes=list(entry.scopes),
        expires=entry.expires, source=source,
    )  # fmt: skip
    return entry


def warn_if_expired(store: TrustStore, entry: TrustedKey) -> None:
    """Say so when a key was just trusted until a time that has passed."""
    expiry = entry.expiry()
    if expiry is not None and expiry <= store.clock():
        print(f"warning: {entry.expires} is in the past - packages signed with it are refused")


def signed_by(signer: str | None, key_id: str | None) -> str:
    """``alice (key 1913a34716a64faa)``, or ``key 1913a34716a64faa`` for an untrusted key."""
    return f"{signer} (key {key_id})" if signer else f"key {key_id}"


# -- trust ------------------------------------------------------------------------------


def _trust(args: argparse.Namespace) -> int:
    action: str = args.trust_command
    config = _host.host_config(args)
    store, audit = _host.trust_and_audit(config)
    host_line = _host.host_line(args, config)  # which host the change was made on
    if action == "add":
        _trust_add(args, store, audit)
        print(f"  {host_line}")
        return 0
    if action == "list":
        print(host_line)
        return _trust_list(config, store)
    if action == "remove":
        entry = store.key(args.key_id)
        if not store.remove_key(args.key_id):
            raise Problem(f"key {args.key_id} is not trusted here - see `nyxplug trust list`")
        audit.record(
            "trust-remove", "done", key_id=args.key_id, signer=entry.name if entry else None
        )
        print(f"Removed key {_signed_key(args.key_id, entry)}: packages it signs are refused")
        print(f"  {host_line}")
        return 0
    if action == "revoke-key":
        entry = store.key(args.key_id)
        store.revoke_key(args.key_id)
        audit.record("revoke-key", "done", key_id=args.key_id, signer=entry.name if entry else None)
        print(
            f"Revoked key {_signed_key(args.key_id, entry)}: everything it signed is refused, "
            "installed plugins included, and it cannot be trusted again"
        )
        print(f"  {host_line}")
        return 0
    return _revoke_package(args, config, store, audit, host_line)


def _revoke_package(
    args: argparse.Namespace,
    config: HostConfig,
    store: TrustStore,
    audit: AuditLog,
    host_line: str,
) -> int:
    from ..trust.revoke import resolve_package

    try:
        package = resolve_package(
            args.package, package_dir=config.package_store_path, audit=audit,
            search=[Path.cwd()], unseen=args.unseen,
        )  # fmt: skip
    except LookupError as exc:
        raise Problem(str(exc.args[0])) from None
    store.revoke_package(package.index_sha256)
    audit.record(
        "revoke-package", "done", package_sha256=package.index_sha256, plugin=package.name,
        version=package.version, source=package.file, file_sha256=package.file_sha256,
    )  # fmt: skip
    print(f"Revoked package {package.describe()}: it is refused, whoever signed it")
    if package.file_sha256 is not None:
        print(
            f"  {package.file_sha256} is the SHA-256 of the file {package.file}; packages "
            "are revoked by their index sha256 (printed by `nyxplug package` and "
            "`nyxplug verify`)"
        )
    elif package.file is None and package.name is None:
        print("  not seen on this host: revoked as given (--unseen)")
    print(f"  {host_line}")
    return 0


def _signed_key(key_id: str, entry: TrustedKey | None) -> str:
    return f"{key_id} ({entry.name})" if entry is not None and entry.name else key_id


def _trust_add(args: argparse.Namespace, store: TrustStore, audit: AuditLog) -> int:
    from ..trust import PublicKey

    public = PublicKey.load(args.pubfile)
    before = store.key(public.key_id)
    try:
        entry = grant(store, audit, public, args, source=str(args.pubfile))
    except ValueError as exc:  # revoked here
        raise Problem(str(exc)) from None
    again = " (replacing the earlier entry)" if before is not None else ""
    print(
        f"Trusted key {_signed_key(entry.key_id, entry)} for plugins matching "
        f"{', '.join(entry.scopes)}, expires {entry.expires or 'never'}{again}"
    )
    warn_if_expired(store, entry)
    return 0


def _trust_list(config: HostConfig, store: TrustStore) -> int:
    now = store.clock()
    revoked_keys, revoked_packages = store.revoked()
    keys = store.keys()
    print(f"Trusted keys ({config.trust_store_path}):")
    if keys:
        header = ("KEY ID", "NAME", "SCOPES", "EXPIRES")
        rows: list[tuple[str, ...]] = []
        for key in keys:
            expiry = key.expiry()
            flags = ["EXPIRED"] * bool(expiry is not None and expiry <= now)
            flags += ["REVOKED"] * (key.key_id in revoked_keys)
            scopes = ", ".join(key.scopes)
            expires = key.expires or "never"
            rows.append((key.key_id, key.name or "-", scopes, expires, " ".join(flags)))
        widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
        for cells in [header, *rows]:
            line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))
            print(f"  {line}  {' '.join(cells[4:])}".rstrip())
    else:
        print("  none - trust a publisher with `nyxplug trust add THEIR_KEY.pub`")
    print(f"Revoked keys: {', '.join(revoked_keys) if revoked_keys else 'none'}")
    print("Revoked packages:" + ("" if revoked_packages else " none"))
    for digest in revoked_packages:
        print(f"  {digest}")
    floors = store.floors()
    print("Rollback floors (highest version installed):" + ("" if floors else " none"))
    width = max((len(name) for name in floors), default=0)
    for name, version in sorted(floors.items()):
        print(f"  {name:<{width}}  {version}")
    return 0


# -- audit ------------------------------------------------------------------------------


def _audit(args: argparse.Namespace) -> int:
    from ..trust import AuditLog

    log = AuditLog(_host.host_config(args).audit_log_path)
    try:
        entries = log.entries()
    except ValueError as exc:  # a line that is not JSON
        raise Problem(
            f"{log.path} is not a JSON-lines audit log ({exc}) - restore it from a backup"
        ) from None
    entries = [
        e for e in entries
        if (args.event is None or e.get("event") == args.event)
        and (args.plugin is None or e.get("plugin") == args.plugin)
    ]  # fmt: skip
    if not entries:
        print(f"No audit entries yet ({log.path})")
        return 0
    shown = entries[-args.last :]
    rows = [_audit_cells(entry) for entry in shown]
    widths = [max(len(cells[i]) for cells in rows) for i in range(4)]
    for cells in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True))
        print(f"{head}  {cells[4]}".rstrip())
    return 0


def _audit_cells(entry: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(time, event, decision, subject, details) of one audit entry."""
    time, event, decision = (str(entry.get(k, "-")) for k in ("time", "event", "decision"))
    if entry.get("plugin"):
        subject = str(entry["plugin"])
        if entry.get("version"):
            subject += f" {entry['version']}"
    elif entry.get("key_id"):
        subject = f"key {entry['key_id']}"
    elif entry.get("package_sha256"):
        subject = f"package {str(entry['package_sha256'])[:16]}"
    else:
        subject = "-"
    details: list[str] = []
    if event == "admin":  # an admin API call: what, by whom, how it ended
        details.append(
            f"{entry.get('operation')} by {entry.get('caller')} -> {entry.get('status')}"
        )
        if entry.get("reason"):
            details.append(str(entry["reason"]))
    elif entry.get("check"):
        details.append(f"[{entry['check']}] {entry.get('reason', '')}".rstrip())
    elif decision == "accepted":
        if entry.get("signed"):
            details.append(f"signed by {signed_by(entry.get('signer'), entry.get('key_id'))}")
        else:
            details.append("unsigned")
    elif event == "trust-add":
        scopes = ", ".join(str(s) for s in entry.get("scopes", ())) or "*"
        who = f"{entry['signer']}, " if entry.get("signer") else ""
        details.append(f"{who}scopes {scopes}, expires {entry.get('expires') or 'never'}")
    elif entry.get("signer"):
        details.append(str(entry["signer"]))
    for warning in entry.get("warnings") or ():
        details.append(f"warning: {warning}")
    return time, event, decision, subject, "; ".join(details)
