"""Plain async services (key lifecycle, KEM, signatures) that know nothing about NATS."""
