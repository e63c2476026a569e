"""Typed refusals: a user's mistake, with a message that says what to do instead."""

from __future__ import annotations


class Refused(Exception):
    """A request that cannot be carried out. ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found_service(name: str) -> Refused:
    # Terraform retries a 404 on POST whose body matches "Service \S+ does not exist"; the real
    # Aiven wording is kept on purpose.
    return Refused(404, f"Service {name} does not exist")


def not_found_project(name: str) -> Refused:
    return Refused(404, f"Project {name} does not exist")
