"""``nyxplug keygen / package / sign / verify / install / uninstall / trust / audit``.

In-process (``nyxplug.cli.main`` with ``capsys``) on real files in tmp_path: real keys,
real ``.nyxp`` zips, a real trust store and audit log; plus one run of the real
``python -m nyxplug`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from nyxplug.cli import main
from nyxplug.cli.plugins import EXAMPLES_DIR
from nyxplug.trust import AuditLog, TrustStore, read_package

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = r"[0-9a-f]{16}"
SHA256 = r"[0-9a-f]{64}"


class _Terminal(io.StringIO):
    """A stdin that says it is a terminal (getpass itself is replaced in those tests)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean publisher and host in tmp_path: keys in tmp/keys, state in tmp/state.

    stdin is never a terminal (so nothing can wait on a passphrase prompt), and the
    example plugin folder ``fast`` is copied to tmp/fast.
    """
    for name in list(os.environ):
        if name.startswith("NYXPLUG_") and name != "NYXPLUG_REQUIRE_EXTENSIONS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NYXPLUG_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("NYXPLUG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NYXPLUG_ENTRY_POINTS", "0")
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    monkeypatch.chdir(tmp_path)
    shutil.copytree(
        EXAMPLES_DIR / "fast", tmp_path / "fast", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = cli(capsys, *argv)
    assert (code, err) == (0, ""), (argv, out, err)
    return out


def problem(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must report a problem: exit 1, one line on stderr, no stdout."""
    code, out, err = cli(capsys, *argv)
    assert code == 1, (argv, out, err)
    assert out == ""
    command = " ".join(argv[:2]) if argv[0] == "trust" else argv[0]
    assert err.startswith(f"nyxplug {command}: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == "", (argv, out, err)
    return err


def keygen(capsys: pytest.CaptureFixture[str], name: str, *options: str) -> str:
    """``nyxplug keygen --name NAME``; returns the key id."""
    out = ok(capsys, "keygen", "--name", name, *options)
    match = re.match(rf"Generated key ({KEY_ID}) \({name}\)\n", out)
    assert match, out
    return match[1]


def package(capsys: pytest.CaptureFixture[str], folder: str, *options: str) -> Path:
    out = ok(capsys, "package", folder, *options)
    match = re.search(r"^  package: (.+) \(unsigned\)$", out, re.M)
    assert match, out
    return Path(match[1])


def signed_fast(capsys: pytest.CaptureFixture[str], key: str = "alice") -> tuple[str, Path]:
    """A trusted key and the signed package of the example plugin ``fast`` 1.0.0."""
    key_id = keygen(capsys, key)
    path = package(capsys, "fast")
    ok(capsys, "sign", str(path))
    return key_id, path


def copy_plugin(host: Path, target: str, **replace: str) -> str:
    """Copy tmp/fast to tmp/TARGET, replacing manifest text (old=new)."""
    shutil.copytree(host / "fast", host / target)
    manifest = host / target / "nyxplug.toml"
    text = manifest.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    manifest.write_text(text)
    return target


def rewrite_member(path: Path, member: str, change: Callable[[bytes], bytes]) -> None:
    """Rebuild the zip with ``member``'s bytes changed; everything else as it was."""
    with zipfile.ZipFile(path) as archive:
        items = [(info, archive.read(info)) for info in archive.infolist()]
    assert member in [info.filename for info, _ in items]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in items:
            archive.writestr(info, change(data) if info.filename == member else data)


def audit_entries(host: Path) -> list[dict[str, object]]:
    return AuditLog(host / "state" / "audit.jsonl").entries()


# -- the whole path -----------------------------------------------------------------------


def test_keygen_package_sign_verify_install_list_audit(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(capsys, "keygen", "--name", "alice")
    key_id = re.match(rf"Generated key ({KEY_ID}) \(alice\)\n", out)[1]  # type: ignore[index]
    private, public = host / "keys" / "alice.key", host / "keys" / "alice.pub"
    assert f"  private key: {private}  " in out
    assert f"  public key:  {public}  " in out
    assert "note: the private key is not encrypted" in out
    assert f"Trusted on this host for plugins matching *, expires never ({host}/state" in out
    assert out.endswith("Next:\n  nyxplug package DIR\n")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert re.fullmatch(r"nyxplug-ed25519 \S{44} alice\n", public.read_text())

    out = ok(capsys, "package", "fast")
    assert out.startswith("Packaged fast 1.0.0 (id 1): 2 files\n  package: fast-1.0.0.nyxp")
    digest = re.search(rf"^  sha256:  ({SHA256})$", out, re.M)[1]  # type: ignore[index]
    assert out.endswith("Next:\n  nyxplug sign fast-1.0.0.nyxp\n")
    assert (host / "fast-1.0.0.nyxp").is_file()

    out = ok(capsys, "sign", "fast-1.0.0.nyxp")
    assert out.startswith(f"Signed fast-1.0.0.nyxp with key {key_id} (alice, {private})\n")
    assert out.endswith("Next:\n  nyxplug verify fast-1.0.0.nyxp\n")

    out = ok(capsys, "verify", "fast-1.0.0.nyxp")
    assert re.fullmatch(
        rf"OK  fast 1\.0\.0  signed by alice \(key {key_id}\) at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
        rf"  2 files  sha256 {digest}\n",
        out,
    ), out

    out = ok(capsys, "install", "fast-1.0.0.nyxp")
    folder = host / "state" / "packages" / "fast"
    assert out.startswith(f"Installed fast 1.0.0 (id 1) in {folder}\n")
    assert f"  signed by alice (key {key_id}) at " in out
    assert "replaced" not in out
    assert out.endswith("Next:\n  nyxplug list\n")
    assert sorted(p.name for p in folder.iterdir()) == [
        "NYXPLUG-INDEX", "NYXPLUG-SIGNATURE", "fast_plugin.py", "nyxplug.toml"
    ]  # fmt: skip
    assert (folder / "fast_plugin.py").read_bytes() == (host / "fast/fast_plugin.py").read_bytes()

    out = ok(capsys, "trust", "list")
    lines = out.splitlines()
    assert lines[0] == f"Host: {host}/state (from $NYXPLUG_STATE_DIR)"
    assert lines[1] == f"Trusted keys ({host}/state/trust.json):"
    assert lines[2].split() == ["KEY", "ID", "NAME", "SCOPES", "EXPIRES"]
    assert lines[3].split() == [key_id, "alice", "*", "never"]
    assert lines[4:] == [
        "Revoked keys: none",
        "Revoked packages: none",
        "Rollback floors (highest version installed):",
        "  fast  1.0.0",
    ]

    out = ok(capsys, "audit")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"
    expected = [
        rf"trust-add  done      key {key_id}  alice, scopes \*, expires never",
        rf"verify     accepted  fast 1\.0\.0            signed by alice \(key {key_id}\)",
        rf"install    accepted  fast 1\.0\.0            signed by alice \(key {key_id}\)",
    ]
    lines = out.splitlines()
    assert len(lines) == len(expected), out
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(f"{stamp}  {pattern}", line), (line, pattern)
    entry = audit_entries(host)[-1]
    assert (entry["plugin"], entry["package_sha256"], entry["signer"]) == ("fast", digest, "alice")

    out = ok(capsys, "audit", "--last", "1")
    assert [line.split() for line in out.splitlines()] == [
        line.split() for line in ok(capsys, "audit").splitlines()[-1:]
    ]


def test_keygen_defaults_user_name_and_home_key_dir(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import getpass

    monkeypatch.delenv("NYXPLUG_KEY_DIR")
    monkeypatch.setattr(getpass, "getuser", lambda: "Jane.Doe@Example")
    out = ok(capsys, "keygen", "--no-trust")
    key_dir = host / "home" / ".nyxplug" / "keys"
    assert re.match(rf"Generated key {KEY_ID} \(jane-doe-example\)\n", out), out
    assert (key_dir / "jane-doe-example.key").is_file()
    assert f"to trust it: nyxplug trust add {key_dir}/jane-doe-example.pub" in out
    assert not (host / "state" / "trust.json").exists()
    assert audit_entries(host) == []
    # sign finds the only key in ~/.nyxplug/keys; verify refuses it: nobody trusts it yet
    ok(capsys, "package", "fast")
    assert "(jane-doe-example, " in ok(capsys, "sign", "fast-1.0.0.nyxp")
    assert "[untrusted-key]" in problem(capsys, "verify", "fast-1.0.0.nyxp")
    # never overwritten
    err = problem(capsys, "keygen", "--no-trust")
    assert "jane-doe-example.key already exists - choose another --name or --out" in err


def test_keygen_out_dir_and_state_dir_option(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(capsys, "keygen", "--name", "ci", "--out", "elsewhere", "--state-dir", "other")
    assert (host / "elsewhere" / "ci.key").is_file() and (host / "elsewhere" / "ci.pub").is_file()
    assert f"({host}/other/trust.json)" in out
    assert len(TrustStore(host / "other" / "trust.json").keys()) == 1
    assert not (host / "state").exists()
    ok(capsys, "package", "fast")
    ok(capsys, "sign", "fast-1.0.0.nyxp", "--key", "elsewhere/ci.key")
    assert "[untrusted-key]" in problem(capsys, "verify", "fast-1.0.0.nyxp")
    assert ok(capsys, "verify", "fast-1.0.0.nyxp", "--state-dir", "other").startswith("OK  fast")
    out = ok(capsys, "install", "fast-1.0.0.nyxp", "--state-dir", "other")
    assert out.endswith("Next:\n  nyxplug list --state-dir other\n")


# -- passphrases --------------------------------------------------------------------------


def test_passphrase_from_the_environment(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NYXPLUG_KEY_PASSPHRASE", "correct horse")
    out = ok(capsys, "keygen", "--name", "enc")
    assert "  encrypted with $NYXPLUG_KEY_PASSPHRASE\n" in out
    assert "not encrypted" not in out
    key = host / "keys" / "enc.key"
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key.read_bytes()
    path = str(package(capsys, "fast"))

    monkeypatch.delenv("NYXPLUG_KEY_PASSPHRASE")
    err = problem(capsys, "sign", path)
    assert err == (
        f"nyxplug sign: Cannot use {key}: it is encrypted - give the passphrase "
        "($NYXPLUG_KEY_PASSPHRASE)\n"
    )
    assert "[unsigned]" in problem(capsys, "verify", path)  # nothing was written

    monkeypatch.setenv("NYXPLUG_KEY_PASSPHRASE", "wrong")
    assert "wrong passphrase" in problem(capsys, "sign", path, "--key", "enc")

    monkeypatch.setenv("NYXPLUG_KEY_PASSPHRASE", "correct horse")
    assert ok(capsys, "sign", path).startswith(f"Signed {path} with key ")
    assert ok(capsys, "verify", path).startswith("OK  fast 1.0.0  signed by enc (key ")


def test_passphrase_prompts_on_a_terminal(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import getpass

    # Not a terminal and no $NYXPLUG_KEY_PASSPHRASE: nothing to ask on.
    err = problem(capsys, "keygen", "--name", "p", "--passphrase")
    assert "--passphrase needs a terminal" in err and "$NYXPLUG_KEY_PASSPHRASE" in err
    assert not (host / "keys" / "p.key").exists()

    monkeypatch.setattr(sys, "stdin", _Terminal())
    answers: list[str] = []
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    answers[:] = ["one", "two"]
    assert "the two passphrases differ" in problem(capsys, "keygen", "--name", "p", "--passphrase")
    answers[:] = [""]
    assert "the passphrase is empty" in problem(capsys, "keygen", "--name", "p", "--passphrase")
    assert not (host / "keys" / "p.key").exists()

    answers[:] = ["s3cret", "s3cret"]
    out = ok(capsys, "keygen", "--name", "p", "--passphrase")
    assert "  encrypted with the passphrase you typed\n" in out
    assert b"ENCRYPTED" in (host / "keys" / "p.key").read_bytes()

    path = str(package(capsys, "fast"))
    prompts.clear()
    answers[:] = ["s3cret"]
    ok(capsys, "sign", path)
    assert prompts == [f"Passphrase for {host / 'keys' / 'p.key'}: "]
    answers[:] = ["nope"]
    assert "wrong passphrase" in problem(capsys, "sign", path)
    assert answers == [] and ok(capsys, "verify", path).startswith("OK  fast")


# -- choosing the key ---------------------------------------------------------------------


def test_sign_needs_one_key_or_a_key_option(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(package(capsys, "fast"))
    err = problem(capsys, "sign", path)
    assert err == (
        f"nyxplug sign: no key in {host}/keys - create one with `nyxplug keygen`, "
        "or give --key FILE\n"
    )
    bob = keygen(capsys, "bob")
    keygen(capsys, "alice")
    err = problem(capsys, "sign", path)
    assert err == (
        f"nyxplug sign: 2 keys in {host}/keys (alice, bob) - choose one with --key NAME\n"
    )
    err = problem(capsys, "sign", path, "--key", "carol")
    assert "no key named 'carol'" in err and "(keys there: alice, bob)" in err
    assert f"with key {bob} (bob, " in ok(capsys, "sign", path, "--key", "bob")
    shutil.copy(host / "keys" / "bob.key", host / "copy.key")
    assert f"with key {bob} (copy, " in ok(capsys, "sign", path, "--key", "copy.key")
    err = problem(capsys, "sign", path, "--key", str(host / "keys" / "bob.pub"))
    assert "not a PEM private key" in err
    err = problem(capsys, "sign", "missing.nyxp", "--key", "bob")
    assert "[unreadable]" in err


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "change", "check"),
    [
        ("fast_plugin.py", lambda data: data + b"\nimport os  # planted\n", "modified-file"),
        (
            "nyxplug.toml",
            lambda data: data.replace(b'version = "1.0.0"', b'version = "1.0.1"'),
            "mix-and-match",
        ),
    ],
    ids=["module", "manifest"],
)
def test_verify_refuses_a_tampered_package(
    host: Path,
    capsys: pytest.CaptureFixture[str],
    member: str,
    change: Callable[[bytes], bytes],
    check: str,
) -> None:
    _, path = signed_fast(capsys)
    rewrite_member(path, member, change)
    err = problem(capsys, "verify", str(path))
    assert err.startswith(f"nyxplug verify: Refused {path} (plugin 'fast') [{check}]: "), err
    assert "[" + check + "]" in problem(capsys, "install", str(path))
    assert not (host / "state" / "packages" / "fast").exists()
    refused = [e for e in audit_entries(host) if e["decision"] == "refused"]
    assert [(e["event"], e["check"]) for e in refused] == [("verify", check), ("install", check)]
    last = ok(capsys, "audit", "--last", "1")
    assert re.search(rf"  install  refused  fast  \[{check}\] ", last), last


def test_verify_refuses_what_is_not_a_package(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keygen(capsys, "alice")
    (host / "junk.nyxp").write_bytes(b"not a zip")
    err = problem(capsys, "verify", "junk.nyxp")
    assert "[not-a-package]" in err and "`nyxplug package DIR`" in err
    assert audit_entries(host)[-1]["check"] == "not-a-package"
    assert "[unsigned]" in problem(capsys, "verify", str(package(capsys, "fast")))


def test_install_unsigned_only_when_signatures_are_not_required(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(package(capsys, "fast"))
    err = problem(capsys, "install", path)
    assert f"Refused {path} (plugin 'fast') [unsigned]: the package is not signed" in err
    assert not (host / "state" / "packages" / "fast").exists()

    monkeypatch.setenv("NYXPLUG_REQUIRE_SIGNATURES", "0")
    out = ok(capsys, "install", path)
    assert out.startswith(f"Installed fast 1.0.0 (id 1) in {host}/state/packages/fast\n")
    assert "  unsigned (allowed: runtime.require_signatures is off)\n" in out
    assert not (host / "state" / "packages" / "fast" / "NYXPLUG-SIGNATURE").exists()
    # verify always wants a signature
    assert "[unsigned]" in problem(capsys, "verify", path)


def test_rollback_refused_unless_allowed(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, old = signed_fast(capsys)
    copy_plugin(host, "fast-next", **{'version = "1.0.0"': 'version = "1.1.0"'})
    new = package(capsys, "fast-next", "-o", "dist/")
    assert new == Path("dist/fast-1.1.0.nyxp")
    assert package(capsys, "fast-next", "-o", "dist") == new  # an existing folder
    assert package(capsys, "fast-next", "-o", "next.nyxp") == Path("next.nyxp")
    ok(capsys, "sign", str(new))

    assert "  replaced" not in ok(capsys, "install", str(old))
    assert "  replaced 1.0.0\n" in ok(capsys, "install", str(new))
    err = problem(capsys, "install", str(old))
    assert "[rollback]: version 1.0.0 is older than 1.1.0" in err and "--allow-rollback" in err
    index = host / "state" / "packages" / "fast" / "NYXPLUG-INDEX"
    assert json.loads(index.read_bytes())["version"] == "1.1.0"

    out = ok(capsys, "install", str(old), "--allow-rollback")
    assert out.startswith("Installed fast 1.0.0 (id 1)") and "  replaced 1.1.0\n" in out
    assert json.loads(index.read_bytes())["version"] == "1.0.0"


def test_uninstall(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = signed_fast(capsys)
    ok(capsys, "install", str(path))
    folder = host / "state" / "packages" / "fast"
    out = ok(capsys, "uninstall", "fast")
    assert out == (
        f"Uninstalled fast (removed {folder})\n"
        "  versions older than 1.0.0 stay refused (the rollback floor)\n"
    )
    assert not folder.exists()
    assert audit_entries(host)[-1]["event"] == "uninstall"
    err = problem(capsys, "uninstall", "fast")
    assert err.startswith("nyxplug uninstall: No installed package named 'fast' in ")
    assert "[rollback]" not in ok(capsys, "install", str(path))  # the same version is fine


def test_revoke_key_then_verify_refused(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_id, path = signed_fast(capsys)
    ok(capsys, "verify", str(path))
    out = ok(capsys, "trust", "revoke-key", key_id.upper())
    assert out.startswith(f"Revoked key {key_id} (alice): everything it signed is refused")
    err = problem(capsys, "verify", str(path))
    assert f"[revoked-key]: signed by key {key_id}, which this host revoked" in err
    listing = ok(capsys, "trust", "list")
    assert re.search(rf"^  {key_id}  alice  \*\s+never\s+REVOKED$", listing, re.M), listing
    assert f"Revoked keys: {key_id}\n" in listing
    err = problem(capsys, "trust", "add", str(host / "keys" / "alice.pub"))
    assert f"Key {key_id} is revoked on this host" in err
    assert audit_entries(host)[-2]["event"] == "revoke-key"
    assert "revoke-key  done      key " in ok(capsys, "audit")


def test_revoke_package(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = signed_fast(capsys)
    digest = re.search(rf"sha256 ({SHA256})", ok(capsys, "verify", str(path)))[1]  # type: ignore[index]
    assert ok(capsys, "trust", "revoke-package", digest) == (
        f"Revoked package fast 1.0.0 (index sha256 {digest}): it is refused, whoever signed it\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert f"[revoked-package]: package {digest[:16]}..." in problem(capsys, "install", str(path))
    assert f"Revoked packages:\n  {digest}\n" in ok(capsys, "trust", "list")
    assert audit_entries(host)[-2] == {**audit_entries(host)[-2], "package_sha256": digest}


# -- revoke-package takes what the user holds (issue 15 item 10) --------------------------


def index_hash(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    """The package's index sha256, as ``nyxplug verify`` prints it."""
    return re.search(rf"sha256 ({SHA256})", ok(capsys, "verify", str(path)))[1]  # type: ignore[index]


def assert_revoked(capsys: pytest.CaptureFixture[str], path: Path, digest: str) -> None:
    """Installing ``path`` is refused, and ``digest`` is the only revoked package."""
    err = problem(capsys, "install", str(path))
    assert f"[revoked-package]: package {digest[:16]}... is on this host's revocation list" in err
    assert f"Revoked packages:\n  {digest}\nRollback" in ok(capsys, "trust", "list")


def test_revoke_package_by_its_file(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = signed_fast(capsys)
    digest = hashlib.sha256(read_package(path).index_bytes).hexdigest()
    assert ok(capsys, "trust", "revoke-package", str(path)) == (
        f"Revoked package fast 1.0.0 (index sha256 {digest}): it is refused, whoever signed it\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert_revoked(capsys, path, digest)
    entry = [e for e in audit_entries(host) if e["event"] == "revoke-package"][0]
    assert (entry["package_sha256"], entry["plugin"], entry["source"]) == (
        digest, "fast", str(path)
    )  # fmt: skip


def test_revoke_package_by_the_file_sha256_maps_it_to_the_index(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: ``sha256sum fast-1.0.0.nyxp`` revoked nothing and it installed."""
    _, path = signed_fast(capsys)
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256(read_package(path).index_bytes).hexdigest()
    assert file_hash != digest
    assert ok(capsys, "trust", "revoke-package", file_hash.upper()) == (
        f"Revoked package fast 1.0.0 (index sha256 {digest}): it is refused, whoever signed it\n"
        f"  {file_hash} is the SHA-256 of the file {host / path}; packages are revoked by their "
        "index sha256 (printed by `nyxplug package` and `nyxplug verify`)\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert_revoked(capsys, path, digest)


def test_revoke_package_by_the_file_sha256_of_a_file_this_host_verified(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not in the current folder, but the audit log names it: still mapped."""
    _, path = signed_fast(capsys)
    (host / "dist").mkdir()
    moved = path.rename(host / "dist" / path.name)
    digest = index_hash(capsys, moved)  # recorded in the audit log with its path
    file_hash = hashlib.sha256(moved.read_bytes()).hexdigest()
    out = ok(capsys, "trust", "revoke-package", file_hash)
    assert out.startswith(f"Revoked package fast 1.0.0 (index sha256 {digest}): ")
    assert f"  {file_hash} is the SHA-256 of the file {moved}; " in out
    assert_revoked(capsys, moved, digest)


def test_revoke_package_by_an_installed_package_s_index_hash_or_folder(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = signed_fast(capsys)
    ok(capsys, "install", str(path))
    (host / "state" / "audit.jsonl").unlink()  # known from the installed folder alone
    digest = hashlib.sha256(read_package(path).index_bytes).hexdigest()
    assert ok(capsys, "trust", "revoke-package", digest).startswith(
        f"Revoked package fast 1.0.0 (index sha256 {digest}): "
    )
    assert ok(capsys, "trust", "revoke-package", "state/packages/fast").startswith(
        f"Revoked package fast 1.0.0 (index sha256 {digest}): "
    )
    assert_revoked(capsys, path, digest)


def test_revoke_package_refuses_a_hash_it_cannot_place(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file hash without its file cannot be mapped: refused, with what was expected."""
    _, path = signed_fast(capsys)
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    (host / "elsewhere").mkdir()
    path = path.rename(host / "elsewhere" / path.name)  # never verified from there
    err = problem(capsys, "trust", "revoke-package", file_hash)
    assert err == (
        f"nyxplug trust revoke-package: {file_hash} is not the index sha256 of a package "
        "this host knows (installed, or verified or installed before - see `nyxplug audit`), "
        f"nor the SHA-256 of a .nyxp file at hand (in {host}, or one this host verified or "
        "installed) - give the package file (`nyxplug trust revoke-package PKG.nyxp`) or its "
        "index sha256 (printed by `nyxplug package` and `nyxplug verify`); to revoke an index "
        "sha256 this host has never seen (from a publisher's advisory), add --unseen\n"
    )
    assert "Revoked packages: none\n" in ok(capsys, "trust", "list")
    # With the file at hand again, the same hash is mapped and the package refused.
    path = path.rename(host / path.name)
    digest = hashlib.sha256(read_package(path).index_bytes).hexdigest()
    assert ok(capsys, "trust", "revoke-package", file_hash).startswith(
        f"Revoked package fast 1.0.0 (index sha256 {digest}): "
    )
    assert_revoked(capsys, path, digest)


def test_revoke_package_unseen_takes_an_advisory_hash_as_given(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    advisory = "ab" * 32
    assert "add --unseen" in problem(capsys, "trust", "revoke-package", advisory)
    assert ok(capsys, "trust", "revoke-package", advisory, "--unseen") == (
        f"Revoked package {advisory}: it is refused, whoever signed it\n"
        "  not seen on this host: revoked as given (--unseen)\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert f"Revoked packages:\n  {advisory}\n" in ok(capsys, "trust", "list")


@pytest.mark.parametrize("value", ["AB" * 32, "ab" * 31, "zz" * 32, ""])
def test_the_store_revokes_index_hashes_only(tmp_path: Path, value: str) -> None:
    store = TrustStore(tmp_path / "trust.json")
    with pytest.raises(
        ValueError,
        match=rf"^Expected a package's index sha256 \(64 lowercase hex digits\), got '{value}'$",
    ):
        store.revoke_package(value)
    assert store.revoked() == ([], [])


def test_revoke_package_refuses_a_file_that_is_not_a_package(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (host / "notes.txt").write_text("hello")
    err = problem(capsys, "trust", "revoke-package", "notes.txt")
    assert err == (
        "nyxplug trust revoke-package: Refused notes.txt [not-a-package]: not a .nyxp (zip) "
        "file: File is not a zip file - build one with `nyxplug package DIR`\n"
    )
    assert "Revoked packages: none\n" in ok(capsys, "trust", "list")


def test_trust_add_with_scope_refuses_other_plugins(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id = keygen(capsys, "acme", "--no-trust")
    copy_plugin(host, "acme-fast", **{'name = "fast"': 'name = "acme-fast"'})
    fast, acme = package(capsys, "fast"), package(capsys, "acme-fast")
    ok(capsys, "sign", str(fast))
    ok(capsys, "sign", str(acme))
    assert "[untrusted-key]" in problem(capsys, "verify", str(acme))

    out = ok(capsys, "trust", "add", "keys/acme.pub", "--scope", "acme-*", "--scope", "x")
    assert out == (
        f"Trusted key {key_id} (acme) for plugins matching acme-*, x, expires never\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert ok(capsys, "verify", str(acme)).startswith("OK  acme-fast 1.0.0  signed by acme")
    err = problem(capsys, "verify", str(fast))
    assert f"[out-of-scope]: key {key_id} (acme) is trusted only for plugins matching " in err
    assert "not 'fast'" in err
    entry = [e for e in audit_entries(host) if e["event"] == "trust-add"][0]
    assert (entry["event"], entry["key_id"], entry["scopes"]) == (
        "trust-add", key_id, ["acme-*", "x"]
    )  # fmt: skip

    out = ok(capsys, "trust", "add", "keys/acme.pub")
    assert out.endswith(
        "for plugins matching *, expires never (replacing the earlier entry)\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert ok(capsys, "verify", str(fast)).startswith("OK  fast")

    assert ok(capsys, "trust", "remove", key_id) == (
        f"Removed key {key_id} (acme): packages it signs are refused\n"
        f"  Host: {host}/state (from $NYXPLUG_STATE_DIR)\n"
    )
    assert "[untrusted-key]" in problem(capsys, "verify", str(fast))
    err = problem(capsys, "trust", "remove", key_id)
    assert (
        err
        == f"nyxplug trust remove: key {key_id} is not trusted here - see `nyxplug trust list`\n"
    )
    assert [e["event"] for e in audit_entries(host) if e["decision"] == "done"] == [
        "trust-add", "trust-add", "trust-remove"
    ]  # fmt: skip


def test_expired_key(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keygen(capsys, "old", "--no-trust")
    path = package(capsys, "fast")
    ok(capsys, "sign", str(path))
    out = ok(capsys, "trust", "add", "keys/old.pub", "--expires", "2020-01-31")
    assert "expires 2020-01-31T00:00:00Z" in out
    assert "warning: 2020-01-31T00:00:00Z is in the past" in out
    assert re.search(r"2020-01-31T00:00:00Z\s+EXPIRED$", ok(capsys, "trust", "list"), re.M)
    assert "[expired-key]" in problem(capsys, "verify", str(path))
    ok(capsys, "trust", "add", "keys/old.pub", "--expires", "2999-12-31T12:00:00+02:00")
    assert "2999-12-31T10:00:00Z" in ok(capsys, "trust", "list")
    assert ok(capsys, "verify", str(path)).startswith("OK  ")


# -- usage and other problems -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trust", "add", "k.pub", "--expires", "next tuesday"], "Expected an expiry date like"),
        (["keygen", "--expires", "2027-13-01"], "Expected an expiry date like"),
        (["keygen", "--name", "../evil"], "expected a key name"),
        (["trust", "add", "k.pub", "--scope", ""], "plugin-name pattern"),
        (["trust", "revoke-key", "abc"], "16 hex digits"),
        (["trust", "revoke-package", "abc"], "a package file (.nyxp), an installed package's"),
        (["audit", "--last", "0"], "expected at least 1"),
        (["trust"], "required: ACTION"),
    ],
)
def test_usage_errors(
    host: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    err = usage_error(capsys, *argv)
    assert message in err, err
    assert not (host / "state").exists() and not (host / "keys").exists()


def test_other_problems(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (host / "empty").mkdir()
    err = problem(capsys, "package", "empty")
    assert err == (
        "nyxplug package: empty has no nyxplug.toml - give a plugin folder "
        "(create one with `nyxplug new NAME`)\n"
    )
    err = problem(capsys, "keygen", "--name", "x", "--no-trust", "--scope", "a-*")
    assert "leave them out with --no-trust" in err
    err = problem(capsys, "trust", "add", "nothing.pub")
    assert err.startswith("nyxplug trust add: Cannot use nothing.pub: cannot read it")
    assert ok(capsys, "audit") == f"No audit entries yet ({host}/state/audit.jsonl)\n"
    (host / "state").mkdir()
    (host / "state" / "trust.json").write_text("{not json")
    assert "not a trust store nyxplug wrote" in problem(capsys, "trust", "list")
    (host / "state" / "audit.jsonl").write_text("{broken\n")
    assert "is not a JSON-lines audit log" in problem(capsys, "audit")
    err = problem(capsys, "verify", "x.nyxp", "--config", "missing.toml")
    assert err.startswith("nyxplug verify: Invalid configuration missing.toml: ")


def test_help_stays_cheap_and_lists_the_commands() -> None:
    code = (
        "import sys, nyxplug.cli as c; c.build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('cryptography', 'nyxplug.trust'))))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


# -- the real console entry -----------------------------------------------------------------


def test_python_m_nyxplug_in_a_subprocess(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYXPLUG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(
        HOME=str(tmp_path / "home"),
        NYXPLUG_KEY_DIR=str(tmp_path / "keys"),
        NYXPLUG_STATE_DIR=str(tmp_path / "state"),
        NYXPLUG_KEY_PASSPHRASE="from the environment",
    )
    shutil.copytree(
        EXAMPLES_DIR / "fast", tmp_path / "fast", ignore=shutil.ignore_patterns("__pycache__")
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nyxplug", *argv],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    made = run("keygen", "--name", "ci")
    assert (made.returncode, made.stderr) == (0, ""), made.stderr
    key_id = re.match(rf"Generated key ({KEY_ID}) \(ci\)\n", made.stdout)[1]  # type: ignore[index]
    assert b"ENCRYPTED" in (tmp_path / "keys" / "ci.key").read_bytes()
    for argv in (("package", "fast"), ("sign", "fast-1.0.0.nyxp")):
        done = run(*argv)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
    verified = run("verify", "fast-1.0.0.nyxp")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"OK  fast 1.0.0  signed by ci (key {key_id}) at ")
    env.pop("NYXPLUG_KEY_PASSPHRASE")
    refused = run("sign", "fast-1.0.0.nyxp")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith("nyxplug sign: Cannot use ")
    assert "it is encrypted" in refused.stderr


# -- what goes into a package (issue 15 item 21) ------------------------------------------


def members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist())


def test_package_leaves_out_caches_and_tests(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = host / "fast"
    planted = [
        ".pytest_cache/v/cache/nodeids", ".mypy_cache/3.11/x.json", ".ruff_cache/0.1/y",
        ".hypothesis/examples/z", "__pycache__/fast_plugin.cpython-311.pyc", "old.pyc",
        "tests/test_fast.py", "tests/data/sample.bin", "test_fast_plugin.py",
        "fast_test.py", "conftest.py", "sub/__pycache__/a.pyc", "sub/test_sub.py",
        "sub/helper.py", "data/notes.txt", ".coverage",
    ]  # fmt: skip
    for rel in planted:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    shipped = sorted(["nyxplug.toml", "fast_plugin.py", "sub/helper.py", "data/notes.txt"])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == (
        sorted([*planted, "nyxplug.toml", "fast_plugin.py"])
    )

    out = ok(capsys, "package", "fast")
    assert members(host / "fast-1.0.0.nyxp") == sorted(["NYXPLUG-INDEX", *shipped])
    assert "Packaged fast 1.0.0 (id " in out and ": 4 files\n" in out
    assert re.search(
        r"^  left out: \.coverage, conftest\.py, fast_test\.py, old\.pyc, test_fast_plugin\.py "
        r"and 7 more - `--include PATTERN` ships what is left out by default$",
        out,
        re.M,
    ), out

    # The choice: --include brings defaults back, --exclude leaves more out (and wins).
    out = ok(
        capsys, "package", "fast", "-o", "chosen.nyxp", "--include", "tests",
        "--include", "conftest.py", "--exclude", "data", "--exclude", "tests/data",
    )  # fmt: skip
    assert members(host / "chosen.nyxp") == sorted(
        ["NYXPLUG-INDEX", "nyxplug.toml", "fast_plugin.py", "sub/helper.py", "conftest.py",
         "tests/test_fast.py"]
    )  # fmt: skip
    # The package installs and verifies as before: nothing left out is missed.
    keygen(capsys, "alice")
    ok(capsys, "sign", "fast-1.0.0.nyxp")
    assert ok(capsys, "install", "fast-1.0.0.nyxp").startswith("Installed fast 1.0.0 ")
    installed = host / "state" / "packages" / "fast"
    assert sorted(
        p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()
    ) == sorted(["NYXPLUG-INDEX", "NYXPLUG-SIGNATURE", *shipped])


def test_package_refuses_to_leave_out_the_entry_module(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_plugin(host, "probe", **{'name = "fast"': 'name = "probe"'})
    manifest = host / "probe" / "nyxplug.toml"
    entry = re.search(r'^entry = "(\w+):', manifest.read_text(), re.M)[1]  # type: ignore[index]
    (host / "probe" / f"{entry}.py").rename(host / "probe" / "test_entry.py")
    manifest.write_text(manifest.read_text().replace(f'"{entry}:', '"test_entry:'))
    err = problem(capsys, "package", "probe")
    assert err == (
        "nyxplug package: Refused probe (plugin 'probe') [excluded-file]: the entry module "
        "'test_entry' (test_entry.py) would be left out of the package - ship it with "
        "`--include test_entry.py` (or rename it: test and cache files stay out by default)\n"
    )
    assert "Packaged probe" in ok(capsys, "package", "probe", "--include", "test_entry.py")
