from __future__ import annotations

import pytest

from tests.helpers import start_platform, stop_platform

# e2e platforms use their own port block so they never collide with component tests.
E2E_PORT_OFFSET = 3000


@pytest.fixture(scope="session")
def platform():
    """One running pgcrdr (control plane + two regions) shared by every e2e test."""
    p = start_platform(E2E_PORT_OFFSET)
    try:
        yield p
    finally:
        stop_platform(p)
