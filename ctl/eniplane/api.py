"""The agent's HTTP API for schedulers: JSON over a Unix socket, described by /openapi.json.

Contract: `create_app(ctx)` builds a FastAPI application whose every route calls ops.py, the code
behind the CLI's commands, so validation, the store transaction and the messages are the CLI's.
Mutations run through `ctx.run_change` (the agent serialises them and notes its own store
writes). A domain error becomes {"error": <the CLI's line>, "kind": <its class>} with the status
of ERROR_STATUS; a request of the wrong shape is 422 with one line per problem. /healthz and
/readyz answer from `ctx.health()`/`ctx.readiness()` ((ok, document) pairs), /metrics renders
`ctx.registry`. Each request's duration is observed in `ctx.latency` (a Histogram with method,
route and code labels), so the latency the scheduler sees is a metric too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from . import ops
from .errors import AlreadyExists, EniplaneError, InvalidInput, NotFound, UsageError

T = TypeVar("T")

# The most specific class wins (InvalidDocument is an InvalidInput, and so on).
ERROR_STATUS: tuple[tuple[type[EniplaneError], int], ...] = (
    (NotFound, 404), (AlreadyExists, 409), (InvalidInput, 400), (UsageError, 400),
    (EniplaneError, 500))


def status_of(e: EniplaneError) -> int:
    return next(code for cls, code in ERROR_STATUS if isinstance(e, cls))


@dataclass
class ApiContext:
    node: str
    run_change: Callable[[Callable[[], Any]], Any]
    health: Callable[[], tuple[bool, dict]]
    readiness: Callable[[], tuple[bool, dict]]
    registry: Any  # prometheus_client.CollectorRegistry
    latency: Any  # prometheus_client.Histogram(labels: method, route, code)


# ---- the request and response bodies -----------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttachRequest(_Body):
    subnets: list[str] = Field(min_length=1, description="One ENI per subnet.")
    security_groups: list[str] = Field(min_length=1, description="At most 5.")
    workers: list[str] = Field([], description="Place it on these workers too.")


class WorkersRequest(_Body):
    workers: list[str] = Field(min_length=1)


class Eni(BaseModel):
    id: str
    subnet: str
    address: str
    vni: int
    security_groups: list[str]
    port_range: list[int]


class ChangeResult(BaseModel):
    node_up: bool = Field(description="false: stored only; `eniplane up` (or the agent) "
                                      "applies it.")
    warnings: list[str]


class AttachResult(ChangeResult):
    function: str
    enis: list[Eni]
    workers: list[str]


class PlacementResult(ChangeResult):
    function: str
    workers: list[str] = Field(description="Where it is placed now.")


class DetachResult(ChangeResult):
    function: str


class Function(BaseModel):
    name: str
    subnets: list[str]
    security_groups: list[str]
    workers: list[str]
    enis: list[Eni]


class EniListed(Eni):
    functions: list[str]
    max_flows: int
    flow_limit: int
    flow_entries: Optional[int] = Field(description="null when the node is not up.")


class Error(BaseModel):
    error: str
    kind: str


def _changed(data: dict, rep) -> dict:
    return {**data, "node_up": rep.node_up, "warnings": list(rep.warnings)}


# ---- the application ------------------------------------------------------------------------
def create_app(ctx: ApiContext) -> FastAPI:
    errors = {code: {"model": Error} for code in (400, 404, 409, 500)}
    app = FastAPI(title="eniplane agent API", version="1",
                  description="What `eniplane function ...`, `eni list`, `flows` and `stats` do, "
                              "for schedulers; the same checks, store and messages.",
                  responses=errors)
    node = ctx.node

    @app.middleware("http")
    async def observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            ctx.latency.labels(request.method, getattr(route, "path", "unmatched"),
                               str(code)).observe(time.perf_counter() - t0)

    @app.exception_handler(EniplaneError)
    async def domain_error(_: Request, e: EniplaneError) -> JSONResponse:
        return JSONResponse({"error": str(e), "kind": type(e).__name__}, status_code=status_of(e))

    @app.exception_handler(RequestValidationError)
    async def shape_error(_: Request, e: RequestValidationError) -> JSONResponse:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return JSONResponse({"error": "\n".join(lines), "kind": "InvalidRequest"},
                            status_code=422)

    # health and metrics ----------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        ok, doc = ctx.health()
        return JSONResponse(doc, status_code=200 if ok else 503)

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        ok, doc = ctx.readiness()
        return JSONResponse(doc, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    # functions ------------------------------------------------------------------------------
    @app.post("/v1/functions/{name}/attach", response_model=AttachResult, tags=["functions"])
    def attach(name: str, body: AttachRequest) -> dict:
        """`eniplane function attach NAME --subnet ... --sg ... [--worker ...]`"""
        return _changed(*ctx.run_change(lambda: ops.attach_function(
            node, name, body.subnets, body.security_groups, body.workers)))

    @app.post("/v1/functions/{name}/detach", response_model=DetachResult, tags=["functions"])
    def detach(name: str) -> dict:
        """`eniplane function detach NAME`"""
        return _changed(*ctx.run_change(lambda: ops.detach_function(node, name)))

    @app.post("/v1/functions/{name}/place", response_model=PlacementResult, tags=["functions"])
    def place(name: str, body: WorkersRequest) -> dict:
        """`eniplane function place NAME --worker ...`"""
        return _changed(*ctx.run_change(lambda: ops.place_function(node, name, body.workers)))

    @app.post("/v1/functions/{name}/unplace", response_model=PlacementResult,
              tags=["functions"])
    def unplace(name: str, body: WorkersRequest) -> dict:
        """`eniplane function unplace NAME --worker ...`"""
        return _changed(*ctx.run_change(lambda: ops.unplace_function(node, name, body.workers)))

    @app.get("/v1/functions", response_model=list[Function], tags=["functions"])
    def functions() -> list[dict]:
        """`eniplane function list`"""
        return ops.list_functions(node)

    # ENIs, flows, counters, settings --------------------------------------------------------
    @app.get("/v1/enis", response_model=list[EniListed], tags=["datapath"])
    def enis() -> list[dict]:
        """`eniplane eni list`"""
        return ops.list_enis(node)

    @app.get("/v1/flows", tags=["datapath"])
    def flows(eni: Optional[str] = None, vpc: Optional[str] = None,
              limit: int = Query(100, ge=0, le=10_000_000),
              include_all: bool = Query(False, alias="all",
                                        description="Expired and reset flows too.")
              ) -> list[dict[str, Any]]:
        """`eniplane flows [--eni ID] [--vpc ID] [--limit N] [--all]`"""
        return ops.list_flows(node, eni, vpc, limit, include_expired=include_all)

    @app.get("/v1/stats", tags=["datapath"])
    def stats(eni: Optional[str] = None, nonzero: bool = False) -> dict[str, Any]:
        """`eniplane stats [--eni ID] [--nonzero]`"""
        return ops.stats(node, eni, nonzero)

    @app.get("/v1/settings", tags=["settings"])
    def settings() -> dict[str, Any]:
        """The node-wide settings as stored (`timeouts show`, `limits show`, `ipv4 show`) and the
        parameters of the last `up`."""
        return ops.settings(node)

    return app
