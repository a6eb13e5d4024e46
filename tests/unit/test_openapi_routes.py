"""The OpenAPI table is the one list of paths: routes are built from it, by operation id."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from supervisor.http.openapi import OPERATIONS, openapi_document, operation_routes


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def test_routes_take_the_tables_path_and_method() -> None:
    routes = operation_routes({"createJob": _ok, "getJob": _ok})
    assert [(r.path, r.methods) for r in routes] == [("/v1/jobs", {"POST"}), ("/v1/jobs/{job_id}", {"GET", "HEAD"})]


def test_a_handler_for_an_operation_the_table_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match=r"the OpenAPI table does not list: \['deleteJob'\]"):
        operation_routes({"createJob": _ok, "deleteJob": _ok})


def test_the_document_describes_each_operation_once() -> None:
    doc = openapi_document()
    documented = [(path, method, op["operationId"]) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert sorted(documented) == sorted((op.path, op.method, op.op_id) for op in OPERATIONS)
    assert len({op.op_id for op in OPERATIONS}) == len(OPERATIONS)
