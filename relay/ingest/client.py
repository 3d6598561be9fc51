"""A small webhook sender: signed POST /events over one keep-alive connection, as Stream sends.

For the demo, tests and anyone wiring a producer to the ingest; one sender per thread.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from relay.ingest.signature import sign

TIMEOUT_S = 10.0


class WebhookSender:
    """Posts signed events to one ingest. Not thread-safe: one per thread."""

    def __init__(self, url: str, secret: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._secret = secret
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, *, webhook_id: str | None = None) -> tuple[int, bytes]:
        """POST one body (an event, or a JSON array of events); return (status, answer body).

        With a `webhook_id`, a kept-alive connection the server closed meanwhile is reopened and
        the request sent again: the ingest's dedup on that id makes the resend safe.
        """
        headers = {"Content-Type": "application/json", "X-Signature": sign(body, self._secret)}
        if webhook_id is not None:
            headers["X-Webhook-Id"] = webhook_id
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=TIMEOUT_S
                )
            try:
                self._connection.request("POST", "/events", body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt == 2 or webhook_id is None:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
