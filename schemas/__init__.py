"""The pqkms contract: models, envelope, error codes, subjects, algorithm names.

Shared by the worker, the HTTP bridge and the Python client; imports nothing from them.
"""

from schemas.algorithms import (
    KEM_ALGORITHMS,
    SIGNATURE_ALGORITHMS,
    Algorithm,
    EncryptMode,
    HashAlgorithm,
    KeyStatus,
    Plan,
)
from schemas.envelope import error_envelope, new_request_id, success_envelope, utc_timestamp
from schemas.errors import ErrorCode, http_status_for
from schemas.operations import OPERATIONS, Operation, operation_for
from schemas.subjects import (
    HEADER_API_KEY,
    HEADER_INPUT_ERROR,
    HEADER_REQUEST_ID,
    HEADER_RETRY_AFTER,
    QUEUE_GROUP,
    Subject,
)
from schemas.validation import describe_validation_error

__all__ = [
    "Algorithm",
    "EncryptMode",
    "ErrorCode",
    "HEADER_API_KEY",
    "HEADER_INPUT_ERROR",
    "HEADER_REQUEST_ID",
    "HEADER_RETRY_AFTER",
    "HashAlgorithm",
    "KEM_ALGORITHMS",
    "KeyStatus",
    "OPERATIONS",
    "Operation",
    "Plan",
    "QUEUE_GROUP",
    "SIGNATURE_ALGORITHMS",
    "Subject",
    "describe_validation_error",
    "error_envelope",
    "http_status_for",
    "new_request_id",
    "operation_for",
    "success_envelope",
    "utc_timestamp",
]
