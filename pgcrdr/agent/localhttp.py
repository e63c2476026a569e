"""One HTTP client for the agent's calls to its own children (etcd, Patroni REST).

``httpx.get()`` builds a new client, and with it a TLS context, on every call (tens of ms):
too slow for the demote/promote path and the converge tick. No keep-alive, so a restarted
Patroni or etcd never leaves a stale pooled connection behind.
"""

from __future__ import annotations

import httpx

LOCAL = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=5.0, trust_env=False)
