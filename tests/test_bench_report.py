"""The printed benchmark report (bench/report.py): what a reader sees first."""

from __future__ import annotations

from bench.report import Report


def test_the_report_names_the_host_it_ran_on_first() -> None:
    machine = {"cpu_model": "Intel(R) Xeon(R) Processor", "usable_cpus": 2, "nproc": 4,
               "python": "3.11.7"}
    report = Report(config={"in_flight": 200}, machine=machine)

    first = report.table().splitlines()[0]

    assert first == "host: Intel(R) Xeon(R) Processor, 2 usable CPUs, Python 3.11.7"


def test_a_report_without_a_cpu_model_starts_with_the_table() -> None:
    report = Report(config={"in_flight": 200}, machine={"usable_cpus": 2})

    assert report.table().splitlines()[0].startswith("layer")
