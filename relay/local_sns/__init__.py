"""A local SNS query-API endpoint that enforces SNS's real limits and records what it accepts.

For development, the demo and the benchmarks (`relay local-sns`), where moto is too lenient and
too slow (FACTS §6). Modules: `protocol` (query in, XML out), `rules` (what SNS accepts in one
message), `faults` (injected failures), `state` (topics, records, counters), `app` (the ASGI
app) and `server` (running it).
"""

from __future__ import annotations

from relay.local_sns.app import LocalSnsApp
from relay.local_sns.faults import FAULT_MODES, fault_spec
from relay.local_sns.server import DEFAULT_HOST, DEFAULT_PORT, LocalSnsClient, LocalSnsServer, serve
from relay.local_sns.state import LocalSnsState

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FAULT_MODES",
    "LocalSnsApp",
    "LocalSnsClient",
    "LocalSnsServer",
    "LocalSnsState",
    "fault_spec",
    "serve",
]
