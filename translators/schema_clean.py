"""JSON Schema -> the schema subset Gemini function declarations accept (dialects.md section 9).

Gemini rejects unknown schema keywords with a 400 ("Unknown name "additionalProperties" ...
Cannot find field"), and Code Assist is stricter than the public API. The steps follow
CLIProxyAPI's cleaner, which has met the most real tool schemas (Claude Code, MCP servers):

1. repair MCP oddities: bare property maps -> `properties`; `required: true` on a property ->
   the parent's `required[]`; arrays without `items` get `{"type": "string"}`;
2. inline local `$ref`s (a cycle becomes a "See: Name" description hint);
3. exclusive bounds -> inclusive ones; `const` -> one-value `enum`;
4. enum values -> strings (type "string"); boolean enums dropped;
5. constraints Gemini ignores or rejects -> description hints;
6. `allOf` merged; `anyOf`/`oneOf` flattened to the best branch; null branches and
   `["x", "null"]` -> `x` + a "nullable" hint;
7. everything else removed; `required` keeps only declared, non-nullable properties.

It works on ONE schema: keywords such as `title`, `format` and `default` are also ordinary
property names, so the walk only treats the values under `properties` as schemas and never
looks at what tool calls carry. The input is never mutated.

Deviations from CLIProxyAPI, on purpose: an enum on a number/integer/boolean schema becomes a
hint and the type stays, so arguments keep their JSON type (a tool validating `count: 3` must
not receive "3"); empty `properties` maps are dropped (Gemini: "properties: should be non-empty
for OBJECT type"); `properties`/`required` survive only on objects, `items` only on arrays and
`minimum`/`maximum` only on numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})

# Keywords whose dict value is not a property schema (for the bare-property-map repair).
_DICT_KEYWORDS = frozenset(
    {
        "properties", "patternProperties", "additionalProperties", "items", "prefixItems", "$defs",
        "definitions", "dependentSchemas", "dependentRequired", "dependencies", "if", "then", "else",
        "not", "contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems", "contentSchema",
        "additionalItems", "default", "const", "example", "examples", "discriminator", "xml",
        "externalDocs", "enumDescriptions", "enumTitles",
    }
)  # fmt: skip

# Constraints Gemini ignores or rejects: kept for the model as description hints.
_HINTED = (
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties", "maxProperties",
    "uniqueItems", "multipleOf", "format", "default", "example", "examples",
)  # fmt: skip

# Expansion cap: non-cyclic $refs can still nest into an exponentially large tree.
_REF_BUDGET = 500


class _Refs:
    """Local `$ref` resolution against the root, with the refs being expanded on the current path."""

    __slots__ = ("active", "budget", "root")

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.active: set[str] = set()
        self.budget = _REF_BUDGET

    def deref(self, node: dict[str, Any], expanded: list[str]) -> dict[str, Any]:
        """This node with its own local `$ref` chain inlined; sibling keywords override the target.

        A cycle (or an exhausted budget) keeps the `$ref`, which `_clean` turns into a hint."""
        while True:
            ref = node.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                return node
            target = _pointer(self.root, ref)
            if not isinstance(target, dict):
                return node
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if ref in self.active or ref in expanded or self.budget <= 0:
                stub = {k: target[k] for k in ("type", "description") if k in target}
                return {**stub, **siblings, "$ref": ref}
            self.budget -= 1
            expanded.append(ref)
            node = {**target, **siblings}


def _pointer(root: Any, ref: str) -> Any:
    """The node a local JSON Pointer (`#`, `#/a/b~1c/0`) names, or None."""
    if ref != "#" and not ref.startswith("#/"):
        return None
    node = root
    for raw in ref[2:].split("/") if ref != "#" else ():
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A new schema Gemini's `parameters` accepts; semantic losses are kept as description hints."""
    if not isinstance(schema, dict):
        return {}
    return _clean(schema, _Refs(schema))[0]


def _clean(value: Any, refs: _Refs) -> tuple[dict[str, Any], bool]:
    """One schema node, cleaned, and whether it admitted null (the parent then stops requiring it)."""
    if not isinstance(value, dict):
        return {}, False
    expanded: list[str] = []
    n = dict(_repair(refs.deref(value, expanded)))  # a copy: the caller's schema stays untouched
    hints: list[str] = []
    nullable = n.get("nullable") is True

    # 6 first: the combinators decide which keywords the node ends up with.
    while True:
        all_of = n.pop("allOf", None)
        if isinstance(all_of, list):
            for branch in all_of:
                if isinstance(branch, dict):
                    _merge_missing(n, _repair(refs.deref(branch, expanded)))
            continue
        key = "anyOf" if isinstance(n.get("anyOf"), list) else "oneOf" if isinstance(n.get("oneOf"), list) else None
        if key is None:
            break
        branches = [_repair(refs.deref(b, expanded)) if isinstance(b, dict) else {} for b in n.pop(key)]
        real = [b for b in branches if not _is_null(b)]
        nullable = nullable or len(real) < len(branches)
        if isinstance(n.get("properties"), dict):
            for b in real:
                if isinstance(b.get("properties"), dict):
                    n["properties"] = _fill(n["properties"], b["properties"])
        elif real:
            best = max(real, key=_score)  # max() keeps the first of equal scores
            types = list(dict.fromkeys(t for b in real if (t := _type_name(b))))
            if len(types) > 1:
                hints.append("Accepts: " + " | ".join(types))
            desc = _join_desc(n.get("description"), best.get("description"))
            n = {**n, **best}
            if desc:
                n["description"] = desc

    t = n.get("type")
    if isinstance(t, list):
        names = [x for x in t if isinstance(x, str)]
        real_types = [x for x in names if x != "null"]
        nullable = nullable or len(real_types) < len(names)
        if len(real_types) > 1:
            hints.append("Accepts: " + " | ".join(real_types))
        t = real_types[0] if real_types else "string"
    t = t.lower() if isinstance(t, str) else None
    if t not in _TYPES:
        t = "object" if isinstance(n.get("properties"), dict) else "array" if "items" in n else None

    ref = n.get("$ref")
    if isinstance(ref, str):  # external, unresolvable or cyclic
        hints.append("See: " + ref.rstrip("/").rsplit("/", 1)[-1])
        t = t or "object"

    # 3. bounds
    for key, bound, step in (("exclusiveMinimum", "minimum", 1), ("exclusiveMaximum", "maximum", -1)):
        v = n.get(key)
        if _is_num(v):
            if t == "integer":
                _tighten(n, bound, math.floor(v) + 1 if step > 0 else math.ceil(v) - 1, step)
            else:
                _tighten(n, bound, v, step)
                hints.append(f"{key}: {_show(v)}")
        elif v is True and _is_num(n.get(bound)):
            if t == "integer" and float(n[bound]).is_integer():
                n[bound] = int(n[bound]) + step
            else:
                hints.append(f"{key}: {_show(n[bound])}")
    if "const" in n and "enum" not in n:
        n["enum"] = [n["const"]]

    # 4. enums
    enum = n.get("enum")
    out_enum: list[str] | None = None
    if isinstance(enum, list):
        values = [v for v in enum if v is not None]
        nullable = nullable or len(values) < len(enum)
        booleans = all(isinstance(v, bool) for v in values)
        if values and (booleans or t not in (None, "string")):
            t = t or "boolean"
            if not booleans or set(values) != {True, False}:  # [true, false] says nothing
                hints.append("Allowed: " + ", ".join(_show(v) for v in values))
        elif values:
            out_enum, t = [v if isinstance(v, str) else _show(v) for v in values], "string"

    # 5. hints
    for key in _HINTED:
        if key in n:
            hints.append(f"{key}: {_show(n[key])}")
    if n.get("additionalProperties") is False:
        hints.append("No extra properties allowed")
    if nullable:
        hints.append("nullable")

    # 7. what is left
    out: dict[str, Any] = {}
    if t is not None:
        out["type"] = t
    desc = n.get("description")
    desc = desc if isinstance(desc, str) else ""
    if hints:
        desc = f"{desc} ({'; '.join(hints)})" if desc else "; ".join(hints)
    if desc:
        out["description"] = desc
    if out_enum is not None:
        out["enum"] = out_enum

    refs.active.update(expanded)
    try:
        if t == "object" and isinstance(n.get("properties"), dict):
            props: dict[str, Any] = {}
            optional: set[str] = set()
            promoted: list[str] = []
            for name, child in n["properties"].items():
                props[name], child_nullable = _clean(child, refs)
                if child_nullable:
                    optional.add(name)
                if isinstance(child, dict) and child.get("required") is True:
                    promoted.append(name)
            if props:
                out["properties"] = props
                req = n.get("required")
                listed = [r for r in req if isinstance(r, str)] if isinstance(req, list) else []
                required = [r for r in dict.fromkeys(listed + promoted) if r in props and r not in optional]
                if required:
                    out["required"] = required
        elif t == "array":
            items = n.get("items")
            if isinstance(items, list):
                items = next((i for i in items if isinstance(i, dict)), None)
            out["items"] = _clean(items, refs)[0] if isinstance(items, dict) else {"type": "string"}
    finally:
        refs.active.difference_update(expanded)
    if t in ("number", "integer"):
        for bound in ("minimum", "maximum"):
            if _is_num(n.get(bound)):
                out[bound] = n[bound]
    return out, nullable


def _repair(node: dict[str, Any]) -> dict[str, Any]:
    """MCP servers send bare property maps (`{"city": {"type": "string"}}`): wrap them."""
    t = node.get("type")
    if (isinstance(t, str) and t != "object") or (isinstance(t, list) and "object" not in t):
        return node
    bare = {
        k: v
        for k, v in node.items()
        if isinstance(v, dict) and "type" in v and k not in _DICT_KEYWORDS and not k.startswith("x-")
    }
    if not bare:
        return node
    out = {k: v for k, v in node.items() if k not in bare}
    props = out.get("properties")
    out["properties"] = _fill(props, bare) if isinstance(props, dict) else bare
    out.setdefault("type", "object")
    return out


def _merge_missing(node: dict[str, Any], branch: dict[str, Any]) -> None:
    """allOf: a branch fills what the node lacks; properties merge by name, required lists unite."""
    for k, v in branch.items():
        if k == "required" and isinstance(v, list) and isinstance(node.get(k), list):
            node[k] = list(dict.fromkeys(node[k] + v))
        elif k == "properties" and isinstance(v, dict) and isinstance(node.get(k), dict):
            node[k] = _fill(node[k], v)
        elif k not in node:
            node[k] = v


def _fill(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` plus the entries of `extra` it lacks, in that order."""
    return {**base, **{k: v for k, v in extra.items() if k not in base}}


def _is_null(branch: dict[str, Any]) -> bool:
    t = branch.get("type")
    return t == "null" or (isinstance(t, list) and bool(t) and all(x == "null" for x in t))


def _type_name(branch: dict[str, Any]) -> str | None:
    t = branch.get("type")
    if isinstance(t, list):
        t = next((x for x in t if isinstance(x, str) and x != "null"), None)
    if isinstance(t, str):
        return t
    return "object" if "properties" in branch else "array" if "items" in branch else None


def _score(branch: dict[str, Any]) -> int:
    """Which union branch to keep: objects carry the most structure, then arrays, then scalars."""
    return {"object": 3, "array": 2, None: 0}.get(_type_name(branch), 1)


def _join_desc(parent: Any, child: Any) -> str:
    parent = parent if isinstance(parent, str) else ""
    child = child if isinstance(child, str) else ""
    if parent and child and parent != child:
        return f"{parent} ({child})"
    return parent or child


def _tighten(node: dict[str, Any], bound: str, value: float, step: int) -> None:
    """Set an inclusive bound unless the existing one is already stricter."""
    old = node.get(bound)
    if not _is_num(old) or (value > old if step > 0 else value < old):
        node[bound] = value


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------
# Gemini `Schema` (structured output, OpenAPI subset) -> JSON Schema, for every other upstream.
#
# Gemini clients send `responseSchema` in Gemini's own Schema form and, in practice, the same form in
# `responseJsonSchema` (Gemini CLI 0.61: `"type": "OBJECT"`). OpenAI refuses uppercase types and
# Gemini-only keywords; JSON Schema has no `nullable` or `propertyOrdering`. The walk treats only
# values under `properties`/`$defs` as named schemas, like clean_schema.

_SCHEMA_CHILD = ("items", "additionalProperties", "not", "contains", "propertyNames")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
# Gemini serialises int64 fields as JSON strings ("minItems": "1").
_INT_KEYWORDS = frozenset({"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"})
_GEMINI_ONLY = frozenset({"propertyOrdering", "nullable"})


def gemini_to_json_schema(schema: Any) -> Any:
    """A new JSON Schema: types lowercased, `nullable: true` -> a `"null"` type, `propertyOrdering`
    applied to the order of `properties` and dropped, int64 strings -> integers. Never mutates;
    already-standard JSON Schema comes back equal."""
    if isinstance(schema, list):
        return [gemini_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _GEMINI_ONLY:
            continue
        if key == "type":
            if isinstance(value, str):
                value = value.lower()
            elif isinstance(value, list):
                value = [v.lower() if isinstance(v, str) else v for v in value]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: gemini_to_json_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_CHILD or key in _SCHEMA_LISTS:
            value = gemini_to_json_schema(value)
        elif key in _INT_KEYWORDS and isinstance(value, str) and value.isdigit():
            value = int(value)
        out[key] = value
    order = schema.get("propertyOrdering")
    if isinstance(order, list) and isinstance(out.get("properties"), dict):
        props = out["properties"]
        ranked = [n for n in order if n in props] + [n for n in props if n not in order]
        out["properties"] = {n: props[n] for n in ranked}
    if schema.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str) and kind != "null":
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        elif kind is None:
            out = {"anyOf": [out, {"type": "null"}]}
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out
