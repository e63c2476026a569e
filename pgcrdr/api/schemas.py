"""What the OpenAPI spec says the API takes and gives, as pydantic models with Aiven's field names.

Request bodies are still read by ``bodies.json_body`` (bounded) and their meaning is checked by the
control plane (``ServiceManager``, ``crdr``), whose messages users see. The models here add two
things: the spec documents every body (``body_spec``), and the fields the control plane accepts
without looking at them (``disk_space_mb``, ``static_ips``, ``tech_emails`` ...) are type-checked
at the edge (``check_body``). A field the control plane checks itself is declared with
:func:`checked_elsewhere`: its JSON schema says exactly what the control plane accepts, and the
model does not check it again, so the control plane's message is the one the user reads.

Every model takes unknown fields (``extra="allow"``): avn and Terraform send more than we model
(see ../shared/docs/api-contract.md), and newer clients will send more still.

Response models are loose on purpose (``extra="allow"``): they document the wrapper keys and the
fields clients read; the dicts built by ``serialize.py`` stay the source of the answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, WithJsonSchema,
)

from pgcrdr.controlplane import catalog, crdr
from pgcrdr.controlplane.errors import Refused, clip
from pgcrdr.controlplane.services import (
    DB_NAME_RE, DOWS, PROJECT_NAME_RE, RESERVED_DBS, RESERVED_ROLES, SERVICE_NAME_RE, TIME_RE, USER_NAME_RE,
)
from pgcrdr.controlplane.transitions import ROLES

# The patterns the control plane applies (with fullmatch), which are also valid ECMA regexes.
SERVICE_NAME_PATTERN = SERVICE_NAME_RE.pattern
PROJECT_NAME_PATTERN = PROJECT_NAME_RE.pattern
DB_NAME_PATTERN = DB_NAME_RE.pattern
USER_NAME_PATTERN = USER_NAME_RE.pattern
TIME_PATTERN = TIME_RE.pattern

# Filled in by the app with the clouds of its settings (openapi.py); a placeholder here.
CLOUD_ENUM_MARKER = "x-pgcrdr-clouds"


def checked_elsewhere(schema: dict[str, Any]) -> WithJsonSchema:
    """For a field the control plane validates with its own message, ``Annotated[Any,
    checked_elsewhere(schema)]``: any value at the edge, ``schema`` in the spec."""
    return WithJsonSchema(schema)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _integral(v: int | float) -> int:
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("Input should be a valid integer")
        return int(v)
    return v


# A JSON integer: 5 or 5.0 (JSON Schema's "integer" admits both), never "5", true or 5.5.
JsonInt = Annotated[StrictInt | StrictFloat, AfterValidator(_integral), WithJsonSchema({"type": "integer"})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


# --- request bodies ------------------------------------------------------------------------

class UserAuthRequest(_Body):
    """POST /v1/userauth (avn user login)."""

    email: Annotated[Any, checked_elsewhere({"type": "string", "description": "Login email"})]
    password: Annotated[Any, checked_elsewhere({"type": "string", "format": "password"})]
    otp: str | None = Field(None, description="One-time password (not used by pgcrdr)")
    tenant: str | None = Field(None, description="Tenant (not used by pgcrdr)")


class ProjectCreateRequest(_Body):
    """POST /v1/project."""

    project: Annotated[Any, checked_elsewhere({
        "type": "string", "pattern": PROJECT_NAME_PATTERN, "description": "Project name"})]


PG_VERSION_SCHEMA = {"enum": [*catalog.PG_VERSIONS, *(int(v) for v in catalog.PG_VERSIONS)],
                     "description": "PostgreSQL major version (a string; an integer is accepted too)"}

# user_config as the control plane checks it (services._check_user_config): the catalog's schema,
# which avn reads, made exact.
USER_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "pg settings; merged into the stored user_config on update ({} or null: no change)",
    "properties": {
        "pg_version": PG_VERSION_SCHEMA,
        "ip_filter": {"type": "array", "items": {"type": "string"}},
        "admin_username": {"type": "string", "pattern": USER_NAME_PATTERN, "not": {"enum": sorted(RESERVED_ROLES)},
                           "description": "Name of the admin role (at creation only)"},
        "pg": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "max_connections": {"type": "integer", "const": 100,
                                    "description": "100 on every pgcrdr plan; cannot be changed yet"},
                "work_mem": {"type": "integer", "minimum": 1, "maximum": 1024},
            },
        },
    },
}

MAINTENANCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dow": _nullable({"type": "string", "enum": sorted(DOWS)}),
        "time": _nullable({"type": "string", "pattern": TIME_PATTERN}),
    },
}


class TechEmail(_Body):
    email: str


class ServiceIntegrationItem(_Body):
    integration_type: Literal["disaster_recovery"]
    source_service: str = Field(description="The primary service this service is a recovery copy of")
    dest_service: str | None = None
    source_project: str | None = None
    dest_project: str | None = None
    source_endpoint_id: str | None = None
    dest_endpoint_id: str | None = None
    user_config: dict[str, Any] | None = None


SERVICE_INTEGRATIONS_SCHEMA: dict[str, Any] = _nullable({
    "type": "array", "maxItems": 1, "items": {"$ref": "#/components/schemas/ServiceIntegrationItem"},
    "description": "At most one disaster_recovery item: the new service is the recovery copy of source_service",
})


class ServiceCreateRequest(_Body):
    """POST /v1/project/{project}/service (Aiven's ServiceCreateRequestBody)."""

    service_name: Annotated[Any, checked_elsewhere({"type": "string", "pattern": SERVICE_NAME_PATTERN})]
    service_type: Annotated[Any, checked_elsewhere({"type": "string", "enum": list(catalog.SERVICE_TYPES)})]
    plan: Annotated[Any, checked_elsewhere({"type": "string", "enum": list(catalog.PLANS)})]
    cloud: Annotated[Any, checked_elsewhere(_nullable({
        "type": "string", CLOUD_ENUM_MARKER: True,
        "description": "A cloud of GET /v1/clouds; null or '': the project's default cloud"}))] = None
    user_config: Annotated[Any, checked_elsewhere(_nullable(USER_CONFIG_SCHEMA))] = None
    maintenance: Annotated[Any, checked_elsewhere(_nullable(MAINTENANCE_SCHEMA))] = None
    service_integrations: Annotated[Any, checked_elsewhere(SERVICE_INTEGRATIONS_SCHEMA)] = None
    termination_protection: Annotated[Any, checked_elsewhere({"type": "boolean"})] = False
    tags: dict[str, str] | None = None
    disk_space_mb: JsonInt | None = Field(None, description="Accepted and ignored: the plan's disk is used")
    project_vpc_id: str | None = Field(None, description="Accepted and ignored (no VPCs)")
    static_ips: list[str] | None = Field(None, description="Accepted and ignored")
    tech_emails: list[TechEmail] | None = None
    cmk_id: str | None = Field(None, description="Accepted and ignored")
    group_name: str | None = Field(None, description="Accepted and ignored")
    copy_tags: StrictBool | None = Field(None, description="Accepted and ignored")
    pgcrdr_drill_of: Annotated[Any, checked_elsewhere(_nullable({
        "type": "string", "description": "pgcrdr extension (pgcrdr drill): this fork rehearses the pair whose "
                                         "primary is named here; it must be forked from that service. A pair "
                                         "of such forks is deleted as a whole, in any state"}))] = None


class ServiceUpdateRequest(_Body):
    """PUT /v1/project/{project}/service/{service} (Aiven's ServiceUpdateRequestBody plus CRDR)."""

    # failback_source (a pgcrdr extension) goes only with disaster_recovery_role passive.
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["failback_source"], "properties": {"failback_source": {"type": "string"}}},
        "then": {"required": ["disaster_recovery_role"],
                 "properties": {"disaster_recovery_role": {"const": "passive"}}},
    })

    disaster_recovery_role: Annotated[Any, checked_elsewhere(_nullable({"type": "string", "enum": list(ROLES)}))] = None
    disaster_recovery_promote_to_master: StrictBool | None = Field(
        None, description="Older spelling: true is disaster_recovery_role active")
    failback_source: Annotated[Any, checked_elsewhere(_nullable({
        "type": "string", "enum": list(crdr.FAILBACK_SOURCES),
        "description": "pgcrdr extension: how a failed primary is restored (with role passive)"}))] = None
    plan: Annotated[Any, checked_elsewhere(_nullable({"type": "string", "enum": list(catalog.PLANS)}))] = None
    cloud: Annotated[Any, checked_elsewhere(_nullable({
        "type": "string", CLOUD_ENUM_MARKER: True,
        "description": "A service cannot move; only its own cloud is accepted"}))] = None
    powered: Annotated[Any, checked_elsewhere(_nullable({"type": "boolean"}))] = None
    user_config: Annotated[Any, checked_elsewhere(_nullable(USER_CONFIG_SCHEMA))] = None
    maintenance: Annotated[Any, checked_elsewhere(_nullable(MAINTENANCE_SCHEMA))] = None
    termination_protection: Annotated[Any, checked_elsewhere(_nullable({"type": "boolean"}))] = None
    tech_emails: list[TechEmail] | None = None
    disk_space_mb: JsonInt | None = Field(None, description="Accepted and ignored")
    project_vpc_id: str | None = Field(None, description="Accepted and ignored")
    cmk_id: str | None = None
    group_name: str | None = None
    karapace: StrictBool | None = None
    schema_registry_authz: StrictBool | None = None


PATH_PROJECT_SCHEMA = {"type": "string", "description": "The path's project"}


class IntegrationCreateRequest(_Body):
    """POST /v1/project/{project}/integration (only disaster_recovery)."""

    integration_type: Annotated[Any, checked_elsewhere({"type": "string", "enum": ["disaster_recovery"]})]
    source_service: Annotated[Any, checked_elsewhere({"type": "string", "description": "The active service"})]
    dest_service: Annotated[Any, checked_elsewhere({"type": "string", "description": "The passive (recovery) service"})]
    source_project: Annotated[Any, checked_elsewhere(_nullable(PATH_PROJECT_SCHEMA))] = None
    dest_project: Annotated[Any, checked_elsewhere(_nullable(PATH_PROJECT_SCHEMA))] = None
    source_endpoint_id: str | None = None
    dest_endpoint_id: str | None = None
    user_config: dict[str, Any] | None = None


class IntegrationUpdateRequest(_Body):
    """PUT /v1/project/{project}/integration/{id} (Terraform sends {"user_config": {}})."""

    user_config: Annotated[Any, checked_elsewhere(_nullable({
        "type": "object", "maxProperties": 0, "description": "disaster_recovery has no user config"}))] = None


class DatabaseCreateRequest(_Body):
    database: Annotated[Any, checked_elsewhere({
        "type": "string", "pattern": DB_NAME_PATTERN, "not": {"enum": sorted(RESERVED_DBS)}})]
    lc_collate: str | None = None
    lc_ctype: str | None = None


class ServiceUserCreateRequest(_Body):
    username: Annotated[Any, checked_elsewhere({
        "type": "string", "pattern": USER_NAME_PATTERN, "not": {"enum": sorted(RESERVED_ROLES)}})]
    authentication: str | None = None
    access_control: dict[str, Any] | None = None


class TagsUpdateRequest(_Body):
    tags: Annotated[Any, checked_elsewhere({"type": "object", "additionalProperties": {"type": "string"}})] = None


# Access tokens (tokens.py checks these bodies itself, with its own messages).
TOKEN_MAX_AGE_LIMIT_S = 10 * 365 * 24 * 3600
TOKEN_DESCRIPTION_MAX_CHARS = 1000
# A character that is not blank, the same in the schema's (ECMA) regex and in Python's: their \s
# differ (Python's also has U+001C-U+001F and U+0085, ECMA's U+FEFF), so both are spelled out.
NOT_BLANK = r"[^\s\u001c-\u001f\u0085\ufeff]"
TOKEN_DESCRIPTION_SCHEMA: dict[str, Any] = {
    "type": "string", "minLength": 1, "maxLength": TOKEN_DESCRIPTION_MAX_CHARS, "pattern": NOT_BLANK,
    "description": "What the token is for (not only whitespace)",
}


class AccessTokenCreateRequest(_Body):
    """POST /v1/access_token (avn user access-token create)."""

    # extend_when_used true needs a max_age_seconds: a token that never expires has nothing to extend.
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["extend_when_used"], "properties": {"extend_when_used": {"const": True}}},
        "then": {"required": ["max_age_seconds"], "properties": {"max_age_seconds": {"type": "integer"}}},
    })

    description: Annotated[Any, checked_elsewhere(TOKEN_DESCRIPTION_SCHEMA)]
    max_age_seconds: Annotated[Any, checked_elsewhere(_nullable({
        "type": "integer", "minimum": 1, "maximum": TOKEN_MAX_AGE_LIMIT_S,
        "description": "The token expires this long after its creation (or its last use, with "
                       "extend_when_used); null: never"}))] = None
    extend_when_used: Annotated[Any, checked_elsewhere(_nullable({
        "type": "boolean", "description": "Each use moves the expiry to max_age_seconds later (null: false)"}))] = False


class AccessTokenUpdateRequest(_Body):
    """PUT /v1/access_token/{token_prefix} (avn user access-token update)."""

    description: Annotated[Any, checked_elsewhere(TOKEN_DESCRIPTION_SCHEMA)]


AUTOMATIC_FAILOVER_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["enabled"],
    "description": "pgcrdr extension: fail the pair over without a request when its active region has not "
                   "answered for grace_seconds and its last known lag is at most max_data_loss_bytes "
                   "(needs writer leases: a deployment with a global etcd)",
    "properties": {
        "enabled": {"type": "boolean"},
        "grace_seconds": {"type": "number", "minimum": 1, "maximum": 86400},
        "max_data_loss_bytes": {"type": "integer", "minimum": 0, "maximum": 2 ** 40},
    },
}


class DisasterRecoveryUpdateRequest(_Body):
    """PUT .../disaster-recovery (pgcrdr extension): the pair's automatic failover."""

    model_config = ConfigDict(extra="forbid", strict=True)
    automatic_failover: Annotated[Any, checked_elsewhere(AUTOMATIC_FAILOVER_SCHEMA)]


class DrillCreateRequest(_Body):
    """POST .../disaster-recovery/drills (pgcrdr extension): keep a drill's report with the pair
    (``pgcrdr drill`` sends it when the drill ends)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["switchover", "failover"]
    in_place: StrictBool
    state: Literal["done", "failed", "interrupted"]
    report: dict[str, Any]


REQUEST_MODELS: list[type[BaseModel]] = [
    UserAuthRequest, ProjectCreateRequest, ServiceCreateRequest, ServiceUpdateRequest, IntegrationCreateRequest,
    IntegrationUpdateRequest, DatabaseCreateRequest, ServiceUserCreateRequest, TagsUpdateRequest,
    ServiceIntegrationItem, AccessTokenCreateRequest, AccessTokenUpdateRequest, DisasterRecoveryUpdateRequest,
    DrillCreateRequest,
]


def body_spec(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the JSON request body (the route reads it with json_body)."""
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def check_body(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """Type-check the fields only the model knows; the body goes on unchanged (a 400 names the field)."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(clip(x) for x in e.get("loc", ()))
            parts.append(f"{clip(loc or 'body')}: {clip(e.get('msg'))}")
        raise Refused(400, "Invalid request: " + "; ".join(parts)) from None
    return body


# --- errors --------------------------------------------------------------------------------

class ErrorItem(BaseModel):
    message: str
    status: int


class ErrorBody(BaseModel):
    """Every error: ``{"message": ..., "errors": [{"message": ..., "status": N}]}``."""

    message: str
    errors: list[ErrorItem]


ERROR_DESCRIPTIONS = {
    400: "Invalid request (malformed JSON, a wrong field, or a value pgcrdr does not support)",
    401: "No or unsupported Authorization header",
    403: "Invalid token, wrong login, or a protected service",
    404: "The project, service, integration, user or access token does not exist",
    409: "Conflicts with the current state (already exists, an operation is running, powered off, "
         "a token prefix shared by several tokens ...)",
    413: "Request body larger than 1 MiB",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route can answer."""
    return {c: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[c]} for c in codes}


# --- responses (loose: the documented keys; serialize.py builds the answers) ----------------

class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Out):
    message: str


class Project(_Out):
    project_name: str
    account_id: str | None
    default_cloud: str
    billing_extra_text: str | None
    card_info: dict[str, Any] | None
    create_time: str


class ProjectResponse(_Out):
    project: Project


class ProjectListResponse(_Out):
    projects: list[Project]
    project_membership: dict[str, str]
    project_memberships: dict[str, list[str]]


class User(_Out):
    user: str | None
    user_email: str | None
    state: str


class UserAuthResponse(_Out):
    token: str
    state: str
    user: User


class MeResponse(_Out):
    user: User


class Cloud(_Out):
    cloud_name: str
    cloud_description: str
    geo_latitude: float
    geo_longitude: float
    geo_region: str
    provider: str
    provider_description: str


class CloudsResponse(_Out):
    clouds: list[Cloud]


class ServiceTypesResponse(_Out):
    service_types: dict[str, dict[str, Any]]


class ServiceTypeResponse(_Out):
    description: str
    user_config_schema: dict[str, Any]


class PlanResponse(_Out):
    service_type: str
    service_plan: str
    disk_space_mb: int
    node_count: int


class ServiceVersionsResponse(_Out):
    service_versions: list[dict[str, Any]]


class VpcsResponse(_Out):
    vpcs: list[dict[str, Any]]


class StaticIpsResponse(_Out):
    static_ips: list[dict[str, Any]]


class IntegrationTypesResponse(_Out):
    integration_types: list[dict[str, Any]]


class CertificateResponse(_Out):
    certificate: str


class Integration(_Out):
    service_integration_id: str | None
    integration_type: str
    source_project: str
    source_service: str
    source_endpoint_id: str | None
    dest_project: str
    dest_service: str | None
    dest_endpoint_id: str | None
    active: bool
    enabled: bool
    description: str
    user_config: dict[str, Any]


class IntegrationResponse(_Out):
    service_integration: Integration


class IntegrationListResponse(_Out):
    service_integrations: list[Integration]


class Backup(_Out):
    backup_name: str
    backup_time: str | None
    data_size: int | None
    storage_location: str


class BackupsResponse(_Out):
    backups: list[Backup]
    backup_progress: dict[str, Any] | None = None
    pitr: dict[str, Any] | None = None


class Component(_Out):
    component: str
    host: str
    port: int
    route: Literal["dynamic", "private", "privatelink", "public"]
    usage: Literal["disaster_recovery", "ha_replica", "primary", "replica"]


class ServiceUser(_Out):
    username: str
    password: str | None
    type: str


class Service(_Out):
    """Aiven's ServiceGetOut, as avn and Terraform read it (api-contract.md section 3.3)."""

    service_name: str
    service_type: str
    plan: str
    cloud_name: str
    state: Literal["POWEROFF", "REBALANCING", "REBUILDING", "RUNNING"]
    disaster_recovery_role: Literal["active", "passive", "failed"] | None
    create_time: str
    update_time: str
    termination_protection: bool
    disk_space_mb: int
    node_count: int
    user_config: dict[str, Any]
    service_uri: str
    service_uri_params: dict[str, str]
    connection_info: dict[str, Any]
    components: list[Component]
    users: list[ServiceUser]
    backups: list[Backup]
    node_states: list[dict[str, Any]]
    maintenance: dict[str, Any]
    metadata: dict[str, Any]
    service_integrations: list[Integration]
    tags: dict[str, str]


class ServiceResponse(_Out):
    service: Service


class ServiceListResponse(_Out):
    services: list[Service]


class DatabasesResponse(_Out):
    databases: list[dict[str, Any]]


class ServiceUserResponse(_Out):
    user: ServiceUser


class TagsResponse(_Out):
    tags: dict[str, str]


class DisasterRecoveryStatus(_Out):
    """pgcrdr's own shape (the endpoint is not in Aiven's spec; api-contract.md #26)."""

    service_name: str
    disaster_recovery_role: Literal["active", "passive", "failed"] | None
    peer_service: str | None
    integration_id: str | None
    state: str
    replication: dict[str, Any]
    operation: dict[str, Any] | None
    history: list[dict[str, Any]]
    automatic_failover: dict[str, Any] | None = None
    drills: list[dict[str, Any]] = Field(default_factory=list)


class Drill(_Out):
    """A drill's record (pgcrdr drill): kept with the pair, apart from its operations' history."""

    drill_id: str
    pair: str
    kind: Literal["switchover", "failover"]
    in_place: bool
    state: Literal["done", "failed", "interrupted"]
    create_time: str
    report: dict[str, Any]


class DrillListResponse(_Out):
    drills: list[Drill]


class DrillResponse(_Out):
    drill: Drill


class Event(_Out):
    """One entry of a project's event log (the fields avn events prints)."""

    id: str
    time: str
    actor: str
    event_type: str
    service_name: str | None
    event_desc: str


class EventsResponse(_Out):
    events: list[Event]


class AccessToken(_Out):
    """An access token as listed: never the token itself, only its prefix."""

    token_prefix: str | None
    description: str
    create_time: str
    created_manually: bool
    currently_active: bool
    expiry_time: str | None
    max_age_seconds: int | None
    extend_when_used: bool
    last_used_time: str | None
    last_ip: str | None
    last_user_agent: str | None
    last_user_agent_human_readable: str | None
    scopes: list[str] | None


class AccessTokenCreateResponse(AccessToken):
    """The only answer that carries the token (avn reads the fields at the top level)."""

    full_token: str


class AccessTokenListResponse(_Out):
    tokens: list[AccessToken]


def ok(model: type[BaseModel], *codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: its 200 body and the errors it can answer."""
    return {200: {"model": model, "description": "OK"}, **errors(*codes)}
