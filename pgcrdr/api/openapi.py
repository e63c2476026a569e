"""The served OpenAPI document, made to tell the truth about the API.

FastAPI generates it from the routes (their ``responses=`` and ``openapi_extra=``, see schemas.py);
this adds what it cannot know:

- the request body models (declared by reference in ``openapi_extra``: routes read bodies with
  the bounded ``json_body``, so FastAPI never sees them as parameters);
- the auth schemes, ``aivenv1 TOKEN`` (avn, Terraform) and ``Bearer TOKEN``, required on every
  operation except the public ones;
- 401/403 on every authenticated operation;
- no 422: validation errors are answered 400 (``app._invalid``);
- the clouds of this installation in the ``cloud`` enums.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from pgcrdr.api.schemas import CLOUD_ENUM_MARKER, REQUEST_MODELS, errors

# Operations anyone may call (no Authorization header needed).
PUBLIC_OPERATIONS = {
    ("post", "/v1/userauth"),
    ("get", "/v1/clouds"),
    ("get", "/v1/service_types"),
    ("get", "/v1/service_versions"),
}

SECURITY_SCHEMES = {
    "aivenv1": {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": "`Authorization: aivenv1 TOKEN`, as avn and Terraform send it",
    },
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer TOKEN`"},
}

DESCRIPTION_TAIL = """

Every error is `{"message": "...", "errors": [{"message": "...", "status": N}]}`. A method a path
does not serve is answered 405 with an `Allow` header; a body larger than 1 MiB, 413. Unknown
query parameters (Terraform's `limit`, `include_secrets`) and unknown body fields are ignored."""


def _fill_clouds(node: Any, clouds: list[str]) -> None:
    if isinstance(node, dict):
        if node.pop(CLOUD_ENUM_MARKER, False):
            node["enum"] = [*clouds, ""]
        for v in node.values():
            _fill_clouds(v, clouds)
    elif isinstance(node, list):
        for v in node:
            _fill_clouds(v, clouds)


# OpenAPI links (for readers and for stateful testing): what a create answers feeds the next calls.
_PROJECT = "/v1/project/{project}"
_SERVICE = _PROJECT + "/service/{service}"
_INTEGRATION = _PROJECT + "/integration/{integration_id}"
_TOKEN = "/v1/access_token/{token_prefix}"
LINKS: dict[tuple[str, str], tuple[dict[str, str], list[tuple[str, str]]]] = {
    ("post", "/v1/project"): (
        {"project": "$response.body#/project/project_name"},
        [("get", _PROJECT), ("get", _PROJECT + "/service"), ("post", _PROJECT + "/service"),
         ("post", _PROJECT + "/integration"), ("get", _PROJECT + "/events")],
    ),
    ("post", _PROJECT + "/service"): (
        {"project": "$request.path.project", "service": "$response.body#/service/service_name"},
        [("get", _SERVICE), ("put", _SERVICE), ("delete", _SERVICE), ("get", _SERVICE + "/integration"),
         ("get", _SERVICE + "/disaster-recovery"), ("get", _SERVICE + "/backups"), ("get", _SERVICE + "/db"),
         ("post", _SERVICE + "/db"), ("post", _SERVICE + "/user"), ("get", _SERVICE + "/tags"),
         ("put", _SERVICE + "/tags")],
    ),
    ("post", _SERVICE + "/user"): (
        {"project": "$request.path.project", "service": "$request.path.service",
         "username": "$response.body#/user/username"},
        [("get", _SERVICE + "/user/{username}")],
    ),
    ("post", _PROJECT + "/integration"): (
        {"project": "$request.path.project",
         "integration_id": "$response.body#/service_integration/service_integration_id"},
        [("get", _INTEGRATION), ("put", _INTEGRATION), ("delete", _INTEGRATION)],
    ),
    ("post", "/v1/access_token"): (
        {"token_prefix": "$response.body#/token_prefix"},
        [("put", _TOKEN), ("delete", _TOKEN)],
    ),
}


def _add_links(paths: dict[str, Any]) -> None:
    for (method, path), (values, targets) in LINKS.items():
        links = paths[path][method]["responses"]["200"].setdefault("links", {})
        for t_method, t_path in targets:
            target = paths[t_path][t_method]
            params = {k: v for k, v in values.items() if "{" + k + "}" in t_path}
            links[target["operationId"]] = {"operationId": target["operationId"], "parameters": params}


def build_openapi(app: FastAPI, clouds: list[str]) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, description=(app.description or "") + DESCRIPTION_TAIL,
                       routes=app.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                 ref_template="#/components/schemas/{model}")
    schemas.update(defs.get("$defs", {}))
    _fill_clouds(schemas, clouds)
    components["securitySchemes"] = SECURITY_SCHEMES
    _add_links(spec["paths"])
    auth_errors = {str(k): v for k, v in errors(401, 403).items()}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for response in responses.values():
                for media in response.get("content", {}).values():
                    # FastAPI merges the handlers' ``-> dict`` into the documented model: keep the model.
                    if "$ref" in media.get("schema", {}):
                        media["schema"] = {"$ref": media["schema"]["$ref"]}
            if (method, path) in PUBLIC_OPERATIONS:
                op["security"] = []
                continue
            op["security"] = [{"aivenv1": []}, {"bearer": []}]
            for code, resp in auth_errors.items():
                responses.setdefault(code, {"description": resp["description"],
                                            "content": {"application/json": {
                                                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    return spec


def install_openapi(app: FastAPI, clouds: list[str]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, clouds)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
