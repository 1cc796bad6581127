"""State files are read as packages are, and the trust store refuses what it did not write.

Issue 15: ids that name another key, FIFOs, links to devices, files over the cap.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from nyxplug.plugins.disabled import read_disabled
from nyxplug.trust import KeyFileError, SigningKey, TrustStore
from nyxplug.trust.store import MAX_TRUST_FILE


def test_an_entry_whose_id_names_another_key_is_refused(tmp_path: Path) -> None:
    """Revoking the real id of an aliased key would leave it trusted: refuse the store."""
    real, other = SigningKey.generate("mallory"), SigningKey.generate("alice")
    path = tmp_path / "trust.json"
    TrustStore(path).add_key(real.public)
    data = json.loads(path.read_text())
    data["keys"][0]["key_id"] = other.key_id  # the alias: alice's id on mallory's key
    path.write_text(json.dumps(data))

    with pytest.raises(KeyFileError) as refused:
        TrustStore(path)

    assert str(refused.value) == (
        f"Cannot use {path}: expected key id {real.key_id} for the key named mallory, got "
        f"{other.key_id} - the store was edited by hand or tampered with; remove the entry "
        "and `nyxplug trust add` the .pub file again"
    )


def test_a_store_nyxplug_wrote_reads_back(tmp_path: Path) -> None:
    key = SigningKey.generate("alice")
    store = TrustStore(tmp_path / "trust.json")
    store.add_key(key.public, scopes=("greeter*",))
    store.revoke_key("0" * 16)

    again = TrustStore(tmp_path / "trust.json")

    assert [k.key_id for k in again.keys()] == [key.key_id]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link_to_dev_zero(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


def _huge(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(MAX_TRUST_FILE + 1)
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (
            _fifo,
            r"Expected a regular file, got something else at .*trust\.json - fix or restore it",
        ),
        (_link_to_dev_zero, r"it is a symbolic link - the trust store is read as a regular file"),
        (_huge, rf"Expected a trust store under {MAX_TRUST_FILE} bytes, got {MAX_TRUST_FILE + 1}"),
    ],
    ids=["fifo", "link-to-dev-zero", "over-the-cap"],
)
@pytest.mark.timeout(10)
def test_a_trust_store_that_is_no_regular_file_is_refused_at_once(
    tmp_path: Path, make: Callable[[Path], Path], problem: str
) -> None:
    """Issue 15 item 7: a FIFO hung the host's start, /dev/zero exhausted its memory."""
    path = make(tmp_path / "trust.json")
    with pytest.raises(KeyFileError, match=rf"^Cannot use {re.escape(str(path))}: {problem}"):
        TrustStore(path)


@pytest.mark.parametrize("make", [_fifo, _link_to_dev_zero], ids=["fifo", "link-to-dev-zero"])
@pytest.mark.timeout(10)
def test_a_disabled_state_file_that_is_no_regular_file_is_refused(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    path = make(tmp_path / "plugins.json")
    with pytest.raises(ValueError, match=r"^Expected .*plugins\.json to be the JSON state"):
        read_disabled(path)
