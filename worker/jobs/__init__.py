"""Durable bulk jobs on JetStream: streams, the submit/status/results service, the chunk runner."""

from worker.jobs.runner import JobRunner
from worker.jobs.service import JobService
from worker.jobs.streams import JobStreams

__all__ = ["JobRunner", "JobService", "JobStreams"]
