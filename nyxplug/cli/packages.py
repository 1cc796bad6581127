"""``nyxplug package / verify / install / uninstall``: signed plugin packages (``.nyxp``).

The publisher runs ``package DIR`` (then ``nyxplug sign PKG``); a host runs ``verify PKG``
and ``install PKG`` against its trust store, and ``uninstall NAME``. The trust store,
the audit log and the installed packages live in the host's state dir (``--config FILE``
/ ``--state-dir DIR``, ``nyxplug.cli._host``). Output is plain text on stdout; a problem
is one line on stderr, ``nyxplug COMMAND: what went wrong - what to do``, and exit status
1; usage errors are argparse's (exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import _host
from ._common import Problem, quoted, relative_path
from .trust import signed_by

if TYPE_CHECKING:
    from ..config import HostConfig

__all__ = ("COMMANDS", "add_install_commands", "add_package", "run")

#: The subcommands this module adds to ``nyxplug``.
COMMANDS = ("package", "verify", "install", "uninstall")


def add_package(commands: _host.Commands) -> None:
    """Add ``package`` to ``nyxplug``'s subparsers (``commands``)."""
    package = commands.add_parser(
        "package",
        help="build an unsigned .nyxp package from a plugin folder",
        description=(
            "Pack the files of the plugin folder DIR into a .nyxp with an index of their "
            "sizes and SHA-256s. Tool caches, bytecode and tests stay out by default "
            "(__pycache__, *.pyc, .pytest_cache, .mypy_cache, .ruff_cache, .hypothesis, "
            ".tox, .nox, .coverage, htmlcov, tests/, test_*.py, *_test.py, conftest.py); "
            "VCS folders and virtualenvs always."
        ),
    )
    package.add_argument("folder", metavar="DIR", help="the plugin folder")
    package.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="ship files left out by default that match PATTERN (fnmatch, on the path in "
        "DIR or any part of it: 'tests', 'test_*.py'); repeat for more",
    )
    package.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out more files matching PATTERN (as --include; wins over it); repeat for more",
    )
    package.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        help="the package file, or a folder to put NAME-VERSION.nyxp in (an existing one, "
        "or ending in /; default: the current directory)",
    )


def add_install_commands(commands: _host.Commands) -> None:
    """Add ``verify``, ``install`` and ``uninstall`` to ``nyxplug``'s subparsers."""
    host = _host.store_options()
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


# -- running ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    return _host.run(args.command, _HANDLERS[args.command], args)


def _package(args: argparse.Namespace) -> int:
    import hashlib

    from ..source.layout import MANIFEST_FILE
    from ..source.manifest import load_manifest
    from ..trust import PACKAGE_SUFFIX, package_folder

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
    skipped: list[str] = []
    path, index = package_folder(
        folder, target, include=args.include, exclude=args.exclude, skipped=skipped
    )
    digest = hashlib.sha256(index.encode()).hexdigest()
    shown = relative_path(path)
    print(f"Packaged {index.name} {index.version} (id {index.id}): {len(index.files)} files")
    print(f"  package: {shown} (unsigned)")
    print(f"  sha256:  {digest}")
    if skipped:
        listed = ", ".join(skipped[:5]) + (
            f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        print(f"  left out: {listed} - `--include PATTERN` ships what is left out by default")
    print("Next:")
    print(f"  nyxplug sign {quoted(shown)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..trust import TrustError, read_package, verify_contents

    config = _host.host_config(args)
    store, audit = _host.trust_and_audit(config)
    try:
        contents = read_package(args.package)
    except TrustError as exc:  # a malformed archive: refused before the checks, logged too
        audit.record(
            "verify", "refused", source=exc.source, plugin=exc.plugin, check=exc.check,
            reason=exc.problem,
        )  # fmt: skip
        raise
    with _own_key_hint(args, config):
        verified = verify_contents(
            store, source=contents.source, index_bytes=contents.index_bytes,
            signature_bytes=contents.signature_bytes, files=contents.files,
            require_signature=True, audit=audit, event="verify",
        )  # fmt: skip
    print(
        f"OK  {verified.name} {verified.version}  signed by "
        f"{signed_by(verified.signer, verified.key_id)} at {verified.signed_at}  "
        f"{len(verified.files)} files  sha256 {verified.package_sha256}"
    )
    for warning in verified.warnings:
        print(f"warning: {warning}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from ..trust import install_package

    config = _host.host_config(args)
    store, audit = _host.trust_and_audit(config)
    with _own_key_hint(args, config):
        installed = install_package(
            args.package, config.package_store_path, store, audit=audit,
            require_signature=config.runtime.require_signatures,
            allow_rollback=args.allow_rollback,
        )  # fmt: skip
    package = installed.package
    print(f"Installed {package.name} {package.version} (id {package.id}) in {installed.folder}")
    print(f"  {_host.host_line(args, config)}")
    if package.signed:
        print(f"  signed by {signed_by(package.signer, package.key_id)} at {package.signed_at}")
    else:
        print("  unsigned (allowed: runtime.require_signatures is off)")
    if installed.replaced is not None:
        print(f"  replaced {installed.replaced}")
    for warning in package.warnings:
        print(f"warning: {warning}")
    print("Next:")
    print(f"  nyxplug list{_host.given_options(args)}")
    return 0


@contextlib.contextmanager
def _own_key_hint(args: argparse.Namespace, config: HostConfig) -> Iterator[None]:
    """Turn an untrusted-key refusal for one of the user's own keys into that key's fix.

    keygen trusts a new key on the host it was run for; a package signed with it and
    installed on another host is refused as ``untrusted-key``, whose general hint
    (``trust add THEIR_KEY.pub``) does not say the key is the user's own.
    """
    from ..trust import SignatureRejected

    try:
        yield
    except SignatureRejected as exc:
        own = _own_public_key(args.package) if exc.check == "untrusted-key" else None
        if own is None:
            raise
        where = f" on this host ({config.runtime.state_dir})"
        raise SignatureRejected(
            exc.check, exc.source,
            f"signed by your own key {own.stem} ({own}), which is not trusted{where} - run "
            f"`nyxplug trust add {quoted(str(own))}{_host.given_options(args)}`",
            exc.plugin,
        ) from None  # fmt: skip


def _own_public_key(package: str) -> Path | None:
    """The ``.pub`` in the user's key folder whose key signed ``package``, if any."""
    import msgspec

    from ..trust import PublicKey, read_package
    from ..trust.keys import default_key_dir

    try:
        signature = msgspec.json.decode(read_package(package).signature_bytes or b"{}")
        key_id = signature.get("key_id") if isinstance(signature, dict) else None
        for path in sorted(default_key_dir(os.environ).glob("*.pub")):
            if PublicKey.load(path).key_id == key_id:
                return path
    except (ValueError, OSError):  # nothing to recognise: the general hint stands
        return None
    return None


def _uninstall(args: argparse.Namespace) -> int:
    from ..trust import uninstall_package

    config = _host.host_config(args)
    store, audit = _host.trust_and_audit(config)
    try:
        folder = uninstall_package(args.name, config.package_store_path, audit=audit)
    except LookupError as exc:
        raise Problem(str(exc.args[0] if exc.args else exc)) from None
    print(f"Uninstalled {args.name} (removed {folder})")
    floor = store.floor(args.name)
    if floor is not None:
        print(f"  versions older than {floor} stay refused (the rollback floor)")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "package": _package,
    "verify": _verify,
    "install": _install,
    "uninstall": _uninstall,
}
