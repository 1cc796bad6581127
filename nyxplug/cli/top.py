"""``nyxplug top``: a live view of a running host, through its admin API.

Every ``--interval`` seconds it reads ``/api/v1/plugins`` (states) and ``/metrics``
(counters) of the host ``nyxplug serve --admin`` started, and redraws one row per
plugin in place: state, frames/s since the last refresh, queue depth and high-water
mark, handler errors, refusals by reason, reloads, isolation restarts, the circuit
breaker (its state, or ``repairing: STEP`` while the recovery ladder runs one) and the
latest rollout (``canary 1.1.0 10%`` while one runs, then how it ended; ``-`` for none). ``q`` or
Ctrl-C quits and gives the terminal back as it was. ``--once`` prints one table (two
samples ``--interval`` apart) instead, for scripts and logs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ._common import Problem

__all__ = ("COMMANDS", "add_commands", "run")

COMMANDS = ("top",)

_REFUSAL_SHORT = {
    "would_block": "full",
    "permission_denied": "perm",
    "sandbox_violation": "sandbox",
    "plugin_closed": "closed",
    "circuit_open": "circuit",
}


def add_commands(commands: Any) -> None:
    top = commands.add_parser(
        "top",
        help="live view of a running host's plugins (through nyxplug serve --admin)",
        description="Show a running host's plugins, refreshed in place: state, frames/s, "
        "queue depth and high-water mark, errors, refusals by reason, reloads, isolation "
        "restarts, circuit breaker, rollout. q or Ctrl-C quits.",
    )
    top.add_argument(
        "--admin", metavar="ADDRESS", required=True,
        help="the host's admin API: HOST:PORT or unix:PATH (as given to nyxplug serve)",
    )  # fmt: skip
    top.add_argument(
        "--admin-token-file", metavar="FILE", required=True,
        help="the file holding the admin API's bearer token",
    )  # fmt: skip
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS",
        help="seconds between refreshes (default 1)",
    )  # fmt: skip
    top.add_argument("--once", action="store_true", help="print one table and exit")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Client:
    """GETs on the admin API with the bearer token."""

    def __init__(self, address: str, token: bytes) -> None:
        from ..admin.options import parse_admin_address

        self.address = parse_admin_address(address)
        self.token = token.decode()

    def get(self, path: str) -> tuple[str, bytes]:
        a = self.address
        conn: http.client.HTTPConnection
        if a.unix is not None:
            conn = _UnixConnection(a.unix, 10.0)
        else:
            conn = http.client.HTTPConnection(a.host or "127.0.0.1", a.port, timeout=10.0)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise Problem(f"cannot reach the admin API at {a}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            detail = json.loads(body).get("detail", "") if body.startswith(b"{") else ""
            raise Problem(f"GET {path} on {a}: {response.status} {detail}".rstrip())
        return response.getheader("content-type", ""), body


@dataclass
class Row:
    name: str
    version: str
    state: str
    processed: float = 0.0
    depth: float = 0.0
    high: float = 0.0
    errors: float = 0.0
    refused: dict[str, float] = field(default_factory=dict)
    reloads: float = 0.0
    restarts: float = 0.0
    #: The breaker's state ("-" without one), or "repairing: STEP" during a recovery step.
    breaker: str = "-"
    #: The latest rollout's state, strategy and candidate ("" without one).
    rollout_state: str = ""
    strategy: str = ""
    candidate: str = ""
    #: Each loaded version's share of the route keys (0..1), when several are loaded.
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def rollout(self) -> str:
        """``canary 1.1.0 10%`` while a rollout runs, else how the latest ended, or ``-``."""
        if not self.rollout_state:
            return "-"
        if self.rollout_state in ("progressing", "paused", "awaiting_promotion"):
            share = self.weights.get(self.candidate, 0.0) * 100
            what = self.strategy.replace("_", "-")
            if self.rollout_state != "progressing":
                what = "paused" if self.rollout_state == "paused" else "awaiting"
            return f"{what} {self.candidate} {share:g}%"
        return self.rollout_state.replace("_", "-")


def sample(client: Client) -> dict[str, Row]:
    """Every plugin's row, from one read of each endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = client.get("/api/v1/plugins")
    rows = {
        p["name"]: Row(p["name"], p["version"] or "-", p["state"])
        for p in json.loads(body)["plugins"]
    }
    repairing = {
        p["name"]: p["recovery"]["repairing"]
        for p in json.loads(body)["plugins"]
        if p.get("recovery") and p["recovery"].get("repairing")
    }
    _, text = client.get("/metrics")
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            row = rows.get(s.labels.get("plugin", ""))
            if row is None:
                continue
            name = s.name
            if name == "nyxplug_frames_processed_total":
                row.processed = s.value
            elif name == "nyxplug_queue_depth":
                row.depth = s.value
            elif name == "nyxplug_queue_high_watermark":
                row.high = s.value
            elif name == "nyxplug_handler_errors_total":
                row.errors = s.value
            elif name == "nyxplug_frames_refused_total":
                row.refused[s.labels["reason"]] = s.value
            elif name == "nyxplug_reloads_total" and s.labels.get("result") == "swapped":
                row.reloads = s.value
            elif name == "nyxplug_isolation_restarts_total":
                row.restarts = s.value
            elif name == "nyxplug_breaker_state" and s.value == 1:
                # Several versions side by side: the row shows the catalog version's.
                if s.labels.get("version") in (None, row.version) or row.breaker == "-":
                    row.breaker = s.labels["state"]
            elif name == "nyxplug_rollout_state" and s.value == 1:
                row.rollout_state = s.labels["state"]
            elif name == "nyxplug_rollout_info":
                row.strategy, row.candidate = s.labels["strategy"], s.labels["candidate"]
            elif name == "nyxplug_route_weight":
                row.weights[s.labels["version"]] = s.value
    for name, step in repairing.items():
        rows[name].breaker = f"repairing: {step}"
    return rows


HEADER = (
    f"{'PLUGIN':<20} {'VERSION':<9} {'STATE':<9} {'FRAMES/S':>10} {'QUEUE':>6} {'HWM':>6} "
    f"{'ERRORS':>7} {'RELOADS':>7} {'RESTARTS':>8}  {'BREAKER':<21} {'ROLLOUT':<20} REFUSED"
)


def table(before: dict[str, Row], after: dict[str, Row], seconds: float) -> list[str]:
    lines = [HEADER]
    for name, row in sorted(after.items()):
        old = before.get(name)
        rate = (row.processed - old.processed) / seconds if old and seconds > 0 else 0.0
        refused = ", ".join(
            f"{_REFUSAL_SHORT.get(reason, reason)} {count:.0f}"
            for reason, count in sorted(row.refused.items())
            if count
        )
        lines.append(
            f"{name[:20]:<20} {row.version[:9]:<9} {row.state[:9]:<9} {rate:>10,.0f} "
            f"{row.depth:>6.0f} {row.high:>6.0f} {row.errors:>7.0f} {row.reloads:>7.0f} "
            f"{row.restarts:>8.0f}  {row.breaker[:21]:<21} {row.rollout[:20]:<20} {refused or '-'}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from . import _host

    return _host.run("top", _top, args)


def _top(args: argparse.Namespace) -> int:
    import importlib.util

    from ..admin.options import AdminConfigError, read_token

    if importlib.util.find_spec("prometheus_client") is None:
        raise Problem(
            "nyxplug top reads /metrics with prometheus-client: pip install 'nyxplug[admin]'"
        )
    if args.interval <= 0:
        raise Problem(f"--interval {args.interval}: expected a number of seconds above 0")
    try:
        client = Client(args.admin, read_token(args.admin_token_file))
    except AdminConfigError as exc:
        raise Problem(str(exc)) from None
    if args.once:
        before, started = sample(client), time.monotonic()
        time.sleep(args.interval)  # the interval the rates are measured over
        after = sample(client)
        print("\n".join(table(before, after, time.monotonic() - started)))
        return 0
    import curses

    try:
        curses.wrapper(_screen, client, args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def _screen(window: Any, client: Client, interval: float) -> None:
    import curses

    curses.curs_set(0)
    window.timeout(int(interval * 1000))
    before, taken = sample(client), time.monotonic()
    after, now = before, taken
    while True:
        height, width = window.getmaxyx()
        window.erase()
        title = (
            f"nyxplug top - {client.address} - {len(after)} plugins - every {interval:g} s "
            "- q quits"
        )
        lines = [title, "", *table(before, after, now - taken)]
        for y, line in enumerate(lines[: height - 1]):
            window.addnstr(y, 0, line, width - 1)
        window.refresh()
        key = window.getch()  # waits up to the interval
        if key in (ord("q"), ord("Q"), 27):
            return
        before, taken = after, now
        after, now = sample(client), time.monotonic()
