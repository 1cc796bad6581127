"""``nyxplug bench`` runs the benchmarks of its own checkout, never the working directory's."""

from __future__ import annotations

from pathlib import Path

import pytest

import nyxplug.cli
from nyxplug.cli import main

PLANTED = """\
from pathlib import Path

Path(__file__).with_name("ran").write_text("planted code ran")


def main(argv=None):
    return 99
"""


def plant(folder: Path) -> Path:
    """A ``benchmarks/compare.py`` that leaves a ``ran`` file behind if anything imports it."""
    (folder / "benchmarks").mkdir()
    (folder / "benchmarks" / "__init__.py").write_text("")
    (folder / "benchmarks" / "compare.py").write_text(PLANTED)
    return folder / "benchmarks" / "ran"


def test_a_benchmarks_folder_in_the_working_directory_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    ran = plant(tmp_path)
    monkeypatch.chdir(tmp_path)
    checkout = nyxplug.cli._source_checkout()
    code = main(["bench", "--help"])
    out, err = capfd.readouterr()
    assert not ran.exists()
    if checkout is None:  # installed from a wheel: the command says what it needs
        assert code == 2
        assert "nyxplug bench needs a source checkout" in err
    else:  # installed from a checkout (make install): that checkout's compare.py answers
        assert checkout != tmp_path
        assert code == 0, err
        assert out.startswith("usage: nyxplug bench"), out


def test_outside_a_checkout_it_says_how_to_run_the_benchmarks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # nyxplug installed into site-packages, next to someone else's benchmarks package.
    site = tmp_path / "site-packages"
    (site / "nyxplug" / "cli").mkdir(parents=True)
    ran = plant(site)
    monkeypatch.setattr(nyxplug.cli, "__file__", str(site / "nyxplug" / "cli" / "__init__.py"))
    monkeypatch.chdir(site)
    assert nyxplug.cli._source_checkout() is None
    assert main(["bench"]) == 2
    assert not ran.exists()
    assert capfd.readouterr().err == (
        "nyxplug bench needs a source checkout: this nyxplug is installed without its "
        "benchmarks/ - in a checkout, run `make install` and then "
        "`.venv/bin/python -m benchmarks.compare`\n"
    )


def test_a_foreign_project_next_to_the_package_is_not_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nyxplug" / "cli").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    plant(tmp_path)
    monkeypatch.setattr(nyxplug.cli, "__file__", str(tmp_path / "nyxplug" / "cli" / "__init__.py"))
    assert nyxplug.cli._source_checkout() is None
