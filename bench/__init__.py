"""pqkms benchmarks: figures side by side with the physical floor (issue 7).

``python -m bench`` starts its own stack (nats-server, workers, bridge), measures the
crypto floor, a bare nats-py responder, pqkms over NATS and over HTTP, prints one table
and writes it as JSON under ``bench/results/``. Figures are printed, never asserted.
"""

__all__: list[str] = []
