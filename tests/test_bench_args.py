"""``python -m bench``'s options: what a quick run and the job size change."""

from __future__ import annotations

from bench.__main__ import parse_args


def test_a_full_run_has_jobs_of_a_hundred_thousand_items() -> None:
    config = parse_args([])
    assert (config.duration, config.job_items) == (3.0, 100_000)


def test_a_quick_run_has_short_cells_and_smaller_jobs() -> None:
    config = parse_args(["--quick"])
    assert (config.duration, config.warmup, config.job_items) == (0.6, 0.2, 20_000)


def test_the_job_size_can_be_set_and_wins_over_quick() -> None:
    assert parse_args(["--quick", "--job-items", "5000"]).job_items == 5000
    assert parse_args(["--job-items", "0"]).job_items == 1
