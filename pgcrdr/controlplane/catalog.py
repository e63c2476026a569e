"""What can be ordered: service types, plans, clouds, integration types. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

from pgcrdr.config import RegionConfig

PG_VERSIONS = ["15"]  # what this machine's PostgreSQL binaries provide
DEFAULT_PG_VERSION = "15"


@dataclass(frozen=True)
class Plan:
    name: str
    node_count: int
    cpu: int
    memory_mb: int
    disk_space_mb: int
    price_usd_hour: str
    backup_max_count: int

    @property
    def title(self) -> str:
        tier = self.name.split("-")[0].capitalize()
        return f"{tier}-{self.name.split('-')[1]}"


PLANS: dict[str, Plan] = {
    p.name: p
    for p in [
        Plan("startup-4", 1, 2, 4096, 81920, "0.137", 2),
        Plan("startup-8", 1, 2, 8192, 179200, "0.274", 2),
        Plan("business-4", 2, 2, 4096, 81920, "0.342", 14),
        Plan("business-8", 2, 2, 8192, 179200, "0.685", 14),
        Plan("premium-4", 3, 2, 4096, 81920, "0.548", 30),
        Plan("premium-8", 3, 2, 8192, 179200, "1.096", 30),
    ]
}

# user_config keys accepted for pg services; anything else is refused rather than ignored.
PG_USER_CONFIG_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "pg_version": {"type": "string", "enum": PG_VERSIONS, "title": "PostgreSQL major version"},
        "ip_filter": {
            "type": "array",
            "items": {"type": "string"},
            "title": "IP filter",
            "description": "Allowed client networks (informational on local regions)",
        },
        "admin_username": {"type": "string", "title": "Custom username for the admin role"},
        "service_to_fork_from": {
            "type": "string", "title": "Name of another service to fork from",
            "description": "Creates the service from that service's backups (at creation only)",
        },
        "project_to_fork_from": {
            "type": "string", "title": "Name of another project to fork a service from",
            "description": "With service_to_fork_from, when the source is in another project",
        },
        "recovery_target_time": {
            "type": "string", "title": "Recovery target time when forking a service",
            "description": "RFC 3339; from the end of the source's oldest backup to now (default: now)",
        },
        "pg": {
            "type": "object",
            "title": "postgresql.conf settings",
            "properties": {
                "max_connections": {"type": "integer", "minimum": 25, "maximum": 1000},
                "work_mem": {"type": "integer", "minimum": 1, "maximum": 1024},
            },
        },
    },
}

SERVICE_TYPES: dict[str, dict] = {
    "pg": {
        "description": "PostgreSQL - Object-Relational Database Management System",
        "default_version": DEFAULT_PG_VERSION,
        "latest_available_version": PG_VERSIONS[-1],
        "user_config_schema": PG_USER_CONFIG_SCHEMA,
    }
}


def plan_json(plan: Plan, regions: list[RegionConfig]) -> dict:
    return {
        "service_type": "pg",
        "service_plan": plan.name,
        "node_count": plan.node_count,
        "max_memory_percent": None,
        "shard_count": None,
        "backup_config": {"interval": 24, "max_count": plan.backup_max_count, "recovery_mode": "pitr"},
        "regions": {
            r.cloud_name: {
                "price_usd": plan.price_usd_hour,
                "node_memory_mb": plan.memory_mb,
                "node_cpu_count": plan.cpu,
                "disk_space_mb": plan.disk_space_mb,
                "disk_space_cap_mb": plan.disk_space_mb * 5,
            }
            for r in regions
        },
    }


def plan_detail_json(plan: Plan) -> dict:
    """Unwrapped body of GET service-types/pg/plans/{plan} (read by Terraform)."""
    return {
        "service_type": "pg",
        "service_plan": plan.name,
        "disk_space_mb": plan.disk_space_mb,
        "disk_space_cap_mb": plan.disk_space_mb * 5,
        "disk_space_step_mb": 10240,
        "node_count": plan.node_count,
        "backup_config": {"interval": 24, "max_count": plan.backup_max_count, "recovery_mode": "pitr"},
    }


def service_types_json(regions: list[RegionConfig]) -> dict:
    return {
        name: {**st, "service_plans": [plan_json(p, regions) for p in PLANS.values()]}
        for name, st in SERVICE_TYPES.items()
    }


def cloud_json(region: RegionConfig) -> dict:
    return {
        "cloud_name": region.cloud_name,
        "cloud_description": region.description,
        "geo_latitude": region.geo_latitude,
        "geo_longitude": region.geo_longitude,
        "geo_region": region.geo_region,
        "provider": "local",
        "provider_description": "Local region run by pgcrdr",
    }


INTEGRATION_TYPES = [
    {
        "integration_type": "disaster_recovery",
        "dest_description": "Passive (recovery) PostgreSQL service",
        "dest_service_type": "pg",
        "dest_service_types": ["pg"],
        "source_description": "Active PostgreSQL service",
        "source_service_types": ["pg"],
        "user_config_schema": {"type": "object", "properties": {}},
    }
]
