"""The OpenAPI document, made true: which operations anonymous callers may use, and which role the others need."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from promptdex.settings import AnonymousAccess


def _required_role(dependant: Dependant) -> str | None:
    for sub in dependant.dependencies:
        role = getattr(sub.call, "required_role", None)
        if role is not None:
            return str(role)
        found = _required_role(sub)
        if found:
            return found
    return None


def _uses_reader(dependant: Dependant) -> bool:
    return any(getattr(sub.call, "reads", False) or _uses_reader(sub) for sub in dependant.dependencies)


def install(app: FastAPI, *, routers: list[APIRouter], anonymous: AnonymousAccess) -> None:
    """Replace `app.openapi` by one that marks optional sign-in (an empty security requirement) where it is."""
    access: dict[tuple[str, str], tuple[str | None, bool]] = {}
    for router in routers:
        router_reads = any(getattr(d.dependency, "reads", False) for d in router.dependencies)
        for route in router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                role = _required_role(route.dependant)
                reads = router_reads or _uses_reader(route.dependant)
                for method in route.methods or ():
                    access[(route.path_format, method.lower())] = (role, reads)
    plain_openapi = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain_openapi()
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                role, reads = access.get((path, method), (None, False))
                optional = (role is None and (anonymous is not AnonymousAccess.NONE or not reads)) \
                    or (role == "creator" and anonymous is AnonymousAccess.CREATE)
                if role:
                    operation["description"] = (operation.get("description", "") +
                                                f"\n\nNeeds the `{role}` role or higher.").strip()
                if optional and operation.get("security") and {} not in operation["security"]:
                    operation["security"].append({})
        app.openapi_schema = schema
        return schema

    app.openapi = document  # type: ignore[method-assign]
