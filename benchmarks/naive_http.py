"""The plain webhook endpoint a user writes first: check the signature, parse, `actor.send()`
per event, answer. The HTTP baseline of issue 3, feeding the naive actor.

`python -m benchmarks.naive_http --port P` (uvicorn, its defaults: uvloop and httptools when
installed, as they are here); the secret is RELAY_WEBHOOK_SECRET.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.naive_actor import publish

SECRET = os.environ["RELAY_WEBHOOK_SECRET"].encode()


async def events(request: Request) -> JSONResponse:
    body = await request.body()
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-signature", "")):
        return JSONResponse({"error": "bad signature"}, status_code=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return JSONResponse({"error": "malformed JSON"}, status_code=400)
    event_id = request.headers.get("x-webhook-id") or uuid.uuid4().hex
    publish.send(event_id, json.dumps(payload))
    return JSONResponse({"status": "enqueued", "event_id": event_id})


app = Starlette(routes=[Route("/events", events, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
