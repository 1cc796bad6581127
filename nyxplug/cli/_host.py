"""The host options of the ``nyxplug`` commands, and the one place they are read.

Every command that acts for a host takes ``--config FILE`` and ``--state-dir DIR``;
the commands that run or list plugins also take ``--plugin-dir DIR`` and
``--allow-unsigned``. :func:`host_config` turns them into the host's ``HostConfig``
(``--config``, else ``$NYXPLUG_CONFIG``, else the nearest ``nyxplug.host.toml`` walking
up from the current directory, else the per-user host in ``~/.nyxplug``; then the
``NYXPLUG_*`` overrides; then these options), the same way for every command, so a
command acts on the same host from any folder. :func:`host_line` says which one.
Everything a command needs of the host - its plugin manager, trust store, audit log,
control socket - is built from that configuration, never from the options again.

:func:`run` reports a command's problems the same way for every command: one line on
stderr, ``nyxplug COMMAND: what went wrong - what to do``, and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._errors import NyxplugError
from ._common import Problem, quoted

if TYPE_CHECKING:  # imported when used: `nyxplug --help` stays a cheap import
    from ..config import HostConfig
    from ..plugins import PluginManager
    from ..trust import AuditLog, TrustStore

    #: ``nyxplug``'s subparsers, which each command module adds its commands to.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = (
    "given_options",
    "host_config",
    "host_line",
    "host_options",
    "plugin_manager",
    "run",
    "store_options",
    "trust_and_audit",
)


# -- the options ------------------------------------------------------------------------


def host_options() -> argparse.ArgumentParser:
    """The options of the commands that run or list plugins (a parent parser)."""
    return _options(
        "where enable/disable is remembered and a running host's control socket is "
        "(replaces runtime.state_dir)",
        plugins=True,
    )


def store_options() -> argparse.ArgumentParser:
    """The options of the commands that use the host's trust and package stores."""
    return _options(
        "where the trust store, audit log and installed packages live (replaces runtime.state_dir)",
        plugins=False,
    )


def _options(state_dir_help: str, *, plugins: bool) -> argparse.ArgumentParser:
    host = argparse.ArgumentParser(add_help=False)
    options = host.add_argument_group("host options")
    options.add_argument(
        "--config",
        metavar="FILE",
        help="host configuration file (default: $NYXPLUG_CONFIG, else the nearest "
        "nyxplug.host.toml here or above, else the per-user host in ~/.nyxplug)",
    )
    if plugins:
        options.add_argument(
            "--plugin-dir",
            dest="plugin_dirs",
            action="append",
            metavar="DIR",
            help="folder of plugin folders; repeat for more (replaces runtime.plugin_dirs)",
        )
    options.add_argument("--state-dir", metavar="DIR", help=state_dir_help)
    if plugins:
        options.add_argument(
            "--allow-unsigned",
            action="store_true",
            help="load unsigned plugin folders (development only; replaces "
            "runtime.require_signatures)",
        )
    else:  # the same namespace for every command, so host_config reads it one way
        host.set_defaults(plugin_dirs=None, allow_unsigned=False)
    return host


# -- what they become ---------------------------------------------------------------------


def host_config(args: argparse.Namespace) -> HostConfig:
    """The host's configuration, with this command line's host options applied.

    ``--plugin-dir`` replaces ``runtime.plugin_dirs``, ``--state-dir`` replaces
    ``runtime.state_dir`` (both made absolute, ``~`` expanded, as the file's paths are)
    and ``--allow-unsigned`` turns ``runtime.require_signatures`` off.
    """
    import msgspec

    from ..config import load_config

    config = load_config(args.config, environ=os.environ)
    runtime = config.runtime
    if args.plugin_dirs is not None:
        plugin_dirs = tuple(_absolute(folder) for folder in args.plugin_dirs)
        runtime = msgspec.structs.replace(runtime, plugin_dirs=plugin_dirs)
    if args.state_dir:
        runtime = msgspec.structs.replace(runtime, state_dir=_absolute(args.state_dir))
    if args.allow_unsigned:
        runtime = msgspec.structs.replace(runtime, require_signatures=False)
    return msgspec.structs.replace(config, runtime=runtime)


def host_line(args: argparse.Namespace, config: HostConfig) -> str:
    """``Host: STATE_DIR (from WHERE)``: which host a command acted on, and why that one."""
    from ..config import locate_host_config

    if args.state_dir:
        why = "--state-dir"
    elif os.environ.get("NYXPLUG_STATE_DIR"):
        why = "$NYXPLUG_STATE_DIR"
    else:
        why = locate_host_config(args.config, os.environ)[1]
    return f"Host: {config.runtime.state_dir} (from {why})"


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def plugin_manager(config: HostConfig) -> PluginManager:
    """The ``PluginManager`` of the host ``config`` describes.

    Classes registered with ``@plugin`` are left out: this process has none of its own
    (entry-point classes are found through their entry points).
    """
    from ..plugins import PluginManager

    try:
        return PluginManager(config, include_registered=False)
    except ValueError as exc:  # an unreadable state file or trust store
        raise Problem(str(exc)) from None


def trust_and_audit(config: HostConfig) -> tuple[TrustStore, AuditLog]:
    """The host's trust store and audit log."""
    from ..trust import AuditLog, TrustStore

    return TrustStore(config.trust_store_path), AuditLog(config.audit_log_path)


def given_options(args: argparse.Namespace) -> str:
    """``--config`` and ``--state-dir`` as given, to repeat in a suggested command."""
    given = [("--config", args.config), ("--state-dir", args.state_dir)]
    return "".join(f" {option} {quoted(value)}" for option, value in given if value)


# -- reporting problems -------------------------------------------------------------------


def run(
    command: str, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """``handler(args)``'s exit status; a problem it raises is reported for ``nyxplug COMMAND``.

    A problem is what the user can fix: a :class:`Problem`, a configuration, manifest,
    trust or key file error, a plugin that is not there, a path that cannot be read or
    written. Anything else is a bug and keeps its traceback.
    """
    try:
        return handler(args)
    except (Problem, NyxplugError) as exc:
        if not isinstance(exc, Problem) and not isinstance(exc, _reported_errors()):
            raise
        problem = str(exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        problem = f"{where}{exc.strerror or exc} - check the path and its permissions"
    print(f"nyxplug {command}: {' '.join(problem.split())}", file=sys.stderr)
    return 1


def _reported_errors() -> tuple[type[NyxplugError], ...]:
    """The library's errors that are problems, imported only once one was raised.

    A command imports only what it uses: ``nyxplug reload`` never loads the trust code.
    """
    from ..config import ConfigError
    from ..plugins import ManifestError, PluginNotFound
    from ..trust import KeyFileError, TrustError

    return ConfigError, ManifestError, PluginNotFound, TrustError, KeyFileError
