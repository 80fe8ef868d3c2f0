"""A batch's results on the worker: plain JSON objects from the start.

A pydantic result model per item and a ``model_dump`` of the 100-item whole cost more
than the item's encryption (≈ 35 µs of ≈ 110 µs per item, docs/performance.md). The
dicts have exactly the shape ``schemas.batch.BatchResult`` documents (tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ErrorCode

__all__ = ["BatchOutcome", "JsonObject", "data_item", "error_item"]

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """A batch's results in item order (plain JSON objects), with counts."""

    results: list[JsonObject]
    failed: int
    # The error code of each failed item, in item order ("ERR_KEM_004", …): what the
    # request's metrics count item failures by (``RequestRecord.item_errors``). Empty
    # where a caller did not collect them (a job chunk refused as a whole).
    error_codes: Sequence[str] = ()

    @property
    def total(self) -> int:
        """How many items."""
        return len(self.results)

    @property
    def succeeded(self) -> int:
        """Items with ``data``."""
        return len(self.results) - self.failed

    def json_data(self) -> JsonObject:
        """The ``BatchResult`` object of the reply."""
        return {"results": self.results, "total": self.total, "succeeded": self.succeeded,
                "failed": self.failed}


def error_item(code: ErrorCode, message: str | None, reference: str | None) -> JsonObject:
    """One item's error object (``reference`` first when there is one)."""
    error = {"code": code.value, "error_code": code.value,
             "message": message or code.default_message}
    return {"error": error} if reference is None else {"reference": reference, "error": error}


def data_item(data: JsonObject, reference: str | None) -> JsonObject:
    """One item's result object."""
    return {"data": data} if reference is None else {"reference": reference, "data": data}
