"""``pqkms audit verify --since``: a bad time is one line and exit 1; a good one says
what it left out."""

from __future__ import annotations

from pathlib import Path

from tests.cli.processes import run_pqkms


def test_since_is_checked_and_reported(tmp_path: Path) -> None:
    options = ("--data-dir", str(tmp_path / "data"), "--no-stream")
    assert run_pqkms("db", "init", options[0], options[1]).returncode == 0

    bad = run_pqkms("audit", "verify", *options, "--since", "yesterday")
    assert bad.returncode == 1
    assert "not an ISO 8601 time: 'yesterday'" in bad.stderr
    assert "Traceback" not in bad.stderr

    future = run_pqkms("audit", "verify", *options, "--since", "2999-01-01")
    assert future.returncode == 1
    assert "is in the future" in future.stderr

    good = run_pqkms("audit", "verify", *options, "--since", "2020-01-01T01:00:00+01:00")
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert lines[-2].startswith("skipped (before --since 2020-01-01T00:00:00.000000Z): ")
    assert lines[-1].startswith("audit log intact: ")
    assert lines[-1].endswith("; judged from 2020-01-01T00:00:00.000000Z on")
