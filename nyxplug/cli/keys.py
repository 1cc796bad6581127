"""``nyxplug keygen`` and ``nyxplug sign``: a publisher's Ed25519 keys from the shell.

Keys live in ``$NYXPLUG_KEY_DIR`` (default ``~/.nyxplug/keys``; the folder's rules are
``nyxplug.trust.keys``'); a key's passphrase comes from ``$NYXPLUG_KEY_PASSPHRASE`` or,
on a terminal, a prompt - asking is this module's part. ``keygen`` also trusts the new
key on this host, in the state dir of ``--config FILE`` / ``--state-dir DIR``. Output is
plain text on stdout; a problem is one line on stderr, ``nyxplug COMMAND: what went
wrong - what to do``, and exit status 1; usage errors are argparse's (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import _host
from ._common import Problem, quoted
from .trust import grant, grant_options, warn_if_expired

if TYPE_CHECKING:  # imported when used: `nyxplug --help` stays a cheap import
    from ..trust import SigningKey

__all__ = ("COMMANDS", "add_keygen", "add_sign", "run")

#: The subcommands this module adds to ``nyxplug``.
COMMANDS = ("keygen", "sign")


# -- arguments ------------------------------------------------------------------------


def _key_name(text: str) -> str:
    from ..trust.keys import KEY_NAME_PATTERN

    if not re.fullmatch(KEY_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"expected a key name matching {KEY_NAME_PATTERN} (lowercase letters, digits, "
            f"_ or -), got {text!r}"
        )
    return text


def add_keygen(commands: _host.Commands) -> None:
    """Add ``keygen`` to ``nyxplug``'s subparsers (``commands``)."""
    keygen = commands.add_parser(
        "keygen",
        parents=[_host.store_options(), grant_options()],
        help="create an Ed25519 signing key (NAME.key, NAME.pub) and trust it on this host",
        description=(
            "Generate an Ed25519 key pair: DIR/NAME.key (the private key, mode 0600) and "
            "DIR/NAME.pub (the public key, one line to give to hosts). The key is encrypted "
            "with $NYXPLUG_KEY_PASSPHRASE when it is set, or with a passphrase typed at the "
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
        help="write the key files in DIR (default: $NYXPLUG_KEY_DIR, else ~/.nyxplug/keys)",
    )
    keygen.add_argument(
        "--passphrase",
        action="store_true",
        help="encrypt the private key with a passphrase asked twice (or $NYXPLUG_KEY_PASSPHRASE)",
    )
    keygen.add_argument(
        "--no-trust",
        action="store_true",
        help="do not add the public key to this host's trust store",
    )


def add_sign(commands: _host.Commands) -> None:
    """Add ``sign`` to ``nyxplug``'s subparsers (``commands``)."""
    sign = commands.add_parser(
        "sign",
        help="sign a .nyxp package with your private key (in place)",
        description=(
            "Sign PKG's index with an Ed25519 key, replacing an earlier signature. "
            "The key's passphrase comes from $NYXPLUG_KEY_PASSPHRASE, else a prompt on a "
            "terminal."
        ),
    )
    sign.add_argument("package", metavar="PKG", help="the .nyxp package")
    sign.add_argument(
        "--key",
        metavar="KEY",
        help="a .key file, or a key name in $NYXPLUG_KEY_DIR (default: the only key there)",
    )


# -- running ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    return _host.run(args.command, _keygen if args.command == "keygen" else _sign, args)


def _ask(prompt: str) -> str:
    import getpass

    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise Problem("no passphrase was typed - run the command again") from None


def _new_passphrase(args: argparse.Namespace) -> tuple[bytes | None, str]:
    """The new key's passphrase, and where it came from."""
    from ..trust.keys import PASSPHRASE_ENV, passphrase_from

    from_env = passphrase_from(os.environ)
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


# -- keygen -------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    from ..trust import SigningKey
    from ..trust.keys import PASSPHRASE_ENV, default_key_dir, default_key_name

    name = args.name or default_key_name()
    folder = Path(args.out).expanduser().absolute() if args.out else default_key_dir(os.environ)
    if args.no_trust and (args.scopes or args.expires):
        raise Problem(
            "--scope and --expires describe the trust this host gives the key - "
            "leave them out with --no-trust"
        )
    # Read the configuration and the trust store first: a problem there writes nothing.
    config = _host.host_config(args)
    host = None if args.no_trust else _host.trust_and_audit(config)
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
    if host is not None:
        store, audit = host
        entry = grant(store, audit, key.public, args, source=str(public_path))
        print(
            f"Trusted on this host for plugins matching {', '.join(entry.scopes)}, expires "
            f"{entry.expires or 'never'} ({store.path})"
        )
        print(f"  {_host.host_line(args, config)}")
        warn_if_expired(store, entry)
    else:
        print(
            f"Not trusted on this host; to trust it: nyxplug trust add {quoted(str(public_path))}"
        )
    print("Next:")
    print("  nyxplug package DIR")
    return 0


# -- sign ---------------------------------------------------------------------------------


def _find_key(spec: str | None) -> Path:
    """The private key file ``sign --key`` means (a path, or a name in the key dir)."""
    from ..trust.keys import default_key_dir, key_files

    folder = default_key_dir(os.environ)
    keys = key_files(folder)
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


def _load_key(path: Path) -> SigningKey:
    """Load a private key, asking for its passphrase only when it is encrypted."""
    from ..trust import SigningKey
    from ..trust.keys import is_encrypted, passphrase_from

    passphrase = None
    if is_encrypted(path):
        passphrase = passphrase_from(os.environ)
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
    print(f"  nyxplug verify {quoted(args.package)}")
    return 0
