"""``/openapi.json``: written from ``OPERATIONS``, the table the routes are built from.

Schemas come from the operations' msgspec types (``msgspec.json.schema_components``), so a
field added to a response is documented by the same change. ``examples`` name real
resources (a plugin of the running host), so a conformance tool reaches the success
paths instead of only ever meeting 404s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from .operations import OPERATIONS, PATH_SCHEMAS, Operation, Problem

__all__ = ("PROBLEM_TYPE", "openapi_document", "problem_statuses")

PROBLEM_TYPE = "application/problem+json"

_REF = "#/components/schemas/{name}"

_REASONS = {
    400: "The request does not match the operation (query, path or body)",
    401: "No bearer token, or a wrong one",
    403: "The caller may not use the admin API from where it is",
    404: "No such plugin (or installed package, or version)",
    409: "The plugin is not in a state that allows this",
    413: "The request body is over its cap",
    415: "The body is not application/json",
    422: "Understood but refused: a package that fails verification, a plugin that fails to load",
    503: "Not ready",
}


def problem_statuses(op: Operation) -> tuple[int, ...]:
    """Every problem status ``op`` may answer."""
    statuses = {400} | set(op.problems)
    if op.auth:
        statuses |= {401, 403}
    return tuple(sorted(statuses))


def openapi_document(
    examples: Mapping[str, Any] | None = None, *, title: str = "nyxplug admin API"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``OPERATIONS``.

    ``examples``: ``name`` (a plugin of this host, for every ``{name}`` parameter; one
    operation's own as ``"OPERATION_ID.name"``; ``version`` and ``action`` likewise) and
    request bodies by operation id (``installPlugin``...) - shown to readers and used by
    conformance tools.
    """
    from .. import __version__

    examples = dict(examples or {})
    types: list[Any] = [Problem]
    for op in OPERATIONS:
        types += [op.response] + ([op.body] if op.body is not None else [])
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(
            op, by_type, components, examples
        )
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "Watch and steer a running nyxplug host (`nyxplug serve --admin`). "
            "Every call but /health needs `Authorization: Bearer TOKEN`; errors are RFC 9457 "
            "problem documents.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    # Plain JSON values only (schema defaults come back as tuples): what is served.
    result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(document))
    return result


def _operation(
    op: Operation,
    by_type: Mapping[Any, Any],
    components: Mapping[str, Any],
    examples: Mapping[str, Any],
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": list(op.tags),
    }
    doc["security"] = [{"bearer": []}] if op.auth else []
    parameters = []
    for name in re.findall(r"{(\w+)}", op.path):
        parameter: dict[str, Any] = {
            "name": name, "in": "path", "required": True, "schema": dict(PATH_SCHEMAS[name]),
        }  # fmt: skip
        example = examples.get(f"{op.operation_id}.{name}", examples.get(name))
        if example is not None:
            parameter["example"] = example
        parameters.append(parameter)
    if op.query is not None:
        (query_schema,), query_components = msgspec.json.schema_components(
            [op.query], ref_template=_REF
        )
        fields = query_components[op.query.__name__]
        for field, schema in fields["properties"].items():
            parameters.append(
                {
                    "name": field,
                    "in": "query",
                    "required": field in fields.get("required", ()),
                    "schema": _query_schema(schema),
                }
            )
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        content: dict[str, Any] = {"schema": by_type[op.body]}
        if op.operation_id in examples:
            content["example"] = examples[op.operation_id]
        doc["requestBody"] = {"required": True, "content": {"application/json": content}}
    responses: dict[str, Any] = {
        str(op.status): {
            "description": "Done",
            "content": {"application/json": {"schema": by_type[op.response]}},
        }
    }
    for status, type_name in op.extra_responses.items():
        responses[str(status)] = {
            "description": _REASONS.get(status, "See the body"),
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=type_name)}}},
        }
    for status in problem_statuses(op):
        responses.setdefault(
            str(status),
            {
                "description": _REASONS[status],
                "content": {PROBLEM_TYPE: {"schema": by_type[Problem]}},
            },
        )
    doc["responses"] = responses
    return doc


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query field's schema without ``null`` (absent means default in a query string)."""
    if "anyOf" in schema:
        kept = [s for s in schema["anyOf"] if s.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}
    return schema
