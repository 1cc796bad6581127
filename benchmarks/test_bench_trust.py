"""What trust costs: verifying a 1 MiB signed package (the issue's "about a millisecond").

Rows, all on the same deterministic 1 MiB plugin (17 source files):

* ``verify`` - ``verify_contents`` on bytes already in memory, signature cache cleared
  each round (Ed25519 + every file's SHA-256 + the manifest check): the cost the issue names;
* ``sha256 floor`` - hashing the same bytes and nothing else, the floor of ``verify``;
* ``load path`` - ``read_installed`` + ``verify_contents``: what the runtime pays per load;
* ``read .nyxp`` - opening the zip and inflating each member with its checks (install time).

Run ``pytest benchmarks/test_bench_trust.py --benchmark-group-by=group``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nyxplug.trust import (
    PackageContents,
    SigningKey,
    TrustStore,
    install_package,
    package_folder,
    read_installed,
    read_package,
    sign_package,
    verify_contents,
)

MIB = 1024 * 1024
MANIFEST = """\
[plugin]
name = "big"
id = 5
version = "1.0.0"
entry = "big_plugin:Big"
api = ">=1.0, <2"
"""


@dataclass
class Signed:
    package: Path
    installed: Path
    store: TrustStore
    contents: PackageContents


def plugin_folder(root: Path, total: int = MIB) -> Path:
    """16 deterministic 64 KiB comment-only modules plus the plugin: about ``total`` bytes."""
    folder = root / "big"
    folder.mkdir()
    (folder / "nyxplug.toml").write_text(MANIFEST)
    (folder / "big_plugin.py").write_text("class Big:\n    async def handle(self, m): ...\n")
    rnd = random.Random(1)
    chunk = total // 16
    for i in range(16):
        text = "".join(rnd.choice("abcdefghij \n") for _ in range(chunk - 3))
        (folder / f"data_{i}.py").write_text(f"# {text}\n")
    return folder


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    root = tmp_path_factory.mktemp("trust-bench")
    key = SigningKey.generate("bench")
    package, _ = package_folder(plugin_folder(root), root / "big.nyxp")
    sign_package(package, key)
    store = TrustStore(root / "state" / "trust.json")
    store.add_key(key.public)
    installed = install_package(package, root / "state" / "packages", store).folder
    yield Signed(package, installed, store, read_package(package))


def _verify(signed: Signed, contents: PackageContents) -> None:
    signed.store._cache.clear()  # every round pays for Ed25519 too
    verify_contents(
        signed.store,
        source=contents.source,
        index_bytes=contents.index_bytes,
        signature_bytes=contents.signature_bytes,
        files=contents.files,
    )


@pytest.mark.benchmark(group="trust: 1 MiB package")
def test_verify_1mib_in_memory(benchmark: Any, signed: Signed) -> None:
    assert sum(map(len, signed.contents.files.values())) >= MIB
    benchmark(_verify, signed, signed.contents)


@pytest.mark.benchmark(group="trust: 1 MiB package")
def test_sha256_floor_1mib(benchmark: Any, signed: Signed) -> None:
    data = b"".join(signed.contents.files.values())
    benchmark(lambda: hashlib.sha256(data).digest())


@pytest.mark.benchmark(group="trust: 1 MiB package")
def test_load_path_read_installed_and_verify(benchmark: Any, signed: Signed) -> None:
    benchmark(lambda: _verify(signed, read_installed(signed.installed)))


@pytest.mark.benchmark(group="trust: 1 MiB package")
def test_read_package_1mib(benchmark: Any, signed: Signed) -> None:
    benchmark(read_package, signed.package)
