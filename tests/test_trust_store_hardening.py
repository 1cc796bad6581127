"""The trust store refuses a file it did not write: ids that name another key (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nyxplug.trust import KeyFileError, SigningKey, TrustStore


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
