"""HTTP ingest for webhook producers (Stream-compatible): signed events into the Redis queue.

`create_app(settings)` is the ASGI app, `serve(settings, host, port)` runs it under uvicorn.
"""

from __future__ import annotations

from relay.ingest.app import create_app
from relay.ingest.server import serve
from relay.ingest.service import Tuning

__all__ = ["Tuning", "create_app", "serve"]
