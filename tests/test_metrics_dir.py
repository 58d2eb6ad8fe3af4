"""`upak serve`'s PROMETHEUS_MULTIPROC_DIR: fresh for several workers, emptied when named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from upak.cli import MULTIPROC_ENV, metrics_dir


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch: pytest.MonkeyPatch):
    # Set, then removed: monkeypatch puts the variable back as it was, whatever a test does.
    monkeypatch.setenv(MULTIPROC_ENV, "placeholder")
    monkeypatch.delenv(MULTIPROC_ENV)


def test_several_workers_get_a_fresh_directory_removed_at_exit():
    with metrics_dir(2):
        path = Path(os.environ[MULTIPROC_ENV])
        assert path.is_dir() and list(path.iterdir()) == []
    assert not path.exists() and MULTIPROC_ENV not in os.environ


def test_one_worker_keeps_its_metrics_in_memory():
    with metrics_dir(1):
        assert MULTIPROC_ENV not in os.environ


def test_a_named_directory_is_emptied_of_a_previous_run(tmp_path: Path, monkeypatch):
    (tmp_path / "counter_123.db").write_bytes(b"old counts")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with metrics_dir(1):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert tmp_path.is_dir()  # the operator's directory stays


def test_an_unusable_directory_is_one_line(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "file" / "sub"))
    with pytest.raises(typer.Exit) as exited, metrics_dir(2):
        pass
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and MULTIPROC_ENV in err
