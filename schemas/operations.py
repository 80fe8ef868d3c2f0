"""One table of operations: subject, REST route, request and result models.

The worker uses it to subscribe, the bridge to route, the docs to list. Adding an
operation means adding one row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from schemas import batch, jobs, kem, keys, rotation_policy, signature
from schemas.errors import ErrorCode
from schemas.subjects import Subject

__all__ = [
    "JOB_OPERATIONS",
    "OPERATIONS",
    "ROTATION_POLICY_OPERATIONS",
    "Operation",
    "operation_for",
]


@dataclass(frozen=True, slots=True)
class Operation:
    """A contract operation, the same over NATS and HTTP."""

    subject: Subject
    method: str
    path: str
    request: type[BaseModel]
    result: type[BaseModel]
    summary: str
    not_found_code: ErrorCode
    success_status: int = 200
    # Rate-limit tokens of one request, from its decoded JSON body (default: one).
    cost: Callable[[Mapping[str, Any]], int] | None = None
    # It changes stored state (a key version, a policy): refused before it acts while
    # the audit trail is failing, so that a 503 never hides a change that was made.
    changes_state: bool = False


_KEM = ErrorCode.KEM_KEY_NOT_FOUND
_KMS = ErrorCode.KMS_KEY_NOT_FOUND
_SIG = ErrorCode.NOT_FOUND

OPERATIONS: tuple[Operation, ...] = (
    Operation(Subject.KEM_ENCRYPT, "POST", "/api/v1/kem/encrypt", kem.EncryptRequest,
              kem.EncryptResult, "Encrypt with a KEM key (HPKE or deterministic)", _KEM),
    Operation(Subject.KEM_DECRYPT, "POST", "/api/v1/kem/decrypt", kem.DecryptRequest,
              kem.DecryptResult, "Decrypt a ciphertext from kem/encrypt", _KEM),
    Operation(Subject.KEM_ENCAPSULATE, "POST", "/api/v1/kem/encapsulate",
              kem.EncapsulateRequest, kem.EncapsulateResult,
              "Encapsulate a fresh shared secret", _KEM),
    Operation(Subject.KEM_DECAPSULATE, "POST", "/api/v1/kem/decapsulate",
              kem.DecapsulateRequest, kem.DecapsulateResult,
              "Recover the shared secret of a KEM ciphertext", _KEM),
    Operation(Subject.KEM_KEY_WRAP, "POST", "/api/v1/kem/key/wrap", kem.WrapKeyRequest,
              kem.WrapKeyResult, "Wrap a symmetric key", _KEM),
    Operation(Subject.KEM_KEY_UNWRAP, "POST", "/api/v1/kem/key/unwrap", kem.UnwrapKeyRequest,
              kem.UnwrapKeyResult, "Unwrap a symmetric key", _KEM),
    Operation(Subject.SIGNATURE_SIGN, "POST", "/api/v1/signature/sign", signature.SignRequest,
              signature.SignResult, "Sign a message", _SIG),
    Operation(Subject.SIGNATURE_VERIFY, "POST", "/api/v1/signature/verify",
              signature.VerifyRequest, signature.VerifyResult, "Verify a signature", _SIG),
    Operation(Subject.SIGNATURE_SIGN_HASH, "POST", "/api/v1/signature/sign-hash",
              signature.SignHashRequest, signature.SignHashResult,
              "Sign a pre-computed digest (HashML-DSA)", _SIG),
    Operation(Subject.SIGNATURE_VERIFY_HASH, "POST", "/api/v1/signature/verify-hash",
              signature.VerifyHashRequest, signature.VerifyHashResult,
              "Verify a signature over a pre-computed digest", _SIG),
    Operation(Subject.KEYS_GENERATE, "POST", "/api/v1/kms/keys/generate",
              keys.GenerateKeyRequest, keys.KeyInfo, "Generate the first key version", _KMS,
              success_status=201, changes_state=True),
    Operation(Subject.KEYS_LIST, "GET", "/api/v1/kms/keys", keys.ListKeysRequest,
              keys.KeyListResult, "List key versions", _KMS),
    Operation(Subject.KEYS_ACTIVE, "GET", "/api/v1/kms/keys/active", keys.ActiveKeyRequest,
              keys.KeyInfo, "The active key version of an algorithm", _KMS),
    Operation(Subject.KEYS_GET, "GET", "/api/v1/kms/keys/{algorithm}/{version}",
              keys.GetKeyRequest, keys.KeyInfo, "One key version", _KMS),
    Operation(Subject.KEYS_ROTATE, "POST", "/api/v1/kms/keys/rotate", keys.RotateKeyRequest,
              keys.RotateResult, "New active version; the previous one is retired", _KMS,
              changes_state=True),
    Operation(Subject.KEYS_RETIRE, "POST", "/api/v1/kms/keys/retire", keys.RetireKeyRequest,
              keys.KeyInfo, "Retire a version (decrypt and verify only)", _KMS,
              changes_state=True),
    Operation(Subject.KEYS_ARCHIVE, "POST", "/api/v1/kms/keys/archive",
              keys.ArchiveKeyRequest, keys.KeyInfo, "Archive a retired version", _KMS,
              changes_state=True),
    Operation(Subject.KEM_ENCRYPT_BATCH, "POST", "/api/v1/kem/encrypt/batch",
              batch.EncryptBatchRequest, batch.BatchResult,
              "Encrypt many plaintexts; one result or error per item", _KEM,
              cost=batch.batch_cost),
    Operation(Subject.KEM_DECRYPT_BATCH, "POST", "/api/v1/kem/decrypt/batch",
              batch.DecryptBatchRequest, batch.BatchResult,
              "Decrypt many ciphertexts; one result or error per item", _KEM,
              cost=batch.batch_cost),
    Operation(Subject.SIGNATURE_SIGN_BATCH, "POST", "/api/v1/signature/sign/batch",
              batch.SignBatchRequest, batch.BatchResult,
              "Sign many messages; one result or error per item", _SIG, cost=batch.batch_cost),
    Operation(Subject.SIGNATURE_VERIFY_BATCH, "POST", "/api/v1/signature/verify/batch",
              batch.VerifyBatchRequest, batch.BatchResult,
              "Verify many signatures; one result or error per item", _SIG,
              cost=batch.batch_cost),
)

# Jobs are NATS only (no HTTP route): their results are read chunk by chunk.
_JOB = ErrorCode.NOT_FOUND
JOB_OPERATIONS: tuple[Operation, ...] = (
    Operation(Subject.JOBS_SUBMIT, "POST", "", jobs.JobSubmitRequest, jobs.JobSubmitted,
              "Queue one chunk of a durable bulk job", _JOB),
    Operation(Subject.JOBS_STATUS, "POST", "", jobs.JobStatusRequest, jobs.JobStatus,
              "Progress of a bulk job", _JOB),
    Operation(Subject.JOBS_RESULTS, "POST", "", jobs.JobResultsRequest,
              jobs.JobChunkResults, "The results of one finished chunk of a job", _JOB),
    Operation(Subject.JOBS_DELETE, "POST", "", jobs.JobDeleteRequest, jobs.JobDeleted,
              "Delete a job: its queued chunks, its results and its record", _JOB,
              changes_state=True),
)

# Rotation policies are NATS only too (tenants' own automation; operators use the CLI).
_POLICY = ErrorCode.NOT_FOUND
ROTATION_POLICY_OPERATIONS: tuple[Operation, ...] = (
    Operation(Subject.KEYS_ROTATION_POLICY_SET, "POST", "",
              rotation_policy.SetRotationPolicyRequest, rotation_policy.RotationPolicyInfo,
              "Set (or clear, with a null period) the scheduled rotation of an algorithm",
              _POLICY, changes_state=True),
    Operation(Subject.KEYS_ROTATION_POLICY_GET, "POST", "",
              rotation_policy.GetRotationPolicyRequest, rotation_policy.RotationPolicyInfo,
              "The scheduled rotation of an algorithm", _POLICY),
)

_BY_SUBJECT = {
    operation.subject: operation
    for operation in OPERATIONS + JOB_OPERATIONS + ROTATION_POLICY_OPERATIONS
}


def operation_for(subject: Subject) -> Operation:
    """The operation served on a subject."""
    return _BY_SUBJECT[subject]
