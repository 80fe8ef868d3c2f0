"""Turn a pydantic ValidationError into one clear, safe message that names the field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["describe_validation_error", "parse_request"]

ModelT = TypeVar("ModelT", bound=BaseModel)

_INT_TYPES = {"int_type", "int_parsing", "int_from_float"}
# A bound an integer broke, by pydantic's error type: (the context key, how it reads).
_INT_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _field_name(location: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in location]
    return ".".join(parts) if parts else "body"


def _describe_one(error: Any) -> str:
    field = _field_name(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"{field} is not a recognised field"
    context = error.get("ctx") or {}
    if kind in _INT_TYPES:
        return f"{field} must be an integer"
    if kind in _INT_BOUNDS:
        name, reads = _INT_BOUNDS[kind]
        return f"{field} must be an integer {reads} {context.get(name)}"
    if kind == "string_pattern_mismatch":
        return f"{field} must match {context.get('pattern')}"
    if kind == "string_too_long":
        return f"{field} must be at most {context.get('max_length')} characters"
    if kind == "string_too_short":
        return f"{field} must be at least {context.get('min_length')} characters"
    if kind in ("bool_type", "bool_parsing"):
        return f"{field} must be a boolean"
    if kind in ("string_type", "enum", "literal_error"):
        expected = context.get("expected")
        return f"{field} must be one of {expected}" if expected else f"{field} must be a string"
    if kind == "model_type" or kind == "dict_type":
        return f"{field} must be a JSON object"
    if kind == "list_type":
        return f"{field} must be a list"
    message = str(error.get("msg", "is invalid"))
    if not error.get("loc"):
        # Whole-model checks (salt vs mode, key sizes) already name their field.
        return message
    # Custom field errors (base64, algorithm) carry a message meant for users.
    return f"{field} {message}"


def describe_validation_error(exc: ValidationError) -> str:
    """``Validation failed: key_version is required`` (first error; others are summed)."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "Validation failed"
    first = _describe_one(errors[0])
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"Validation failed: {first}{extra}"


def parse_request(model: type[ModelT], body: Any) -> ModelT:
    """Validate a decoded JSON body; raises pydantic's ValidationError."""
    return model.model_validate(body)
