"""``nyxplug keygen / package / sign / verify / install / uninstall / trust / audit``.

Signed plugin packages from the shell (``nyxplug.trust``). The publisher runs
``keygen``, ``package DIR`` and ``sign PKG``; a host runs ``trust add KEY.pub``,
``verify PKG`` and ``install PKG``. Keys live in ``$NYXPLUG_KEY_DIR`` (default
``~/.nyxplug/keys``); a key's passphrase comes from ``$NYXPLUG_KEY_PASSPHRASE`` or, on a
terminal, a prompt. The trust store, the audit log and the installed packages live in
the host's state dir (``--config FILE`` / ``--state-dir DIR``, as for the plugin
commands). Output is plain text on stdout; a problem is one line on stderr,
``nyxplug COMMAND: what went wrong - what to do``, and exit status 1; usage errors are
argparse's (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from ._common import Problem, relative_path

__all__ = (
    "COMMANDS",
    "KEY_DIR_ENV",
    "PASSPHRASE_ENV",
    "add_commands",
    "default_key_dir",
    "default_key_name",
    "run",
)

#: The subcommands this module adds to ``nyxplug``.
COMMANDS = ("keygen", "package", "sign", "verify", "install", "uninstall", "trust", "audit")
#: Where keys are written and looked up (default ``~/.nyxplug/keys``).
KEY_DIR_ENV = "NYXPLUG_KEY_DIR"
#: The passphrase of (new and existing) private keys, when set and not empty.
PASSPHRASE_ENV = "NYXPLUG_KEY_PASSPHRASE"

_KEY_NAME_PATTERN = r"^[a-z0-9_][a-z0-9_-]{0,63}$"
_KEY_NAME_RE = re.compile(_KEY_NAME_PATTERN)
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TRUST_ACTIONS = ("add", "list", "remove", "revoke-key", "revoke-package")


# -- arguments ------------------------------------------------------------------------


def _key_name(text: str) -> str:
    if not _KEY_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a key name matching {_KEY_NAME_PATTERN} (lowercase letters, digits, "
            f"_ or -), got {text!r}"
        )
    return text


def _expiry(text: str) -> Any:
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


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if not _SHA256_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            "expected a package sha256 of 64 hex digits (printed by `nyxplug package` and "
            f"`nyxplug verify`), got {text!r}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def add_commands(commands: Any) -> None:
    """Add the signing and trust subcommands to ``nyxplug``'s subparsers (``commands``)."""
    host = argparse.ArgumentParser(add_help=False)
    options = host.add_argument_group("host options")
    options.add_argument(
        "--config",
        metavar="FILE",
        help="host configuration file (default: $NYXPLUG_CONFIG, else built-in defaults)",
    )
    options.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the trust store, audit log and installed packages live "
        "(replaces runtime.state_dir)",
    )
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

    keygen = commands.add_parser(
        "keygen",
        parents=[host, grant],
        help="create an Ed25519 signing key (NAME.key, NAME.pub) and trust it on this host",
        description=(
            "Generate an Ed25519 key pair: DIR/NAME.key (the private key, mode 0600) and "
            "DIR/NAME.pub (the public key, one line to give to hosts). The key is encrypted "
            f"with ${PASSPHRASE_ENV} when it is set, or with a passphrase typed at the "
            "prompt with --passphrase. Unless --no-trust, the public key is added to this "
            "host's trust store."
        ),
    )
    keygen.add_argument(
        "--name",
        type=_key_name,
        metavar="NAME",
        help="the key's name and file name (default: your user name)",
    )
    keygen.add_argument(
        "--out",
        metavar="DIR",
        help=f"write the key files in DIR (default: ${KEY_DIR_ENV}, else ~/.nyxplug/keys)",
    )
    keygen.add_argument(
        "--passphrase",
        action="store_true",
        help=f"encrypt the private key with a passphrase asked twice (or ${PASSPHRASE_ENV})",
    )
    keygen.add_argument(
        "--no-trust",
        action="store_true",
        help="do not add the public key to this host's trust store",
    )

    package = commands.add_parser(
        "package",
        help="build an unsigned .nyxp package from a plugin folder",
        description=(
            "Pack every file of the plugin folder DIR (not __pycache__, VCS folders or "
            "compiled bytecode) into a .nyxp with an index of their sizes and SHA-256s."
        ),
    )
    package.add_argument("folder", metavar="DIR", help="the plugin folder")
    package.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        help="the package file, or a folder to put NAME-VERSION.nyxp in (an existing one, "
        "or ending in /; default: the current directory)",
    )

    sign = commands.add_parser(
        "sign",
        help="sign a .nyxp package with your private key (in place)",
        description=(
            "Sign PKG's index with an Ed25519 key, replacing an earlier signature. "
            f"The key's passphrase comes from ${PASSPHRASE_ENV}, else a prompt on a terminal."
        ),
    )
    sign.add_argument("package", metavar="PKG", help="the .nyxp package")
    sign.add_argument(
        "--key",
        metavar="KEY",
        help=f"a .key file, or a key name in ${KEY_DIR_ENV} (default: the only key there)",
    )

    verify = commands.add_parser(
        "verify",
        parents=[host],
        help="check a package's signature and files against this host's trust store",
        description=(
            "Check PKG as install would, without installing it: a trusted, in-scope, "
            "unexpired, unrevoked key signed it, and every file matches the signed index."
        ),
    )
    verify.add_argument("package", metavar="PKG", help="the .nyxp package")

    install = commands.add_parser(
        "install",
        parents=[host],
        help="verify a package and install it into this host's plugin store",
        description=(
            "Verify PKG (signature required unless runtime.require_signatures is false) and "
            "install it as STATE_DIR/packages/NAME/, replacing an installed version."
        ),
    )
    install.add_argument("package", metavar="PKG", help="the .nyxp package")
    install.add_argument(
        "--allow-rollback",
        action="store_true",
        help="install even if it is older than the highest version installed here",
    )

    uninstall = commands.add_parser(
        "uninstall",
        parents=[host],
        help="remove an installed package (its rollback floor stays)",
        description="Remove STATE_DIR/packages/NAME/; older versions stay refused.",
    )
    uninstall.add_argument("name", metavar="NAME", help="the installed plugin's name")

    trust = commands.add_parser(
        "trust",
        help="the trust store: trusted publisher keys, revocations, rollback floors",
        description="Show or change which publisher keys this host trusts, and for what.",
    )
    actions = trust.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        parents=[host, grant],
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
        description="Revoke the package whose index has this SHA-256.",
    )
    revoke_package.add_argument(
        "sha256", type=_sha256, metavar="SHA256", help="the package sha256 (64 hex digits)"
    )

    audit = commands.add_parser(
        "audit",
        parents=[host],
        help="the latest trust decisions and trust-store changes",
        description="Print the last N entries of STATE_DIR/audit.jsonl, oldest first.",
    )
    audit.add_argument(
        "--last",
        type=_count,
        default=20,
        metavar="N",
        help="how many entries (default: 20)",
    )


# -- running ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    from ..config import ConfigError
    from ..source.manifest import ManifestError
    from ..trust import KeyFileError, TrustError

    command: str = args.command
    if command == "trust":
        command = f"trust {args.trust_command}"
    handlers = {
        "keygen": _keygen,
        "package": _package,
        "sign": _sign,
        "verify": _verify,
        "install": _install,
        "uninstall": _uninstall,
        "trust": _trust,
        "audit": _audit,
    }
    try:
        return handlers[args.command](args)
    except (Problem, ConfigError, ManifestError, TrustError, KeyFileError) as exc:
        problem = str(exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        problem = f"{where}{exc.strerror or exc} - check the path and its permissions"
    print(f"nyxplug {command}: {' '.join(problem.split())}", file=sys.stderr)
    return 1


def _config(args: argparse.Namespace) -> Any:
    """The host configuration, with ``--state-dir`` applied."""
    import msgspec

    from ..config import load_config

    config = load_config(args.config, environ=os.environ)
    if args.state_dir:
        runtime = msgspec.structs.replace(
            config.runtime, state_dir=os.path.abspath(os.path.expanduser(args.state_dir))
        )
        config = msgspec.structs.replace(config, runtime=runtime)
    return config


def _host(config: Any) -> tuple[Any, Any]:
    """This host's trust store and audit log."""
    from ..trust import AuditLog, TrustStore

    return TrustStore(config.trust_store_path), AuditLog(config.audit_log_path)


def _host_options(args: argparse.Namespace) -> str:
    """The host options given on this command line, to repeat in a suggested command."""
    given = [("--config", args.config), ("--state-dir", args.state_dir)]
    return "".join(f" {option} {_quoted(value)}" for option, value in given if value)


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _scopes(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.scopes) if args.scopes else ("*",)


# -- keys -------------------------------------------------------------------------------


def default_key_dir() -> Path:
    """``$NYXPLUG_KEY_DIR``, else ``~/.nyxplug/keys`` (absolute)."""
    named = os.environ.get(KEY_DIR_ENV, "")
    folder = Path(named).expanduser() if named else Path.home() / ".nyxplug" / "keys"
    return folder.absolute()


def default_key_name() -> str:
    """The user name, lowercased, with anything but ``[a-z0-9_-]`` turned into ``-``."""
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no $USER and no passwd entry (some containers)
        user = ""
    name = re.sub(r"[^a-z0-9_-]+", "-", user.lower()).strip("-")[:64]
    return name if _KEY_NAME_RE.fullmatch(name) else "publisher"


def _env_passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


def _ask(prompt: str) -> str:
    import getpass

    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise Problem("no passphrase was typed - run the command again") from None


def _new_passphrase(args: argparse.Namespace) -> tuple[bytes | None, str]:
    """The new key's passphrase, and where it came from."""
    from_env = _env_passphrase()
    if from_env is not None:
        return from_env, f"${PASSPHRASE_ENV}"
    if not args.passphrase:
        return None, ""
    if not sys.stdin.isatty():
        raise Problem(
            f"--passphrase needs a terminal to ask on - run it in one, or set ${PASSPHRASE_ENV}"
        )
    first = _ask("Passphrase for the new key: ")
    if not first:
        raise Problem(
            "the passphrase is empty - type one, or leave out --passphrase for an unencrypted key"
        )
    if _ask("The same passphrase again: ") != first:
        raise Problem("the two passphrases differ - run `nyxplug keygen --passphrase` again")
    return first.encode(), "the passphrase you typed"


def _keygen(args: argparse.Namespace) -> int:
    from ..trust import SigningKey

    name = args.name or default_key_name()
    folder = Path(args.out).expanduser().absolute() if args.out else default_key_dir()
    if args.no_trust and (args.scopes or args.expires):
        raise Problem(
            "--scope and --expires describe the trust this host gives the key - "
            "leave them out with --no-trust"
        )
    # Read the configuration and the trust store first: a problem there writes nothing.
    store = audit = config = None
    if not args.no_trust:
        config = _config(args)
        store, audit = _host(config)
    private_path = folder / f"{name}.key"
    for path in (private_path, private_path.with_suffix(".pub")):
        if path.exists():
            raise Problem(
                f"{path} already exists - choose another --name or --out (keys are never "
                "overwritten)"
            )
    passphrase, source = _new_passphrase(args)
    key = SigningKey.generate(name)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise Problem(f"cannot create {folder}: {exc.strerror} - choose another --out") from None
    public_path = key.save(private_path, passphrase)
    print(f"Generated key {key.key_id} ({name})")
    print(f"  private key: {private_path}  (keep it secret; mode 0600)")
    print(f"  public key:  {public_path}  (give this file to the hosts that install your plugins)")
    if passphrase is None:
        print(
            "note: the private key is not encrypted - to encrypt one, run keygen with "
            f"--passphrase or ${PASSPHRASE_ENV} set"
        )
    else:
        print(f"  encrypted with {source}")
    if store is not None and audit is not None and config is not None:
        scopes = _scopes(args)
        entry = store.add_key(key.public, scopes=scopes, expires=args.expires)
        audit.record(
            "trust-add", "done", key_id=entry.key_id, signer=entry.name,
            scopes=list(entry.scopes), expires=entry.expires, source=str(public_path),
        )  # fmt: skip
        print(
            f"Trusted on this host for plugins matching {', '.join(scopes)}, expires "
            f"{entry.expires or 'never'} ({config.trust_store_path})"
        )
        _warn_if_expired(store, entry)
    else:
        print(
            f"Not trusted on this host; to trust it: nyxplug trust add {_quoted(str(public_path))}"
        )
    print("Next:")
    print("  nyxplug package DIR")
    return 0


def _find_key(spec: str | None) -> Path:
    """The private key file ``sign --key`` means (a path, or a name in the key dir)."""
    folder = default_key_dir()
    keys = sorted(folder.glob("*.key")) if folder.is_dir() else []
    there = ", ".join(key.stem for key in keys) or "none"
    if spec is None:
        if not keys:
            raise Problem(
                f"no key in {folder} - create one with `nyxplug keygen`, or give --key FILE"
            )
        if len(keys) > 1:
            raise Problem(f"{len(keys)} keys in {folder} ({there}) - choose one with --key NAME")
        return keys[0]
    path = Path(spec).expanduser()
    if "/" in spec or os.sep in spec or spec.endswith(".key"):
        return path
    named = folder / f"{spec}.key"
    if named.is_file():
        return named
    if path.is_file():
        return path
    raise Problem(
        f"no key named {spec!r} in {folder} (keys there: {there}) - give a key name "
        "or the path of a .key file"
    )


def _load_key(path: Path) -> Any:
    """Load a private key, asking for its passphrase only when it is encrypted."""
    from ..trust import KeyFileError, SigningKey

    try:
        head = path.read_bytes()[:200]
    except OSError as exc:
        raise KeyFileError(str(path), f"cannot read it ({exc.strerror})") from None
    passphrase = None
    if b"ENCRYPTED PRIVATE KEY" in head:
        passphrase = _env_passphrase()
        if passphrase is None and sys.stdin.isatty():
            passphrase = _ask(f"Passphrase for {path}: ").encode() or None
    return SigningKey.load(path, passphrase)


def _sign(args: argparse.Namespace) -> int:
    from ..trust import sign_package

    key_path = _find_key(args.key)
    key = _load_key(key_path)
    package = Path(args.package)
    sign_package(package, key)
    print(f"Signed {args.package} with key {key.key_id} ({key.public.name}, {key_path})")
    print("Next:")
    print(f"  nyxplug verify {_quoted(args.package)}")
    return 0


# -- packages ---------------------------------------------------------------------------


def _package(args: argparse.Namespace) -> int:
    import hashlib

    from ..source.layout import MANIFEST_FILE, PACKAGE_SUFFIX
    from ..source.manifest import load_manifest
    from ..trust import package_folder

    folder = Path(args.folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise Problem(
            f"{args.folder} has no {MANIFEST_FILE} - give a plugin folder "
            "(create one with `nyxplug new NAME`)"
        )
    target = Path(args.out) if args.out else None
    if target is not None and (target.is_dir() or args.out.endswith(("/", os.sep))):
        manifest = load_manifest(folder)
        target = target / f"{manifest.name}-{manifest.version}{PACKAGE_SUFFIX}"
    path, index = package_folder(folder, target)
    digest = hashlib.sha256(index.encode()).hexdigest()
    shown = relative_path(path)
    print(f"Packaged {index.name} {index.version} (id {index.id}): {len(index.files)} files")
    print(f"  package: {shown} (unsigned)")
    print(f"  sha256:  {digest}")
    print("Next:")
    print(f"  nyxplug sign {_quoted(shown)}")
    return 0


def _signed_by(signer: str | None, key_id: str | None) -> str:
    return f"{signer} (key {key_id})" if signer else f"key {key_id}"


def _verify(args: argparse.Namespace) -> int:
    from ..trust import TrustError, read_package, verify_contents

    config = _config(args)
    store, audit = _host(config)
    try:
        contents = read_package(args.package)
    except TrustError as exc:  # a malformed archive: refused before the checks, logged too
        audit.record(
            "verify", "refused", source=exc.source, plugin=exc.plugin, check=exc.check,
            reason=exc.problem,
        )  # fmt: skip
        raise
    verified = verify_contents(
        store, source=contents.source, index_bytes=contents.index_bytes,
        signature_bytes=contents.signature_bytes, files=contents.files,
        require_signature=True, audit=audit, event="verify",
    )  # fmt: skip
    print(
        f"OK  {verified.name} {verified.version}  signed by "
        f"{_signed_by(verified.signer, verified.key_id)} at {verified.signed_at}  "
        f"{len(verified.files)} files  sha256 {verified.package_sha256}"
    )
    for warning in verified.warnings:
        print(f"warning: {warning}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from ..trust import install_package

    config = _config(args)
    store, audit = _host(config)
    installed = install_package(
        args.package, config.package_store_path, store, audit=audit,
        require_signature=config.runtime.require_signatures,
        allow_rollback=args.allow_rollback,
    )  # fmt: skip
    package = installed.package
    print(f"Installed {package.name} {package.version} (id {package.id}) in {installed.folder}")
    if package.signed:
        print(f"  signed by {_signed_by(package.signer, package.key_id)} at {package.signed_at}")
    else:
        print("  unsigned (allowed: runtime.require_signatures is off)")
    if installed.replaced is not None:
        print(f"  replaced {installed.replaced}")
    for warning in package.warnings:
        print(f"warning: {warning}")
    print("Next:")
    print(f"  nyxplug list{_host_options(args)}")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from ..trust import uninstall_package

    config = _config(args)
    store, audit = _host(config)
    try:
        folder = uninstall_package(args.name, config.package_store_path, audit=audit)
    except LookupError as exc:
        raise Problem(str(exc.args[0] if exc.args else exc)) from None
    print(f"Uninstalled {args.name} (removed {folder})")
    floor = store.floor(args.name)
    if floor is not None:
        print(f"  versions older than {floor} stay refused (the rollback floor)")
    return 0


# -- trust ------------------------------------------------------------------------------


def _trust(args: argparse.Namespace) -> int:
    action: str = args.trust_command
    config = _config(args)
    store, audit = _host(config)
    if action == "add":
        return _trust_add(args, store, audit)
    if action == "list":
        return _trust_list(config, store)
    if action == "remove":
        entry = store.key(args.key_id)
        if not store.remove_key(args.key_id):
            raise Problem(f"key {args.key_id} is not trusted here - see `nyxplug trust list`")
        audit.record(
            "trust-remove", "done", key_id=args.key_id, signer=entry.name if entry else None
        )
        print(f"Removed key {_signed_key(args.key_id, entry)}: packages it signs are refused")
        return 0
    if action == "revoke-key":
        entry = store.key(args.key_id)
        store.revoke_key(args.key_id)
        audit.record("revoke-key", "done", key_id=args.key_id, signer=entry.name if entry else None)
        print(
            f"Revoked key {_signed_key(args.key_id, entry)}: everything it signed is refused, "
            "installed plugins included, and it cannot be trusted again"
        )
        return 0
    store.revoke_package(args.sha256)
    audit.record("revoke-package", "done", package_sha256=args.sha256)
    print(f"Revoked package {args.sha256}: it is refused, whoever signed it")
    return 0


def _signed_key(key_id: str, entry: Any) -> str:
    return f"{key_id} ({entry.name})" if entry is not None and entry.name else key_id


def _warn_if_expired(store: Any, entry: Any) -> None:
    expiry = entry.expiry()
    if expiry is not None and expiry <= store.clock():
        print(f"warning: {entry.expires} is in the past - packages signed with it are refused")


def _trust_add(args: argparse.Namespace, store: Any, audit: Any) -> int:
    from ..trust import PublicKey

    public = PublicKey.load(args.pubfile)
    scopes = _scopes(args)
    before = store.key(public.key_id)
    try:
        entry = store.add_key(public, scopes=scopes, expires=args.expires)
    except ValueError as exc:  # revoked here
        raise Problem(str(exc)) from None
    audit.record(
        "trust-add", "done", key_id=entry.key_id, signer=entry.name, scopes=list(entry.scopes),
        expires=entry.expires, source=str(args.pubfile),
    )  # fmt: skip
    again = " (replacing the earlier entry)" if before is not None else ""
    print(
        f"Trusted key {_signed_key(entry.key_id, entry)} for plugins matching "
        f"{', '.join(entry.scopes)}, expires {entry.expires or 'never'}{again}"
    )
    _warn_if_expired(store, entry)
    return 0


def _trust_list(config: Any, store: Any) -> int:
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
    config = _config(args)
    from ..trust import AuditLog

    log = AuditLog(config.audit_log_path)
    try:
        entries = log.entries()
    except ValueError as exc:  # a line that is not JSON
        raise Problem(
            f"{log.path} is not a JSON-lines audit log ({exc}) - restore it from a backup"
        ) from None
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
    if entry.get("check"):
        details.append(f"[{entry['check']}] {entry.get('reason', '')}".rstrip())
    elif decision == "accepted":
        if entry.get("signed"):
            details.append(f"signed by {_signed_by(entry.get('signer'), entry.get('key_id'))}")
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
