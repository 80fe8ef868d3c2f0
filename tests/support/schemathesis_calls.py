"""One schemathesis case sent to a live bridge and checked against the document."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from api_bridge.app import create_app
from worker.config import Settings

__all__ = ["DOCUMENT", "call_and_check", "examples"]

# The document the live bridge serves (test_openapi checks they are the same). Built
# at import: schemathesis' lazy from_fixture() does not work with pytest 9 (it reads
# the removed Function._nodeid).
DOCUMENT = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def examples(count: int) -> settings:
    """Hypothesis settings for ``count`` cases per operation, the same on every run."""
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=list(HealthCheck), derandomize=True)


def call_and_check(case: schemathesis.Case, base_url: str,  # type: ignore[type-arg]
                   api_key: str) -> Any:
    """Send ``case`` with ``api_key`` in place of a generated key and run every check
    but one; a 5xx fails too. Returns the response."""
    response = case.call_and_validate(
        base_url=base_url,
        headers=_key_in_place_of_generated(case, api_key),
        # The request models have cross-field rules JSON Schema does not carry (salt
        # only in deterministic mode, wrapped key sizes, digest length per hash
        # algorithm), so a schema-valid body may rightly get a documented 400.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
    assert response.status_code < 500, (case.method, case.path, response.status_code,
                                        response.text)
    return response


def _key_in_place_of_generated(case: schemathesis.Case,  # type: ignore[type-arg]
                               api_key: str) -> dict[str, str]:
    """A negative case may leave the header out on purpose (the key is required); it
    stays out, or the case would be a valid request and a 200 a false
    "schema-violating request accepted"."""
    generated = {name.lower() for name in (case.headers or {})}
    return {"X-API-Key": api_key} if "x-api-key" in generated else {}
