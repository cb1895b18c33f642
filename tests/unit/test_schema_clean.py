"""clean_schema: golden vectors from real tool schemas, and properties over arbitrary JSON."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.schema_clean import clean_schema

VECTORS = sorted((Path(__file__).resolve().parents[1] / "vectors" / "schema_clean").glob("*.json"))

# What may appear in a cleaned schema node; everything else Gemini may reject.
ALLOWED = {"type", "description", "properties", "required", "enum", "items", "minimum", "maximum"}
FORBIDDEN = {
    "additionalProperties", "$schema", "$id", "$ref", "$defs", "definitions", "$comment", "title", "default",
    "examples", "example", "const", "propertyNames", "patternProperties", "if", "then", "else", "not",
    "unevaluatedProperties", "unevaluatedItems", "dependentRequired", "dependentSchemas", "dependencies",
    "contains", "prefixItems", "deprecated", "readOnly", "writeOnly", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "allOf", "anyOf", "oneOf", "nullable", "format", "minLength", "maxLength", "pattern",
}  # fmt: skip
TYPES = {"string", "number", "integer", "boolean", "array", "object"}


def schema_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema node of a cleaned schema; property *names* are not schema keys."""
    yield node
    for child in node.get("properties", {}).values():
        yield from schema_nodes(child)
    if "items" in node:
        yield from schema_nodes(node["items"])


def assert_gemini_safe(schema: dict[str, Any]) -> None:
    for node in schema_nodes(schema):
        assert set(node) <= ALLOWED, set(node) - ALLOWED
        assert not set(node) & FORBIDDEN
        assert not any(k.startswith("x-") for k in node)
        if "type" in node:
            assert node["type"] in TYPES
        if "properties" in node:
            assert node["properties"] and node["type"] == "object"
        assert set(node.get("required", [])) <= set(node.get("properties", {}))
        if node.get("type") == "array":
            assert isinstance(node["items"], dict)
        if "enum" in node:
            assert node["type"] == "string" and all(isinstance(v, str) for v in node["enum"])
        if "description" in node:
            assert isinstance(node["description"], str)


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    before = copy.deepcopy(case["input"])
    out = clean_schema(case["input"])
    assert out == case["output"]
    assert case["input"] == before, "the input schema was mutated"
    assert_gemini_safe(out)
    assert clean_schema(out) == out, "cleaning is not idempotent"


def test_property_named_like_a_keyword_is_kept_while_keywords_go() -> None:
    schema = {
        "type": "object",
        "title": "Root",
        "properties": {"title": {"type": "string", "title": "T"}, "default": {"type": "integer", "default": 1}},
        "required": ["title", "default"],
    }
    out = clean_schema(schema)
    assert out == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "default": {"type": "integer", "description": "default: 1"}},
        "required": ["title", "default"],
    }


def test_self_referencing_refs_terminate() -> None:
    out = clean_schema({"$ref": "#", "anyOf": [{"$ref": "#"}, {"type": "string"}]})
    assert_gemini_safe(out)


def test_exponential_ref_fan_out_is_capped() -> None:
    # 40 levels of two references each: 2**40 nodes if every reference were expanded.
    defs = {
        f"D{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}},
        }
        for i in range(40)
    }
    defs["D40"] = {"type": "string"}
    started = time.monotonic()
    out = clean_schema({"$ref": "#/$defs/D0", "$defs": defs})
    assert time.monotonic() - started < 5
    assert len(json.dumps(out)) < 500_000
    assert_gemini_safe(out)


KEYWORDS = [
    "type", "properties", "items", "required", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "additionalProperties", "title", "default", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "nullable", "description", "not", "if", "then", "else", "patternProperties", "x-ext",
    "minLength", "examples", "prefixItems", "propertyNames",
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["object", "string", "array", "integer", "null", "number", "boolean", "OBJECT"])
    | st.sampled_from(["#", "#/$defs/a", "#/definitions/a", "#/properties/p", "#/$defs/a/properties/b", "#x"])
)
KEYS = st.sampled_from(KEYWORDS) | st.sampled_from(["a", "b", "p"]) | st.text(max_size=4)
JSON = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=5), max_leaves=40
)
SCHEMAS = st.dictionaries(KEYS, JSON, max_size=6)


@settings(max_examples=400, deadline=None)
@given(SCHEMAS)
def test_any_json_gives_a_gemini_safe_schema(schema: dict[str, Any]) -> None:
    before = copy.deepcopy(schema)
    out = clean_schema(schema)
    assert schema == before
    assert_gemini_safe(out)
    json.dumps(out)
    assert clean_schema(out) == out
