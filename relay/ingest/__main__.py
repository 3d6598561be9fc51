"""`python -m relay.ingest [--host H] [--port P] [--insecure-no-signature]`: parse, then serve.

Settings come from the RELAY_* variables (and .env); a configuration error exits 2 saying which
variable is wrong.
"""

from __future__ import annotations

import argparse
import sys

from relay.errors import ConfigError
from relay.ingest.server import DEFAULT_HOST, DEFAULT_PORT, serve
from relay.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.ingest", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--insecure-no-signature",
        action="store_true",
        help="accept unsigned requests when RELAY_WEBHOOK_SECRET is unset (local use only)",
    )
    parser.add_argument("--log-level", help="default: RELAY_LOG_LEVEL, else INFO")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load()
        serve(
            settings,
            args.host,
            args.port,
            insecure_no_signature=args.insecure_no_signature,
            log_level=args.log_level or settings.log_level,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
