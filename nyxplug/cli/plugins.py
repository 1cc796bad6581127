"""``nyxplug new / validate / list / info / run / enable / disable``: plugins from the shell.

Every command reads the host configuration with its host options applied
(``nyxplug.cli._host``: ``--config``, ``--plugin-dir``, ``--state-dir``,
``--allow-unsigned``). Output is plain text on stdout; a problem is one line on stderr,
``nyxplug COMMAND: what went wrong - what to do``, and exit status 1; usage errors are
argparse's (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..source.layout import MANIFEST_FILE, MAX_PLUGIN_ID, NAME_PATTERN
from . import _host
from ._common import Problem, relative_path, status_line

if TYPE_CHECKING:  # imported when used: `nyxplug --help` stays a cheap import
    from ..config import HostConfig
    from ..plugins import PluginManager, PluginStatus, ReloadStats
    from .control import Status

__all__ = (
    "COMMANDS",
    "EXAMPLES_DIR",
    "add_commands",
    "default_plugin_id",
    "run",
    "scaffold",
)

#: The subcommands this module adds to ``nyxplug``.
COMMANDS = ("new", "validate", "list", "info", "enable", "disable", "run")
#: The example plugin folders shipped in the package (``fast``, ``slow``, ``limited``).
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples" / "plugins"

_NAME_RE = re.compile(NAME_PATTERN)
#: How long ``nyxplug list`` waits for a running host's catalog before discovering alone.
_STATUS_TIMEOUT = 10.0
#: How long `nyxplug enable` / `disable` wait for a running host: a drain, on_unload,
#: on_load and health() (each bounded by the lifecycle timeout) may all run.
_TOGGLE_TIMEOUT = 300.0
_STATES = (
    "discovered", "validated", "loading", "active", "draining", "unloaded", "failed", "disabled"
)  # fmt: skip


# -- arguments ------------------------------------------------------------------------


def _plugin_name(text: str) -> str:
    if not _NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a plugin name matching {NAME_PATTERN} (lowercase letter first, then "
            f"lowercase letters, digits, _ or -), got {text!r}"
        )
    return text


def _plugin_id(text: str) -> int:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_PLUGIN_ID:
        raise argparse.ArgumentTypeError(f"expected a plugin id in 0..{MAX_PLUGIN_ID}, got {value}")
    return value


def add_commands(commands: _host.Commands, host: argparse.ArgumentParser) -> None:
    """Add the plugin subcommands to ``nyxplug``'s subparsers; ``host`` holds the host options."""
    new = commands.add_parser(
        "new",
        parents=[host],
        help="create a plugin folder: manifest, plugin class, tests and a benchmark",
        description=(
            "Create PARENT/NAME/ with a commented nyxplug.toml and NAME_plugin.py (a Plugin "
            "subclass of the handler kind asked for), and tests/test_NAME.py: pytest tests "
            "that load the folder in a real host with nyxplug's testing kit (nyx_host) and "
            "a benchmark of its throughput (nyx_bench)."
        ),
    )
    new.add_argument("name", type=_plugin_name, metavar="NAME", help="the plugin's name")
    new.add_argument(
        "--dir",
        dest="parent",
        metavar="PARENT",
        help="create the folder in PARENT (default: the current directory)",
    )
    new.add_argument(
        "--kind",
        choices=templates_kinds(),
        default="async",
        help="the handler: async (the default), sync, batch (handle_batch), stateful "
        "(export/import/migrate_state across reloads) or isolated (a child process)",
    )
    new.add_argument(
        "--id",
        dest="plugin_id",
        type=_plugin_id,
        metavar="N",
        help="the plugin id (default: derived from the name, crc32(name) & 0x7FFFFFFF)",
    )

    validate = commands.add_parser(
        "validate",
        parents=[host],
        help="check a plugin folder: manifest, API range, import, on_load/health/on_unload",
        description=(
            "Decode DIR/nyxplug.toml, check its plugin-API range, then load the plugin the way "
            "the runtime does (snapshot import, on_load, health) and unload it again."
        ),
    )
    validate.add_argument("folder", metavar="DIR", help="the plugin folder")

    listing = commands.add_parser(
        "list",
        parents=[host],
        help="the plugin catalog: a running host's, live, or else by discovery",
        description=(
            "Print the catalog; failed and disabled ones with why. When a host (nyxplug run "
            "--watch) runs with this state dir, its live catalog with reload counts (RELOADS: "
            "succeeded/attempted) and the last swap pause (PAUSE); else discovery only, "
            "nothing is loaded."
        ),
    )
    listing.add_argument("--state", choices=_STATES, help="only plugins in this state")
    listing.add_argument("--tag", metavar="T", help="only plugins with this tag")

    info = commands.add_parser(
        "info",
        parents=[host],
        help="everything the catalog and the manifest say about one plugin",
        description="Print one plugin's catalog entry and its manifest tables.",
    )
    info.add_argument("name", metavar="NAME", help="the plugin's name")

    runner = commands.add_parser(
        "run",
        parents=[host],
        help="start the host's plugins, send each a few DATA frames, show what they did",
        description=(
            "Start every enabled plugin (dependency order), send --frames DATA frames to each "
            "active plugin holding DATA_ACCESS (payload 'frame N'), wait until they are handled, "
            "print the plugins' log lines and their statistics, then unload everything. With "
            "--watch (or runtime.watch), keep running instead: reload plugins whose folders "
            "change, answer `nyxplug reload` and `nyxplug list` on <state dir>/control.sock, "
            "and unload everything on Ctrl-C or SIGTERM."
        ),
    )
    runner.add_argument(
        "--frames",
        type=int,
        metavar="N",
        help="DATA frames per plugin (default: 3; not with --watch)",
    )
    runner.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        help="stay up and hot-reload changed plugins until stopped (default: runtime.watch)",
    )

    for command, verb, effect in (
        (
            "enable",
            "allow",
            "a running host (run --watch) loads it now, others on their next start",
        ),
        (
            "disable",
            "keep",
            "a running host (run --watch) drains and unloads it now; remembered across restarts",
        ),
    ):
        sub = commands.add_parser(
            command,
            parents=[host],
            help=f"{verb} a plugin {'to load' if command == 'enable' else 'from loading'}"
            f" ({effect})",
            description=f"{command.capitalize()} NAME in the host's state dir: {effect}.",
        )
        sub.add_argument("name", metavar="NAME", help="the plugin's name")


# -- running ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    return _host.run(args.command, _HANDLERS[args.command], args)


# -- run --------------------------------------------------------------------------------


def _run_plugins(args: argparse.Namespace) -> int:
    config = _host.host_config(args)
    watch = config.runtime.watch if args.watch is None else args.watch
    if watch and args.frames is not None:
        raise Problem(
            "--frames sends frames and exits, --watch keeps the host up - give one of them"
        )
    frames = 3 if args.frames is None else args.frames
    if frames < 0:
        raise Problem(f"expected --frames >= 0, got {frames}")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  log %(name)s: %(message)s"))
    plugin_logs = logging.getLogger("nyxplug.plugin")
    plugin_logs.addHandler(handler)
    old_level = plugin_logs.level
    plugin_logs.setLevel(logging.INFO)
    where = _host.host_line(args, config)
    try:
        if watch:
            from .reload import serve

            return serve(_host.plugin_manager(config), where)
        return asyncio.run(_run_async(_host.plugin_manager(config), frames, where))
    finally:
        plugin_logs.removeHandler(handler)
        plugin_logs.setLevel(old_level)


async def _run_async(manager: PluginManager, frames: int, where: str) -> int:
    from .. import FrameType, Permission, PluginHeader

    catalog = await manager.start()
    print(where)
    for status in catalog:
        print(status_line(status))
        if status.shadows:
            print(f"  warning: {status.shadows}")
    active = [s for s in catalog if s.state == "active"]
    # The plugin ids to send to (permissions come from a manifest, so each has an id).
    targets = {s.name: s.id for s in active if "DATA_ACCESS" in s.permissions and s.id is not None}
    try:
        for plugin_id in targets.values():
            for n in range(frames):
                payload = f"frame {n}".encode()
                await manager.dispatcher.dispatch(FrameType.DATA, PluginHeader(plugin_id), payload)
        await manager.dispatcher.wait_idle()
    finally:
        stats = {s.name: manager.stats(s.name) for s in active}
        await manager.aclose()
    print("\nplugin               frames  errors  sandbox_violations")
    for name, st in stats.items():  # no counters: a plugin without a manifest (none sent)
        frames_done, errors, violations = (
            (st.messages_processed, st.errors, st.sandbox_violations) if st else (0, 0, 0)
        )
        print(f"{name:<20} {frames_done:>6}  {errors:>6}  {violations:>18}")
    skipped = [s.name for s in active if s.name not in targets]
    if skipped:
        print(f"(no DATA frames for {', '.join(skipped)}: no {Permission.DATA_ACCESS.name})")
    return 0 if active and all(s.state != "failed" for s in catalog) else 1


# -- new --------------------------------------------------------------------------------


def default_plugin_id(name: str) -> int:
    """The id ``nyxplug new`` gives ``name``: ``crc32(name) & 0x7FFFFFFF`` (stable)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _new(args: argparse.Namespace) -> int:
    parent = Path(args.parent) if args.parent else Path.cwd()
    plugin_id = args.plugin_id if args.plugin_id is not None else default_plugin_id(args.name)
    folder, files = scaffold(
        args.name, parent, plugin_id=plugin_id, tests=Path.cwd() / "tests", kind=args.kind
    )
    shown = relative_path(folder)
    print(f"Created plugin {args.name!r} (id {plugin_id}) in {shown}{os.sep}")
    for file, what in files:
        print(f"  {file:<{max(len(f) for f, _ in files)}}  {what}")
    test_file = files[-1][0]
    print("Next:")
    print(f"  nyxplug validate {shown}")
    print(f"  python -m pytest -q {test_file}")
    print(f"  nyxplug run --allow-unsigned --plugin-dir {relative_path(folder.parent)}")
    print(f"  nyxplug package {shown} && nyxplug sign ... && nyxplug install ...  (to ship it)")
    return 0


def templates_kinds() -> tuple[str, ...]:
    """The handler kinds ``nyxplug new --kind`` offers."""
    from .. import templates

    return templates.KINDS


def scaffold(
    name: str, parent: Path, *, plugin_id: int, tests: Path, kind: str = "async"
) -> tuple[Path, list[tuple[str, str]]]:
    """Write the ``nyxplug new`` skeleton to ``parent/name`` and its test into ``tests``.

    The test sits outside the plugin folder, so it never ships in the plugin's package.
    Returns the plugin folder and the files written (shown paths, what each is).
    """
    from .. import templates

    module = name.replace("-", "_") + "_plugin"
    class_name = "".join(part.capitalize() for part in re.split(r"[-_]+", name) if part)
    class_name += "Plugin"
    folder = parent / name
    test = tests / f"test_{name.replace('-', '_')}.py"
    for path, what in ((folder, "NAME or --dir"), (test, "NAME")):
        if path.exists() or path.is_symlink():
            raise Problem(
                f"{relative_path(path)} already exists - choose another {what}, or remove it"
            )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
        tests.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Problem(f"cannot create {relative_path(folder)}: {exc.strerror}") from None
    plugin_dir = Path(os.path.relpath(parent.resolve(), tests.resolve())).as_posix()
    isolation = "process" if kind == "isolated" else "in-process"
    values = {
        "name": name, "id": plugin_id, "module": module, "class_name": class_name,
        "plugin_dir": plugin_dir, "test_path": relative_path(test),
        "description": templates.DESCRIPTIONS[kind], "isolation": isolation,
        "isolation_pad": " " * max(1, 34 - len(f'isolation = "{isolation}"')),
    }  # fmt: skip
    files = [
        (folder / "nyxplug.toml", "the manifest", templates.MANIFEST),
        (
            folder / f"{module}.py",
            f"the plugin class {class_name} ({kind})",
            templates.PLUGINS[kind],
        ),
        (test, "its tests (nyx_host) and a benchmark (nyx_bench)", templates.TESTS[kind]),
    ]
    for path, _, template in files:
        path.write_text(template.format(**values), encoding="utf-8")
    return folder, [(relative_path(path), what) for path, what, _ in files]


# -- validate ---------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    import tempfile

    import msgspec

    from ..plugins import DependencyError, PluginLoadError, PluginStateError
    from ..plugins.catalog import shadow_message
    from ..source.manifest import check_api_compatible, load_manifest

    folder = Path(args.folder).resolve()
    if not (folder / MANIFEST_FILE).is_file():
        raise Problem(
            f"{args.folder} has no {MANIFEST_FILE} - give a plugin folder "
            "(create one with `nyxplug new NAME`)"
        )
    manifest = load_manifest(folder)
    check_api_compatible(manifest, source=str(folder / MANIFEST_FILE))
    config = _host.host_config(args)
    # A throwaway state dir: whether this host disabled the plugin does not matter here.
    with tempfile.TemporaryDirectory(prefix="nyxplug-validate-") as state:
        runtime = msgspec.structs.replace(
            config.runtime,
            plugin_dirs=(str(folder.parent),),
            state_dir=state,
            entry_points=False,
            require_signatures=False,  # validate checks the folder; `nyxplug verify` a package
        )
        manager = _host.plugin_manager(msgspec.structs.replace(config, runtime=runtime))
        manager.discover()
        mine = [s for s in manager.catalog() if Path(s.location) == folder]
        if not mine:  # another folder next to it has the same [plugin] name
            errors = [e for e in manager.discovery_errors if str(folder) in e]
            raise Problem(errors[0] if errors else f"{folder} was not discovered")
        status = mine[0]
        if status.state == "failed":
            raise Problem(status_line(status, state=False))
        try:  # worded as `nyxplug run` words it: the same check, the same text
            order = manager.load_order([status.name])
        except DependencyError as exc:
            raise Problem(str(exc)) from None

        async def load_and_unload() -> str | None:
            # Its dependencies (folders next to it) first, as a host loads them.
            loaded = []
            try:
                for name in order:
                    await manager.load(name)
                    loaded.append(name)
            finally:
                for name in reversed(loaded):
                    await manager.unload(name)
            reason: str | None = manager.status(status.name).reason
            return reason

        # The runtime also logs what we report below; one line on stderr is enough.
        quiet = logging.NullHandler()
        runtime_logger = logging.getLogger("nyxplug.runtime")
        runtime_logger.addHandler(quiet)
        try:
            problem = asyncio.run(load_and_unload())
        except (PluginLoadError, PluginStateError) as exc:
            raise Problem(str(exc)) from None
        finally:
            runtime_logger.removeHandler(quiet)
    if problem:
        raise Problem(f"Plugin {status.name!r}: {problem}")
    print(f"OK {status.name} {status.version} (id {status.id})")
    installed = _installed_version(config.package_store_path / status.name)
    mine_version = str(status.version)
    if installed == mine_version or installed == _UNREADABLE:
        # This host would run the package, not the folder just checked.
        text = shadow_message(
            status.name, str(config.package_store_path / status.name), installed, str(folder),
            mine_version,
        )  # fmt: skip
        print(f"warning: {text}")
    elif installed is not None:  # discovery keeps both, as versions of one plugin
        print(
            f"note: plugin {status.name}: this folder is version {mine_version}; version "
            f"{installed} is installed - both are versions of {status.name} (`nyxplug "
            f"versions {status.name}`)"
        )
    return 0


_UNREADABLE = "unreadable manifest"


def _installed_version(package: Path) -> str | None:
    """The version of the package installed at ``package``, None when none is."""
    from ..source.layout import INDEX_FILE
    from ..source.manifest import ManifestError, load_manifest

    if not (package / INDEX_FILE).is_file():
        return None
    try:
        return str(load_manifest(package).version)
    except ManifestError:
        return _UNREADABLE


# -- list, info -------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    config = _host.host_config(args)
    live = _live_status(config)
    if live is not None:
        path, reply = live
        print(f"Live catalog of the host at {relative_path(path)} (pid {reply.pid})")
        catalog = [
            entry.status
            for entry in reply.plugins
            if (args.state is None or entry.status.state == args.state)
            and (args.tag is None or args.tag in entry.status.tags)
        ]
        _print_catalog(args, catalog, reply.discovery_errors, "in the running host", live=True)
        return 0
    manager = _host.plugin_manager(config)
    manager.discover()
    where = ", ".join(str(d) for d in manager.plugin_dirs) or "no plugin directories"
    missing = [d for d in manager.plugin_dirs if not d.is_dir()]
    errors = [e for e in manager.discovery_errors if e not in _missing_dir_errors(missing)]
    _print_catalog(
        args, manager.catalog(state=args.state, tag=args.tag), errors,
        f"(searched {where})", live=False,
    )  # fmt: skip
    if missing:
        # Not an error: a new folder has no plugins yet. Say where they would go and how.
        for folder in missing:
            shown = relative_path(folder)
            print(
                f"Plugin folder {shown} does not exist yet: create a plugin in it with "
                f"`nyxplug new NAME --dir {shown}`, or name another folder with "
                "--plugin-dir DIR (or runtime.plugin_dirs in nyxplug.host.toml)."
            )
    return 0


def _missing_dir_errors(missing: Sequence[Path]) -> set[str]:
    """The discovery errors that only say a plugin folder is absent (reported apart)."""
    return {f"Plugin directory {folder} does not exist" for folder in missing}


def _print_catalog(
    args: argparse.Namespace,
    catalog: list[PluginStatus],
    errors: Sequence[str],
    where: str,
    *,
    live: bool,
) -> None:
    """The catalog table; a running host's adds its reload counts and last swap pause."""
    from .reload import reload_count

    if catalog:
        header: tuple[str, ...] = ("NAME", "VERSION", "ID", "STATE", "SOURCE", "SIGNER")
        if live:
            header += ("RELOADS", "PAUSE")
        rows = []
        for s in catalog:
            cells: tuple[str, ...] = (
                s.name,
                _text(s.version),
                _text(s.id),
                s.state,
                s.source,
                _signer(s),
            )
            if live:
                cells += (reload_count(s.reloads), _pause(s.reloads.last_pause))
            rows.append(cells)
        widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
        print(_row(header, widths))
        for status, cells in zip(catalog, rows, strict=True):
            print(_row(cells, widths))
            if status.reason and status.state in ("failed", "disabled"):
                print(f"    {status.state}: {status.reason}")
            if live and status.reloads.last_error:
                latest = status.reloads.last_outcome == "rolled-back"
                print(f"    {'last reload' if latest else 'earlier reload'} rolled back: "
                      f"{status.reloads.last_error}")  # fmt: skip
    else:
        wanted = [f"state {args.state}"] * bool(args.state) + [f"tag {args.tag}"] * bool(args.tag)
        suffix = f" with {' and '.join(wanted)}" if wanted else ""
        print(f"No plugins{suffix} {where}")
    if errors:
        print("Discovery errors:")
        for error in errors:
            print(f"  {error}")


def _live_status(config: HostConfig, command: str = "list") -> tuple[Path, Status] | None:
    """The running host's ``Status`` reply, or None when no host answers."""
    from .control import NoHost, Status, StatusRequest, request, socket_path

    path = socket_path(config.runtime.state_dir)
    try:
        reply = request(path, StatusRequest(), timeout=_STATUS_TIMEOUT)
    except NoHost:
        return None
    except Problem as exc:
        print(f"nyxplug {command}: {exc}; showing the catalog by discovery", file=sys.stderr)
        return None
    if not isinstance(reply, Status):
        print(
            f"nyxplug {command}: Expected the catalog from {path}, got {reply!r}; showing the "
            "catalog by discovery",
            file=sys.stderr,
        )
        return None
    return path, reply


def _pause(seconds: float | None) -> str:
    """A swap pause in milliseconds, one word (``0.21ms``), ``-`` when there was none."""
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


def _signer(status: PluginStatus) -> str:
    """``alice:1913a34716a64faa``, ``untrusted:<key id>`` or ``unsigned`` (one word)."""
    if status.key_id is None:
        return "unsigned"
    return f"{status.signer or 'untrusted'}:{status.key_id}"


def _info(args: argparse.Namespace) -> int:
    import msgspec

    from ..plugins import PluginNotFound

    config = _host.host_config(args)
    manager = _host.plugin_manager(config)
    manager.discover()
    live = _live_status(config, command="info")
    status, stats = manager.status(args.name), None
    if live is not None:  # the running host's own entry: the version that serves now
        path, reply = live
        entries = {entry.status.name: entry for entry in reply.plugins}
        entry = entries.get(args.name)
        if entry is None:
            raise PluginNotFound(args.name, tuple(sorted(entries)))
        status, stats = entry.status, entry.stats
        print(f"Live, from the host at {relative_path(path)} (pid {reply.pid})")
    fields = msgspec.structs.asdict(status)
    if status.id is None:
        fields["id"] = "- (no valid manifest)"
    fields["reloads"] = _reloads_text(status.reloads)
    if stats is not None:
        fields["stats"] = (
            f"{stats.messages_processed} frames, {stats.errors} errors, "
            f"{stats.permission_violations} permission and {stats.sandbox_violations} sandbox "
            f"violations, queue {stats.queue_depth}"
        )
    width = max(len(key) for key in fields) + 1
    for key, value in fields.items():
        print(f"{key + ':':<{width}} {_value(value)}")
    manifest = manager.manifest(args.name)
    if manifest is None:
        return 0
    defaults = manager.config.defaults
    resources, sandbox = manifest.resources, manifest.sandbox
    capacity = resources.capacity
    timeout = resources.handler_timeout
    sections: dict[str, dict[str, Any]] = {
        "resources": {
            "capacity": capacity if capacity else f"{defaults.capacity} (host default)",
            "handler_timeout": f"{timeout:g} s"
            if timeout
            else f"{defaults.handler_timeout:g} s (host default)",
            "isolation": resources.isolation,
        },
        "sandbox": {
            "network": sandbox.network,
            "network_allowlist": sandbox.network_allowlist,
            "filesystem": sandbox.filesystem,
            "filesystem_allowlist": sandbox.filesystem_allowlist,
            "memory_limit": f"{sandbox.memory_limit_text} ({sandbox.memory_limit} bytes)"
            if isinstance(sandbox.memory_limit_text, int | str)
            else "not set",
        },
        "config": dict(manifest.config),
        "dependencies": dict(manifest.dependencies),
    }
    for title, table in sections.items():
        print(f"[{title}]")
        if not table:
            print("  (none)")
        inner = max((len(key) for key in table), default=0) + 1
        for key, value in table.items():
            print(f"  {key + ':':<{inner}} {_value(value)}")
    return 0


def _reloads_text(reloads: ReloadStats) -> str:
    """``ReloadStats`` in words: ``none`` before the first reload."""
    if not reloads.attempted:
        return "none"
    parts = [f"{reloads.succeeded}/{reloads.attempted} succeeded"]
    if reloads.rolled_back:
        parts.append(f"{reloads.rolled_back} rolled back")
    if reloads.retries:
        parts.append(f"{reloads.retries} retries")
    if reloads.last_outcome:
        parts.append(f"last {reloads.last_outcome}")
    if reloads.last_pause is not None and reloads.max_pause is not None:
        parts.append(f"pause {_pause(reloads.last_pause)} (max {_pause(reloads.max_pause)})")
    if reloads.last_error:
        parts.append(f"last error: {reloads.last_error}")
    return ", ".join(parts)


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) if value else "-"
    return str(value)


# -- enable, disable ----------------------------------------------------------------------


def _toggle(args: argparse.Namespace, *, enable: bool) -> int:
    from ..plugins.manager import STATE_FILE

    config = _host.host_config(args)
    if _toggle_live(args, config, enable=enable):
        return 0
    manager = _host.plugin_manager(config)
    manager.discover()
    before = manager.status(args.name)
    try:
        if enable:
            manager.enable(args.name)
        else:
            manager.disable(args.name)
    except OSError as exc:
        raise Problem(
            f"cannot write {manager.state_dir}{os.sep}{STATE_FILE}: {exc.strerror} - "
            "check runtime.state_dir"
        ) from None
    after = manager.status(args.name)
    where = f"{manager.state_dir}{os.sep}{STATE_FILE}"
    if enable:
        was = "was already enabled" if before.enabled else "enabled"
        print(f"{args.name}: {was}; now {after.state} (remembered in {where})")
    else:
        was = "was already disabled" if not before.enabled else "disabled"
        print(f"{args.name}: {was}; it will not load until `nyxplug enable {args.name}` "
              f"(remembered in {where})")  # fmt: skip
    return 0


def _toggle_live(args: argparse.Namespace, config: HostConfig, *, enable: bool) -> bool:
    """Enable or disable on the running host, if one answers (False: none runs).

    The host remembers it (its state file) and acts at once: a disabled plugin is
    drained and unloaded, an enabled one loaded.
    """
    from .control import (
        DisableRequest,
        EnableRequest,
        Failure,
        NoHost,
        Toggled,
        request,
        socket_path,
    )

    path = socket_path(config.runtime.state_dir)
    message = EnableRequest(name=args.name) if enable else DisableRequest(name=args.name)
    try:
        reply = request(path, message, timeout=_TOGGLE_TIMEOUT)
    except NoHost:
        return False
    if isinstance(reply, Failure):
        raise Problem(reply.message)
    if not isinstance(reply, Toggled):
        raise Problem(f"Expected an enable/disable reply from {path}, got {type(reply).__name__}")
    status = reply.status
    host = f"the running host at {relative_path(path)}"
    if enable:
        was = "enabled" if reply.changed else "was already enabled"
        reason = f" - {status.reason}" if status.reason else ""
        print(f"{args.name}: {was}; now {status.state} on {host}{reason}")
    else:
        was = "disabled" if reply.changed else "was already disabled"
        if reply.stats is not None:
            done = reply.stats.messages_processed
            now = f"drained and unloaded from {host} ({done} frames handled)"
        else:
            now = f"not running on {host}"
        print(f"{args.name}: {was}; {now}; it will not load until `nyxplug enable {args.name}`")
    return True


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "new": _new,
    "validate": _validate,
    "list": _list,
    "info": _info,
    "run": _run_plugins,
    "enable": functools.partial(_toggle, enable=True),
    "disable": functools.partial(_toggle, enable=False),
}
