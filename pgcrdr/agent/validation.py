"""Checks of a ClusterSpec beyond its pydantic types, before the agent accepts it. Pure."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pgcrdr.agentapi.models import ClusterSpec, StandbySource
from pgcrdr.agent.patroni import MANAGED_PARAMETERS, RESERVED_ROLES

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_PARAM = re.compile(r"^[a-z_][a-z0-9_.]{0,62}$")
_SLOT = re.compile(r"^[a-z0-9_]{1,63}$")  # PostgreSQL's rule for replication slot names
_HOST = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")


def spec_problems(spec: ClusterSpec, cluster_in_path: str) -> list[str]:
    """Everything wrong with ``spec``, each as a sentence; empty when it can be accepted."""
    problems: list[str] = []
    if spec.cluster != cluster_in_path:
        problems.append(f"cluster name in the body ({spec.cluster!r}) differs from the URL ({cluster_in_path!r})")
    for field in ("superuser_password", "replication_password", "rewind_password"):
        value = getattr(spec, field)
        if not value or "\n" in value or "\0" in value:
            problems.append(f"{field} must be a non-empty single line")
    seen: set[str] = set()
    primaries = 0
    for u in spec.users:
        if not _IDENT.match(u.username):
            problems.append(f"invalid username {u.username!r}")
        elif u.username.lower() in RESERVED_ROLES or u.username.lower().startswith("pg_"):
            problems.append(f"username {u.username!r} is reserved")
        if u.username in seen:
            problems.append(f"username {u.username!r} given twice")
        seen.add(u.username)
        if not u.password or "\0" in u.password:
            problems.append(f"user {u.username!r} needs a non-empty password")
        primaries += u.kind == "primary"
    if primaries > 1:
        problems.append("at most one user may be of kind 'primary'")
    for db in spec.databases:
        if not _IDENT.match(db):
            problems.append(f"invalid database name {db!r}")
        elif db in ("postgres", "template0", "template1"):
            problems.append(f"database name {db!r} is reserved")
    if len(set(spec.databases)) != len(spec.databases):
        problems.append("a database is listed twice")
    for key, value in spec.pg_parameters.items():
        if not _PARAM.match(key):
            problems.append(f"invalid parameter name {key!r}")
        elif key in MANAGED_PARAMETERS:
            problems.append(f"parameter {key!r} is managed by pgcrdr and cannot be set")
        if "\n" in value or "\0" in value:
            problems.append(f"parameter {key!r} must be a single line")
    problems += _crdr_problems(spec)
    problems += _tls_problems(spec)
    return problems


def _crdr_problems(spec: ClusterSpec) -> list[str]:
    problems: list[str] = []
    for slot in spec.permanent_slots:
        if not _SLOT.match(slot):
            problems.append(f"invalid slot name {slot!r} (lower-case letters, digits and _ only)")
    if len(set(spec.permanent_slots)) != len(spec.permanent_slots):
        problems.append("a permanent slot is listed twice")
    if spec.standby_of is not None:
        problems += source_problems(spec.standby_of)
    return problems


def source_problems(src: StandbySource) -> list[str]:
    """What is wrong with a standby source address (empty when it can be used). Pure."""
    problems: list[str] = []
    if not _HOST.match(src.host):
        problems.append(f"invalid standby_of.host {src.host!r}")
    if not 1 <= src.port <= 65535:
        problems.append(f"invalid standby_of.port {src.port}")
    if src.primary_slot_name is not None and not _SLOT.match(src.primary_slot_name):
        problems.append(f"invalid standby_of.primary_slot_name {src.primary_slot_name!r}")
    return problems


def _tls_problems(spec: ClusterSpec) -> list[str]:
    problems: list[str] = []
    try:
        cert = x509.load_pem_x509_certificate(spec.tls.cert_pem.encode())
    except ValueError:
        return ["tls.cert_pem is not a PEM certificate"]
    try:
        x509.load_pem_x509_certificates(spec.tls.ca_cert_pem.encode())
    except ValueError:
        problems.append("tls.ca_cert_pem is not a PEM certificate")
    try:
        key = serialization.load_pem_private_key(spec.tls.key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return problems + ["tls.key_pem is not an unencrypted PEM private key"]
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        problems.append("tls.key_pem does not match tls.cert_pem")
    return problems
