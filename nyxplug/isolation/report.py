"""``isolation_report()``: which isolation layers a child really gets on this machine.

It starts a real child (``python -I -B -m nyxplug.host --report``), which applies
the layers to itself exactly as a plugin's child does and reports each one: what
took effect, and for every missing layer, why. Nothing is inferred from the host.
"""

from __future__ import annotations

import subprocess
import sys

import msgspec

from .cgroup import Cgroup
from .child import Launch
from .layers import IsolationReport, apply_layers
from .options import Limits

__all__ = ("isolation_report", "print_own_report")


def isolation_report(limits: Limits | None = None, *, timeout: float = 30.0) -> IsolationReport:
    """The layers a child started now with ``limits`` gets, in the order applied."""
    from .launch import child_environment, host_command

    limits = limits if limits is not None else Limits()
    cgroup, reason = Cgroup.create("report", limits)
    launch = Launch(
        name="report", secret=b"", limits=limits,
        cgroup_procs=cgroup.procs if cgroup is not None else (), cgroup_reason=reason,
    )  # fmt: skip
    try:
        done = subprocess.run(
            host_command("--report"), input=msgspec.msgpack.encode(launch),
            capture_output=True, env=child_environment(), timeout=timeout, check=False,
        )  # fmt: skip
    finally:
        if cgroup is not None:
            cgroup.remove()
    if done.returncode != 0:
        raise RuntimeError(
            f"The isolation probe child exited with {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return msgspec.json.decode(done.stdout, type=IsolationReport)


def print_own_report(launch_bytes: bytes) -> int:
    """In the probe child: apply the layers to this process and print the report."""
    launch = msgspec.msgpack.decode(launch_bytes, type=Launch)
    report = apply_layers(
        launch.limits, cgroup_procs=launch.cgroup_procs, cgroup_reason=launch.cgroup_reason
    )
    sys.stdout.buffer.write(msgspec.json.encode(report))
    sys.stdout.flush()
    return 0
