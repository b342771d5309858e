#!/usr/bin/env python3
"""Check that the items in DynamoDB are documents Flagsmith's own readers accept.

Runs against the tables our writer filled (normally DynamoDB Local in CI):

1. Every item of the environments, environments_v2, environment API key and (with
   ``--identities-table``) identities tables is
   validated, as stored (with our extra ``_replication_*`` attributes), by Flagsmith's
   schema package, ``flagsmith_schemas.dynamodb`` (pydantic ``TypeAdapter`` over its
   TypedDicts). Compressed items (``compressed: true``) are decompressed and validated
   both as the compressed type and as the plain ``Environment``/``EnvironmentV2Meta``.
2. Strict checks that the lax pydantic schema misses, driven by the same TypedDicts:
   integers are whole numbers (never strings), bools are bools, datetimes are ISO
   strings in UTC ``+00:00``, UUIDs are version 4, no unknown keys; plus the hazards
   that pass the schema but break the SDK or the engine (a condition without
   ``value``, ``feature_segment`` without ``priority``, a feature state with neither
   ``django_id`` nor ``featurestate_uuid``, a null ``IN``/``PERCENTAGE_SPLIT`` value,
   a ``REGEX`` that does not compile, duplicate feature names or segment ids, ...).
   Compressed fields must be gzip (mtime 0) of compact JSON with sorted keys.
3. Every environment document is mapped with the Python SDK's mapper and evaluated
   with the flag engine, for the environment and for one identity.
4. With ``--expect FILE``, the real Python SDK runs in local-evaluation mode against a
   small HTTP server that serves ``GET /api/v1/environment-document/`` from the
   tables, and every expected flag is compared. A request to ``/api/v1/flags/`` or
   ``/api/v1/identities/`` means the SDK rejected the document and fell back to remote
   evaluation: that is a failure.

The expectations file::

    {"cases": [{"server_key": "ser.xxx", "identifier": "user-1" or null,
                "traits": {"plan": "premium"},
                "flags": {"banner": {"enabled": true, "value": "x"},
                          "checkout": {"enabled": true, "value_in": ["a", "b"]}}}]}

The last line printed is ``compat: N passed, M failed``. Exit status: 0 when all
passed, 1 when anything failed, 2 on a usage, setup or connection error.
Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import math
import os
import re
import sys
import threading
import types
import typing
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import boto3
    import botocore.exceptions
    import typing_extensions as te
    from boto3.dynamodb.conditions import Key
    from flag_engine.engine import get_evaluation_result
    from flagsmith import Flagsmith
    from flagsmith.mappers import map_environment_document_to_context
    from flagsmith_schemas import dynamodb as schema
    from flagsmith_schemas import pydantic_types
    from flagsmith_schemas.types import JsonGzipped
    from pydantic import TypeAdapter, ValidationError
except ImportError as import_error:  # pragma: no cover - setup problem
    sys.stderr.write(
        f"check_documents.py: missing Python package ({import_error}).\n"
        'Create the venv with: PY="$(infra/local/python.sh)" and run this script with "$PY".\n'
    )
    sys.exit(2)

DOCUMENT_PATH = "/api/v1/environment-document/"
FALLBACK_PATHS = ("/api/v1/flags/", "/api/v1/identities/")
REPLICATION_PREFIX = "_replication_"
OVERRIDE_PREFIX = "identity_override:"
META_KEY = "_META"
SMOKE_IDENTIFIER = "compat-check-identity"

# Keys of the v1 document and the v2 _META item that are not document content.
TABLE_KEY_FIELDS = {"api_key", "environment_id", "environment_api_key", "document_key", "compressed"}


class SetupError(Exception):
    """A usage, setup or connection problem: exit status 2."""


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """Collects one result per checked subject; a result with reasons is a failure."""

    results: list[tuple[str, list[str]]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, subject: str, reasons: list[str]) -> None:
        self.results.append((subject, reasons))

    @property
    def failed(self) -> int:
        return sum(1 for _, reasons in self.results if reasons)

    @property
    def passed(self) -> int:
        return len(self.results) - self.failed

    def print(self) -> None:
        print("Items checked:")
        for label, count in sorted(self.counts.items()):
            print(f"  {label}: {count}")
        for note in self.notes:
            print(f"note: {note}")
        failures = [(subject, reasons) for subject, reasons in self.results if reasons]
        if failures:
            print(f"\nFailures ({len(failures)}):")
        for subject, reasons in failures:
            print(f"FAIL {subject}")
            for reason in reasons:
                print(f"  - {reason}")
        print(f"\ncompat: {self.passed} passed, {self.failed} failed")


# --------------------------------------------------------------------------- values


def is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value()


def is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, Decimal) and value.is_finite()


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {value}"
    if isinstance(value, (int, float, Decimal)):
        return f"number {value}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {text!r}"
    if isinstance(value, (set, frozenset)):
        return "a DynamoDB set (SS/NS/BS)"
    return type(value).__name__


def to_json_value(value: object) -> object:
    """DynamoDB values to plain JSON values: Decimal to int/float, sets to lists."""
    if isinstance(value, Decimal):
        return int(value) if is_int(value) else float(value)
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(v) for v in value]
    return value


def binary_bytes(value: object) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    inner = getattr(value, "value", None)  # boto3.dynamodb.types.Binary
    return bytes(inner) if isinstance(inner, (bytes, bytearray)) else None


def gunzip_json(raw: bytes) -> tuple[object, str]:
    text = gzip.decompress(raw).decode("utf-8")
    return json.loads(text), text


def is_compact_sorted_json(text: str, value: object) -> bool:
    return any(
        text == json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=ascii_only)
        for ascii_only in (True, False)
    )


def datetime_reason(value: object, path: str) -> str | None:
    if not isinstance(value, str):
        return f"{path}: {describe(value)} is not an ISO 8601 datetime string"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return f"{path}: {value!r} is not an ISO 8601 datetime"
    if parsed.utcoffset() != timedelta(0) or not value.endswith("+00:00"):
        return f"{path}: {value!r} must be UTC written as '+00:00' (like Core's isoformat())"
    return None


def uuid4_reason(value: object, path: str) -> str | None:
    try:
        parsed = uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value:
        return f"{path}: {describe(value)} is not a canonical UUID string"
    if parsed.version != 4:
        return f"{path}: UUID {value} is version {parsed.version}; Flagsmith's engine models require version 4"
    return None


# --------------------------------------------------------------------------- strict type walk


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@functools.cache
def typed_dict_hints(typed_dict: type) -> dict[str, object]:
    return te.get_type_hints(typed_dict, include_extras=True)


def is_not_required(hint: object) -> bool:
    return te.get_origin(hint) in (te.NotRequired, typing.NotRequired)


def hint_name(hint: object) -> str:
    origin, args = te.get_origin(hint), te.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is typing.Annotated:
        meta = args[1:]
        for validator, name in (
            (pydantic_types.ValidateDecimalAsInt, "integer"),
            (pydantic_types.ValidateDecimalAsFloat, "number"),
            (pydantic_types.ValidateStrAsISODateTime, "datetime"),
            (pydantic_types.ValidateStrAsUUID, "UUID"),
        ):
            if validator in meta:
                return name
        return hint_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(hint_name(arg) for arg in args)
    if origin in (typing.Literal, te.Literal):
        return " | ".join(json.dumps(arg) for arg in args)
    if te.is_typeddict(hint):
        return f"object ({hint.__name__})"
    return {bool: "bool", str: "string"}.get(hint, str(hint))


def strict_reasons(value: object, hint: object, path: str) -> list[str]:
    """Check `value` against a flagsmith_schemas type without pydantic's lax coercion."""
    origin, args = te.get_origin(hint), te.get_args(hint)
    if is_not_required(hint):
        return strict_reasons(value, args[0], path)
    if origin is typing.Annotated:
        return annotated_reasons(value, args[0], args[1:], path)
    if hint is typing.Any:
        return []
    if origin is JsonGzipped:
        return gzipped_reasons(value, args[0], path)
    if te.is_typeddict(hint):
        return typed_dict_reasons(value, hint, path)
    if origin in (typing.Union, types.UnionType):
        return union_reasons(value, args, path)
    if origin in (typing.Literal, te.Literal):
        if any(type(value) is type(arg) and value == arg for arg in args):
            return []
        return [f"{path}: {describe(value)} is not {hint_name(hint)}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {describe(value)}"]
        return [r for i, item in enumerate(value) for r in strict_reasons(item, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {describe(value)}"]
        return [r for k, item in value.items() for r in strict_reasons(item, args[1], child(path, k))]
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null, got {describe(value)}"]
    if hint in (bool, str):
        return [] if type(value) is hint else [f"{path}: {describe(value)} is not a {hint_name(hint)}"]
    raise TypeError(f"check_documents.py does not know the schema type {hint!r} at {path}")


def annotated_reasons(value: object, base: object, meta: tuple, path: str) -> list[str]:
    if pydantic_types.ValidateDecimalAsInt in meta:
        return [] if is_int(value) else [f"{path}: {describe(value)} is not a whole number"]
    if pydantic_types.ValidateDecimalAsFloat in meta:
        return [] if is_number(value) else [f"{path}: {describe(value)} is not a number"]
    if pydantic_types.ValidateStrAsISODateTime in meta:
        reason = datetime_reason(value, path)
        return [reason] if reason else []
    if pydantic_types.ValidateStrAsUUID in meta:
        reason = uuid4_reason(value, path)
        return [reason] if reason else []
    return strict_reasons(value, base, path)


def union_reasons(value: object, options: tuple, path: str) -> list[str]:
    if value is None and type(None) in options:
        return []
    non_null = [option for option in options if option is not type(None)]
    if len(non_null) == 1:
        return strict_reasons(value, non_null[0], path)
    if any(not strict_reasons(value, option, path) for option in non_null):
        return []
    return [f"{path}: {describe(value)} is not {' | '.join(hint_name(o) for o in options)}"]


def typed_dict_reasons(value: object, typed_dict: type, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path or 'item'}: expected an object ({typed_dict.__name__}), got {describe(value)}"]
    hints = typed_dict_hints(typed_dict)
    reasons = []
    for key, hint in hints.items():
        if key in value:
            reasons += strict_reasons(value[key], hint, child(path, key))
        elif not is_not_required(hint):
            reasons.append(f"{path or 'item'}: missing required key '{key}'")
    for key in sorted(value.keys() - hints.keys()):
        reasons.append(f"{child(path, key)}: unknown key (not in {typed_dict.__name__}; no Flagsmith reader reads it)")
    return reasons


def gzipped_reasons(value: object, inner: object, path: str) -> list[str]:
    raw = binary_bytes(value)
    if raw is None:
        return [f"{path}: expected Binary (gzip of JSON) because compressed is true, got {describe(value)}"]
    try:
        decoded, text = gunzip_json(raw)
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as error:
        return [f"{path}: not gzip-compressed JSON ({error})"]
    reasons = []
    if raw[4:8] != b"\0\0\0\0":
        reasons.append(f"{path}: gzip header mtime is not 0 (Flagsmith's json_gzip writes 0)")
    if not is_compact_sorted_json(text, decoded):
        reasons.append(f"{path}: compressed JSON is not compact with sorted keys")
    return reasons + strict_reasons(decoded, inner, f"{path}<gunzip>")


# --------------------------------------------------------------------------- schema (pydantic)


@functools.cache
def adapter(typed_dict: type) -> TypeAdapter:
    return TypeAdapter(typed_dict)


def schema_reasons(document: dict, typed_dict: type, label: str, report: Report) -> list[str]:
    """Validate with Flagsmith's TypedDict via pydantic, extra attributes included."""
    try:
        adapter(typed_dict).validate_python(document)
        return []
    except ValidationError as error:
        problems = error.errors()
    if any(problem["type"] == "extra_forbidden" for problem in problems):
        report.notes.append(f"IMPORTANT: {typed_dict.__name__} rejects extra attributes (seen on {label})")
        stripped = {k: v for k, v in document.items() if not k.startswith(REPLICATION_PREFIX)}
        return ["schema rejects the extra _replication_* attributes"] + schema_reasons(
            stripped, typed_dict, label, report
        )
    return [
        f"schema {typed_dict.__name__}: {'.'.join(str(p) for p in problem['loc']) or '<item>'}: "
        f"{problem['msg']} (got {describe(problem.get('input'))})"
        for problem in problems
    ]


# --------------------------------------------------------------------------- semantic checks


def feature_state_reasons(state: object, path: str) -> list[str]:
    if not isinstance(state, dict):
        return []
    reasons = []
    if not (state.get("django_id") or state.get("featurestate_uuid")):
        reasons.append(f"{path}: neither django_id nor featurestate_uuid is set (the SDK mapper needs one)")
    segment = state.get("feature_segment")
    if isinstance(segment, dict) and "priority" not in segment:
        reasons.append(f"{path}.feature_segment: no 'priority' key (the SDK mapper raises KeyError)")
    values = state.get("multivariate_feature_state_values")
    if "multivariate_feature_state_values" not in state:
        reasons.append(f"{path}: multivariate_feature_state_values missing (write [] when there are none)")
    elif isinstance(values, list):
        reasons += multivariate_reasons(values, f"{path}.multivariate_feature_state_values")
    return reasons


def multivariate_reasons(values: list, path: str) -> list[str]:
    reasons, total = [], Decimal(0)
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            continue
        if not (value.get("id") or value.get("mv_fs_value_uuid")):
            reasons.append(f"{path}[{i}]: neither id nor mv_fs_value_uuid is set (variants are ordered by it)")
        allocation = value.get("percentage_allocation")
        if is_number(allocation):
            total += Decimal(str(allocation))
            if not 0 <= allocation <= 100:
                reasons.append(f"{path}[{i}].percentage_allocation: {allocation} is outside 0..100")
    if total > 100:
        reasons.append(f"{path}: percentage allocations add up to {total}, more than 100")
    return reasons


def condition_reasons(condition: object, path: str) -> list[str]:
    if not isinstance(condition, dict):
        return []
    if "value" not in condition:
        return [f"{path}: no 'value' key (the SDK mapper reads condition['value']; write null for IS_SET)"]
    operator, value = condition.get("operator"), condition["value"]
    if operator in ("IN", "PERCENTAGE_SPLIT") and value is None:
        return [f"{path}: {operator} with a null value crashes the engine"]
    if operator == "REGEX" and isinstance(value, str):
        try:
            re.compile(value)
        except re.error as error:
            return [f"{path}: REGEX {value!r} does not compile ({error})"]
    if operator == "PERCENTAGE_SPLIT":
        try:
            if not 0 <= float(value) <= 100:
                return [f"{path}: PERCENTAGE_SPLIT {value!r} is outside 0..100"]
        except (TypeError, ValueError):
            return [f"{path}: PERCENTAGE_SPLIT value {value!r} is not a number"]
    if operator == "MODULO" and not (isinstance(value, str) and re.fullmatch(r"[0-9.]+\|[0-9.]+", value)):
        return [f"{path}: MODULO value {value!r} is not 'divisor|remainder'"]
    return []


def rules_reasons(rules: object, path: str) -> list[str]:
    reasons = []
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        for j, condition in enumerate(rule.get("conditions") or []):
            reasons += condition_reasons(condition, f"{path}[{i}].conditions[{j}]")
        reasons += rules_reasons(rule.get("rules"), f"{path}[{i}].rules")
    return reasons


def duplicates(values: list) -> list:
    return sorted(value for value, count in Counter(values).items() if count > 1)


def environment_reasons(document: dict) -> list[str]:
    """Semantic checks on a plain (decompressed) environment document."""
    reasons = []
    if not isinstance(document.get("name"), str):
        reasons.append("name: missing (the SDK mapper reads environment_document['name'])")
    if not isinstance(document.get("updated_at"), str):
        reasons.append("updated_at: missing or null (the SDK needs it; realtime updates depend on it)")
    states = document.get("feature_states")
    states = states if isinstance(states, list) else []
    for i, state in enumerate(states):
        reasons += feature_state_reasons(state, f"feature_states[{i}]")
    names = [
        s["feature"]["name"]
        for s in states
        if isinstance(s, dict) and isinstance(s.get("feature"), dict) and isinstance(s["feature"].get("name"), str)
    ]
    for name in duplicates(names):
        reasons.append(f"feature_states: feature name {name!r} appears more than once (one silently wins)")
    project = document.get("project")
    segments = project.get("segments") if isinstance(project, dict) else None
    segments = segments if isinstance(segments, list) else []
    for i, segment in enumerate(segments):
        if not isinstance(segment, dict):
            continue
        path = f"project.segments[{i}]"
        reasons += rules_reasons(segment.get("rules"), f"{path}.rules")
        for j, state in enumerate(segment.get("feature_states") or []):
            reasons += feature_state_reasons(state, f"{path}.feature_states[{j}]")
    ids = [str(s.get("id")) for s in segments if isinstance(s, dict)]
    for segment_id in duplicates(ids):
        reasons.append(f"project.segments: segment id {segment_id} appears more than once (one silently wins)")
    return reasons


def replication_reasons(item: dict) -> list[str]:
    reasons = []
    if "_replication_version" in item and not is_int(item["_replication_version"]):
        reasons.append(f"_replication_version: {describe(item['_replication_version'])} is not a whole number")
    for name in ("_replication_hash", "_replication_doc"):
        if name in item and not isinstance(item[name], str):
            reasons.append(f"{name}: {describe(item[name])} is not a string")
    if "_replication_source_time" in item:
        value = item["_replication_source_time"]
        try:
            if datetime.fromisoformat(value).tzinfo is None:
                reasons.append(f"_replication_source_time: {value!r} has no time zone")
        except (TypeError, ValueError):
            reasons.append(f"_replication_source_time: {describe(value)} is not an ISO 8601 datetime")
    return reasons


def evaluation_reasons(served: dict) -> list[str]:
    """Map with the SDK and evaluate with the engine, as local evaluation would."""
    try:
        context = map_environment_document_to_context(served)
        get_evaluation_result({k: v for k, v in context.items() if k != "segments"})
        get_evaluation_result({**context, "identity": {"identifier": SMOKE_IDENTIFIER, "traits": {}}})
    except Exception as error:  # noqa: BLE001 - any crash is the finding
        return [f"SDK mapper / engine evaluation failed: {type(error).__name__}: {error}"]
    return []


# --------------------------------------------------------------------------- documents


def split_item(item: dict) -> tuple[dict, dict]:
    """(Flagsmith document, our replication attributes)."""
    document = {k: v for k, v in item.items() if not k.startswith(REPLICATION_PREFIX)}
    extras = {k: v for k, v in item.items() if k.startswith(REPLICATION_PREFIX)}
    return document, extras


def decompressed(item: dict) -> dict | None:
    """The item with project/feature_states decoded to JSON values; None if undecodable."""
    if item.get("compressed") is not True:
        return dict(item)
    document = dict(item)
    for name in ("project", "feature_states"):
        raw = binary_bytes(item.get(name))
        if raw is None:
            return None
        try:
            document[name] = gunzip_json(raw)[0]
        except (OSError, EOFError, UnicodeDecodeError, ValueError):
            return None
    return document


def plain_document(item: dict) -> dict | None:
    """Decompressed Flagsmith document with JSON values, without our attributes."""
    document = decompressed(split_item(item)[0])
    if document is None:
        return None
    document.pop("compressed", None)
    return to_json_value(document)


def served_document(env_item: dict, overrides: list[dict]) -> dict | None:
    """What GET /api/v1/environment-document/ returns for an environment item."""
    document = decompressed(env_item)
    if document is None:
        return None
    document = to_json_value(document)
    if document.get("use_identity_overrides_in_local_eval") is True:
        document["identity_overrides"] = identity_overrides(overrides)
    document.setdefault("identity_overrides", [])
    return document


def identity_overrides(override_items: list[dict]) -> list[dict]:
    by_identifier: dict[str, list] = {}
    for item in override_items:
        by_identifier.setdefault(item.get("identifier"), []).append(to_json_value(item.get("feature_state")))
    return [{"identifier": k, "identity_features": v} for k, v in by_identifier.items()]


def environment_item_reasons(
    item: dict, plain_type: type, compressed_type: type, report: Report, label: str
) -> list[str]:
    """All checks of a v1 environment item or a v2 _META item."""
    document, extras = split_item(item)
    top_level_extras = {k: v for k, v in document.items() if k == "identity_overrides"}
    if top_level_extras and not isinstance(top_level_extras["identity_overrides"], list):
        return ["identity_overrides: must be a list when present"]
    typed = {k: v for k, v in document.items() if k not in top_level_extras}
    compressed = item.get("compressed") is True
    reasons = strict_reasons(typed, compressed_type if compressed else plain_type, "")
    reasons += replication_reasons(extras)
    decoded = decompressed(item)
    if decoded is None:
        return reasons + ["compressed project/feature_states cannot be decoded"]
    reasons += schema_reasons(decoded, compressed_type if compressed else plain_type, label, report)
    plain = plain_document(item)
    if compressed:
        reasons += [
            f"as plain {plain_type.__name__}: {r}"
            for r in schema_reasons({**plain, **extras}, plain_type, label, report)
        ]
    reasons += environment_reasons(plain)
    smoke = {**plain, "identity_overrides": []}
    smoke.setdefault("api_key", plain.get("environment_api_key"))
    return reasons + evaluation_reasons(smoke)


def override_item_reasons(item: dict, report: Report, label: str) -> list[str]:
    document, extras = split_item(item)
    reasons = strict_reasons(document, schema.EnvironmentV2IdentityOverride, "")
    reasons += replication_reasons(extras)
    reasons += schema_reasons(item, schema.EnvironmentV2IdentityOverride, label, report)
    state = document.get("feature_state")
    reasons += feature_state_reasons(state, "feature_state")
    reason = uuid4_reason(document.get("identity_uuid"), "identity_uuid")
    reasons += [reason] if reason else []
    feature = state.get("feature") if isinstance(state, dict) else None
    feature_id = feature.get("id") if isinstance(feature, dict) else None
    expected_key = f"{OVERRIDE_PREFIX}{to_json_value(feature_id)}:{document.get('identity_uuid')}"
    if document.get("document_key") != expected_key:
        reasons.append(f"document_key: {document.get('document_key')!r}, expected {expected_key!r}")
    return reasons


MAX_IDENTIFIER_BYTES = 1024


def identity_item_reasons(item: dict, env_keys: set, report: Report, label: str) -> list[str]:
    document, extras = split_item(item)
    reasons = strict_reasons(document, schema.Identity, "")
    reasons += replication_reasons(extras)
    reasons += schema_reasons(item, schema.Identity, label, report)
    reason = uuid4_reason(document.get("identity_uuid"), "identity_uuid")
    reasons += [reason] if reason else []
    api_key, identifier = document.get("environment_api_key"), document.get("identifier")
    if document.get("composite_key") != f"{api_key}_{identifier}":
        reasons.append(f"composite_key {document.get('composite_key')!r} is not '{{environment_api_key}}_{{identifier}}'")
    if isinstance(identifier, str) and len(identifier.encode()) > MAX_IDENTIFIER_BYTES:
        reasons.append(f"identifier is {len(identifier.encode())} bytes, over the {MAX_IDENTIFIER_BYTES}-byte key limit")
    if api_key not in env_keys:
        reasons.append(f"environment_api_key {api_key!r} has no environment item")
    if not is_int(document.get("django_id")):
        reasons.append("django_id: core identities need their id (core buckets multivariate values on it)")
    for i, trait in enumerate(document.get("identity_traits") or []):
        if isinstance(trait, dict) and trait.get("trait_value") is None:
            reasons.append(f"identity_traits[{i}]: a null trait value means 'delete'; it is never stored")
    features = document.get("identity_features") or []
    ids = [to_json_value((fs.get("feature") or {}).get("id")) for fs in features if isinstance(fs, dict)]
    if duplicates(ids):
        reasons.append(f"identity_features: feature ids {duplicates(ids)} appear more than once")
    for i, state in enumerate(features):
        reasons += feature_state_reasons(state, f"identity_features[{i}]")
    return reasons


def api_key_item_reasons(item: dict, report: Report, label: str) -> list[str]:
    document, extras = split_item(item)
    reasons = strict_reasons(document, schema.EnvironmentAPIKey, "")
    reasons += replication_reasons(extras)
    reasons += schema_reasons(item, schema.EnvironmentAPIKey, label, report)
    if isinstance(document.get("key"), str) and not document["key"].startswith("ser."):
        reasons.append("key: server keys start with 'ser.' (the SDK refuses local evaluation otherwise)")
    return reasons


# --------------------------------------------------------------------------- DynamoDB


@dataclass
class Tables:
    environments: typing.Any
    environments_v2: typing.Any
    api_keys: typing.Any
    identities: typing.Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, table: typing.Any, key: dict) -> dict | None:
        with self.lock:
            return table.get_item(Key=key, ConsistentRead=True).get("Item")

    def overrides_of(self, environment_id: str) -> list[dict]:
        condition = Key("environment_id").eq(environment_id) & Key("document_key").begins_with(OVERRIDE_PREFIX)
        with self.lock:
            return query_all(self.environments_v2, condition)


def open_tables(args: argparse.Namespace) -> Tables:
    try:
        resource = boto3.resource("dynamodb", endpoint_url=args.endpoint, region_name=args.region)
        names = [args.environments_table, args.environments_v2_table, args.api_keys_table]
        if args.identities_table:
            names.append(args.identities_table)
        tables = [resource.Table(name) for name in names]
        for table in tables:
            table.load()
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise SetupError(f"table not found at {args.endpoint}: {error}") from error
        raise SetupError(f"DynamoDB error at {args.endpoint}: {error}") from error
    except botocore.exceptions.BotoCoreError as error:
        raise SetupError(f"cannot reach DynamoDB at {args.endpoint}: {error}") from error
    return Tables(*tables)


def scan_all(table: typing.Any) -> list[dict]:
    items, kwargs = [], {"ConsistentRead": True}
    while True:
        page = table.scan(**kwargs)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def query_all(table: typing.Any, condition: typing.Any) -> list[dict]:
    items, kwargs = [], {"KeyConditionExpression": condition, "ConsistentRead": True}
    while True:
        page = table.query(**kwargs)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# --------------------------------------------------------------------------- item checks


def check_items(tables: Tables, report: Report, allow_empty: bool) -> None:
    try:
        environments = scan_all(tables.environments)
        v2_items = scan_all(tables.environments_v2)
        api_keys = scan_all(tables.api_keys)
        identities = scan_all(tables.identities) if tables.identities is not None else []
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise SetupError(f"scan failed: {error}") from error
    metas, overrides = check_v2_items(v2_items, tables.environments_v2.name, report)
    check_environment_items(environments, tables.environments.name, report)
    check_api_key_items(api_keys, environments, tables.api_keys.name, tables.environments.name, report)
    check_v1_v2_consistency(environments, metas, overrides, report, tables.environments_v2.name)
    if tables.identities is not None:
        check_identity_items(identities, environments, overrides, tables.identities.name, report)
    note_replication_attributes(environments + v2_items + api_keys + identities, report)
    if not environments and not allow_empty:
        report.add(tables.environments.name, ["no environment items found (pass --allow-empty if that is expected)"])


def form(item: dict) -> str:
    return "compressed" if item.get("compressed") is True else "plain"


def check_environment_items(environments: list[dict], table: str, report: Report) -> None:
    for item in environments:
        label = f"{table} api_key={item.get('api_key')}"
        report.counts[f"{table} ({form(item)})"] += 1
        reasons = environment_item_reasons(item, schema.Environment, schema.EnvironmentCompressed, report, label)
        report.add(label, reasons)


def check_v2_items(v2_items: list[dict], table: str, report: Report) -> tuple[list[dict], list[dict]]:
    """Checks the _META and identity_override items; returns them for the cross-table checks."""
    metas, overrides = [], []
    for item in v2_items:
        document_key = item.get("document_key")
        label = f"{table} environment_id={item.get('environment_id')} document_key={document_key}"
        if document_key == META_KEY:
            metas.append(item)
            report.counts[f"{table} _META ({form(item)})"] += 1
            meta_types = (schema.EnvironmentV2Meta, schema.EnvironmentV2MetaCompressed)
            report.add(label, environment_item_reasons(item, *meta_types, report, label))
        elif isinstance(document_key, str) and document_key.startswith(OVERRIDE_PREFIX):
            overrides.append(item)
            report.counts[f"{table} identity_override"] += 1
            report.add(label, override_item_reasons(item, report, label))
        else:
            report.counts[f"{table} unknown document_key"] += 1
            report.add(label, ["document_key is neither '_META' nor 'identity_override:...'"])
    return metas, overrides


def check_identity_items(
    identities: list[dict], environments: list[dict], overrides: list[dict], table: str, report: Report
) -> None:
    env_keys = {item.get("api_key") for item in environments}
    override_keys = {(item.get("identity_uuid"), item.get("document_key")) for item in overrides}
    v2_complete = {item.get("environment_api_key") for item in overrides}
    for item in identities:
        label = f"{table} composite_key={item.get('composite_key')}"
        report.counts[table] += 1
        reasons = identity_item_reasons(item, env_keys, report, label)
        # Where the environment has override items at all, every override has its item.
        if item.get("environment_api_key") in v2_complete:
            for fs in item.get("identity_features") or []:
                key = f"{OVERRIDE_PREFIX}{to_json_value((fs.get('feature') or {}).get('id'))}:{item.get('identity_uuid')}"
                if (item.get("identity_uuid"), key) not in override_keys:
                    reasons.append(f"identity override {key} has no environments_v2 item")
        report.add(label, reasons)


def check_api_key_items(
    api_keys: list[dict], environments: list[dict], table: str, environments_table: str, report: Report
) -> None:
    env_keys = {item.get("api_key") for item in environments}
    for item in api_keys:
        label = f"{table} key={item.get('key')}"
        report.counts[table] += 1
        reasons = api_key_item_reasons(item, report, label)
        if item.get("client_api_key") not in env_keys:
            reasons.append(f"client_api_key {item.get('client_api_key')!r} has no item in {environments_table}")
        report.add(label, reasons)


def check_v1_v2_consistency(
    environments: list[dict], metas: list[dict], overrides: list[dict], report: Report, v2_name: str
) -> None:
    """Where both tables hold an environment, they must hold the same document."""
    v1_by_key = {item.get("api_key"): item for item in environments}
    meta_by_id = {item.get("environment_id"): item for item in metas}
    for meta in metas:
        v1 = v1_by_key.get(meta.get("environment_api_key"))
        if v1 is None:
            continue
        reasons = []
        if meta.get("environment_id") != str(to_json_value(v1.get("id"))):
            reasons.append(f"environment_id {meta.get('environment_id')!r} is not str(id) of the v1 item")
        left, right = plain_document(v1), plain_document(meta)
        if left is None or right is None:
            continue
        for name in sorted((left.keys() | right.keys()) - TABLE_KEY_FIELDS - {"identity_overrides"}):
            if left.get(name) != right.get(name):
                reasons.append(f"field {name!r} differs between the v1 item and the v2 _META item")
        report.add(f"consistency {v2_name} _META vs v1 api_key={v1.get('api_key')}", reasons)
    for item in overrides:
        meta = meta_by_id.get(item.get("environment_id"))
        if meta is not None and meta.get("environment_api_key") != item.get("environment_api_key"):
            report.add(
                f"consistency {v2_name} {item.get('document_key')}",
                ["environment_api_key differs from the environment's _META item"],
            )


def note_replication_attributes(items: list[dict], report: Report) -> None:
    carrying = sum(1 for item in items if any(k.startswith(REPLICATION_PREFIX) for k in item))
    if carrying:
        report.notes.append(
            f"{carrying} of {len(items)} items carry _replication_* attributes; they were "
            "validated as stored (Flagsmith's schema ignores unknown keys)"
        )


# --------------------------------------------------------------------------- SDK end to end


class DocumentServer:
    """Serves the environment document the way the SDK API does; records fallbacks."""

    def __init__(self, tables: Tables):
        self.tables = tables
        self.rejections: list[tuple[str, str]] = []  # (server key, what happened)
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1/"

    def __enter__(self) -> typing.Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, server_key: str, message: str) -> None:
        with self._lock:
            self.rejections.append((server_key, message))

    def rejections_since(self, mark: int, server_key: str) -> list[str]:
        with self._lock:
            return [message for key, message in self.rejections[mark:] if key == server_key]

    def respond(self, method: str, path: str, server_key: str) -> tuple[int, dict]:
        """Route one request: the document, or a recorded rejection."""
        if path in FALLBACK_PATHS:
            self.record(
                server_key,
                f"SDK fell back to remote evaluation ({method} {path}): it did not accept the environment document",
            )
            return 500, {"detail": "remote evaluation is not served by the compatibility check"}
        if method != "GET" or path != DOCUMENT_PATH:
            self.record(server_key, f"unexpected request {method} {path}")
            return 404, {"detail": "not found"}
        try:
            status, body = self.document_for(server_key)
            json.dumps(body)
        except Exception as error:  # noqa: BLE001 - reported, and answered with 500
            status, body = 500, {"detail": f"cannot serve the document: {type(error).__name__}: {error}"}
        if status != 200:
            self.record(server_key, f"environment document request answered {status}: {body['detail']}")
        return status, body

    def document_for(self, server_key: str) -> tuple[int, object]:
        key_item = self.tables.get(self.tables.api_keys, {"key": server_key})
        if key_item is None:
            return 403, {"detail": f"unknown server key {server_key}"}
        env_item = self.tables.get(self.tables.environments, {"api_key": key_item.get("client_api_key")})
        if env_item is None:
            return 404, {"detail": f"no environment {key_item.get('client_api_key')}"}
        overrides = self.tables.overrides_of(str(to_json_value(env_item.get("id"))))
        document = served_document(env_item, overrides)
        if document is None:
            return 500, {"detail": "compressed fields cannot be decoded"}
        return 200, document

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.handle_request()

            def do_POST(self) -> None:
                self.handle_request()

            def handle_request(self) -> None:
                key = self.headers.get("X-Environment-Key", "")
                status, body = server.respond(self.command, self.path.split("?", 1)[0], key)
                payload = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


class SdkLogCapture(logging.Handler):
    """Keeps the SDK's error logs ("Error parsing environment document", ...).

    Only records from this thread count: the SDK's polling threads fetch the same
    document again in the background and would blur which client logged what.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []
        self.thread_id = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.messages.append(message)


def load_expectations(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as file:
            cases = json.load(file)["cases"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SetupError(f"cannot read expectations from {path}: {error}") from error
    for i, case in enumerate(cases):
        if not (
            isinstance(case, dict) and isinstance(case.get("server_key"), str) and isinstance(case.get("flags"), dict)
        ):
            raise SetupError(f"{path}: case {i} needs 'server_key' (string) and 'flags' (object)")
        for name, flag in case["flags"].items():
            if not isinstance(flag, dict) or "enabled" not in flag or ("value" in flag) == ("value_in" in flag):
                raise SetupError(f"{path}: case {i} flag {name!r} needs 'enabled' and one of 'value'/'value_in'")
    return cases


def same_value(actual: object, expected: object) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    return actual == expected and (actual is None) == (expected is None)


def flag_reasons(flags: typing.Any, expected: dict) -> list[str]:
    reasons = []
    for name, want in expected.items():
        try:
            flag = flags.get_flag(name)
        except Exception as error:  # noqa: BLE001 - FlagsmithFeatureDoesNotExistError and engine errors
            reasons.append(f"flag {name!r}: {type(error).__name__}: {error}")
            continue
        if flag.enabled is not want["enabled"]:
            reasons.append(f"flag {name!r}: enabled is {flag.enabled}, expected {want['enabled']}")
        if "value" in want and not same_value(flag.value, want["value"]):
            reasons.append(f"flag {name!r}: value is {flag.value!r}, expected {want['value']!r}")
        if "value_in" in want and not any(same_value(flag.value, v) for v in want["value_in"]):
            reasons.append(f"flag {name!r}: value is {flag.value!r}, expected one of {want['value_in']!r}")
    return reasons


def close_client(client: typing.Any) -> None:
    poller = getattr(client, "environment_data_polling_manager_thread", None)
    if poller is not None:
        poller.stop()
        poller.join(timeout=5)
    session = getattr(client, "session", None)
    if session is not None:
        session.close()


def new_client(server_key: str, server: DocumentServer, logs: SdkLogCapture) -> tuple[typing.Any, list[str]]:
    """An SDK client in local-evaluation mode, and the problems seen while it started."""
    log_mark, rejection_mark = len(logs.messages), len(server.rejections)
    try:
        client = Flagsmith(
            environment_key=server_key,
            api_url=server.api_url,
            enable_local_evaluation=True,
            environment_refresh_interval_seconds=60,
        )
    except Exception as error:  # noqa: BLE001
        return None, [f"SDK client could not start: {type(error).__name__}: {error}"]
    problems = [f"SDK logged: {m}" for m in logs.messages[log_mark:]]
    problems += server.rejections_since(rejection_mark, server_key)
    if client._evaluation_context is None:
        problems.append("SDK has no environment to evaluate: fetching or parsing the document failed")
    elif client._environment_updated_at is None:
        problems.append("SDK could not read updated_at from the environment document")
    return client, problems


def run_cases(cases: list[dict], server: DocumentServer, report: Report) -> None:
    logs = SdkLogCapture()
    sdk_logger = logging.getLogger("flagsmith")
    sdk_logger.addHandler(logs)
    sdk_logger.propagate = False
    by_key: dict[str, list[tuple[int, dict]]] = {}
    for i, case in enumerate(cases):
        by_key.setdefault(case["server_key"], []).append((i, case))
    report.counts["SDK cases"] = len(cases)
    report.counts["SDK server keys"] = len(by_key)
    for server_key, key_cases in by_key.items():
        client, startup_problems = new_client(server_key, server, logs)
        try:
            for i, case in key_cases:
                report.add(case_label(i, case), startup_problems + case_reasons(client, case, server))
        finally:
            if client is not None:
                close_client(client)


def case_label(index: int, case: dict) -> str:
    identifier = case.get("identifier")
    who = f"identity {identifier!r}" if identifier is not None else "environment flags"
    return f"case {index} ({case['server_key']}, {who})"


def case_reasons(client: typing.Any, case: dict, server: DocumentServer) -> list[str]:
    if client is None:
        return []
    mark = len(server.rejections)
    try:
        if case.get("identifier") is None:
            flags = client.get_environment_flags()
        else:
            flags = client.get_identity_flags(case["identifier"], traits=case.get("traits") or {})
        reasons = flag_reasons(flags, case["flags"])
    except Exception as error:  # noqa: BLE001 - FlagsmithAPIError after a fallback, engine errors
        reasons = [f"SDK evaluation failed: {type(error).__name__}: {error}"]
    return server.rejections_since(mark, case["server_key"]) + reasons


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate DynamoDB items against Flagsmith's schema, SDK and engine.")
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="DynamoDB endpoint URL (default: $AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help="AWS region (default: $AWS_REGION)",
    )
    parser.add_argument("--environments-table", default="flagsmith_environments")
    parser.add_argument("--environments-v2-table", default="flagsmith_environments_v2")
    parser.add_argument("--api-keys-table", default="flagsmith_environment_api_key")
    parser.add_argument("--identities-table", help="also validate the identities table's items")
    parser.add_argument("--expect", metavar="FILE", help="JSON expectations evaluated with the Python SDK")
    parser.add_argument("--allow-empty", action="store_true", help="do not fail when the environments table is empty")
    args = parser.parse_args(argv)
    if not args.endpoint:
        parser.error("--endpoint is required (or set AWS_ENDPOINT_URL)")
    if not args.region:
        parser.error("--region is required (or set AWS_REGION)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = Report()
    try:
        cases = load_expectations(args.expect) if args.expect else []
        tables = open_tables(args)
        check_items(tables, report, args.allow_empty)
        if cases:
            with DocumentServer(tables) as server:
                run_cases(cases, server, report)
    except SetupError as error:
        print(f"check_documents.py: error: {error}", file=sys.stderr)
        return 2
    report.print()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
