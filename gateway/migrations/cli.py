"""`tmf678-gateway migrate [--config F]`: bring the configured store's schema up to date.

The store is the configuration's `store.url` (`GATEWAY_STORE_URL` in the bundled files).
Gateways migrate at start-up too; running this first (a deployment step) keeps start-up
short and makes a failing migration stop the deployment rather than every instance.
Exit codes: 0 migrated (or already current), 2 configuration error, 3 store error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from adapters.base import BackendError
from gateway.config import DEFAULT_CONFIG, ConfigError, load_config
from gateway.store import GatewayStore


async def migrate(url: str) -> str:
    """Migrate the store at `url`; the revision it is at now."""
    store = GatewayStore(url)
    await store.open(migrate=False)
    try:
        return await store.migrate()
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tmf678-gateway migrate", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG)))
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tmf678-gateway migrate: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        revision = asyncio.run(migrate(config.store.url))
    except BackendError as exc:
        print(f"tmf678-gateway migrate: {exc.reason}", file=sys.stderr)
        return 3
    print(f"gateway store at revision {revision}")
    return 0
