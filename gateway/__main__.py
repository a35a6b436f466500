"""`python -m gateway`: serve the API with uvicorn (HOST/PORT from the environment)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import uvicorn

from gateway.app import create_app
from gateway.config import DEFAULT_CONFIG, load_config
from gateway.logs import configure_logging
from mappings.errors import MappingSpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmf678-gateway", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG)))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8678")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        config = load_config(args.config)
    except MappingSpecError as exc:
        print(f"tmf678-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            proxy_headers=True,
        )
    )
    asyncio.run(server.serve())
    # uvicorn swallows lifespan start-up failures and just stops: report them as one.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
