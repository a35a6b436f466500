"""`tmf678-gateway [serve] [--config F]`: serve the API with uvicorn (HOST/PORT from the
environment); `tmf678-gateway token --scope ... --accounts ...`: a signed token for
trying the API locally (see gateway/devtoken.py); `tmf678-gateway migrate`: the store's
schema brought up to date (gateway/migrations/cli.py).

SIGTERM stops accepting connections, lets the requests in flight finish (at most
`_DRAIN_SECONDS`), then stops the background work, which hands its leases back to the
store, so another instance takes the work over at once.

Back ends are opened and mappings compiled before the server binds its port, so a
wrong configuration stops with one clear line (file, place, reason): exit code 2 for
the configuration file, 3 for what start-up finds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import os
import signal
import sys
from contextlib import AsyncExitStack

import structlog
import uvicorn

from gateway import devtoken
from gateway.app import StartupError, build_app, open_services
from gateway.config import DEFAULT_CONFIG, ConfigError, GatewayConfig, load_config
from gateway.logs import configure_logging
from gateway.migrations import cli as migrations_cli
from gateway.resources import API_PREFIX
from gateway.server import TmfHttpToolsProtocol

#: How long SIGTERM waits for requests in flight before closing their connections.
_DRAIN_SECONDS = 30


def exposure_refusal(config: GatewayConfig, host: str) -> str | None:
    """Why the gateway must not serve on `host` as configured (None when it may).

    The demo's shortcuts are for this machine only. Anonymous mode (no `auth`) lets every
    caller read and change every customer's bills, so beyond loopback it takes an
    explicit `auth.anonymous_beyond_loopback: true`; and `href`s and Locations come from
    the Host header unless `api.public_base_url` is set, so beyond loopback one of that
    or `api.allowed_hosts` must say which hosts are real.
    """
    if _loopback(host):
        return None
    if not (config.auth.enabled or config.auth.anonymous_beyond_loopback):
        return (
            f"{config.source}: auth is off and {host!r} is not a loopback address; enable"
            " auth (see config/secure.yaml) or set auth.anonymous_beyond_loopback: true"
        )
    if not (config.api.public_base_url or config.api.allowed_hosts):
        return (
            f"{config.source}: {host!r} is not a loopback address: set api.public_base_url"
            " (PUBLIC_BASE_URL) or api.allowed_hosts, so no Host header decides the hrefs"
        )
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(config: GatewayConfig, host: str, port: int) -> int:
    refusal = exposure_refusal(config, host)
    if refusal is not None:
        print(f"tmf678-gateway: cannot start: {refusal}", file=sys.stderr)
        return 3
    if not config.auth.enabled:
        structlog.get_logger("gateway").warning(
            "anonymous_mode", detail="auth is off: every caller has every scope and account"
        )
    root = config.api.public_base_url or f"http://{host}:{port}"
    async with AsyncExitStack() as stack:
        try:
            services = await open_services(config, stack, root + API_PREFIX)
        except StartupError as exc:
            print(f"tmf678-gateway: cannot start: {exc}", file=sys.stderr)
            return 3
        app = build_app(config, services)
        # Start-up built a large heap (OAS schemas, WSDLs, compiled mappings) that lives
        # as long as the process: out of the collector's sight, every collection a
        # page of records triggers stays small.
        gc.collect()
        gc.freeze()
        structlog.get_logger("gateway").info("gateway_listening", host=host, port=port)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",  # opened above, closed by the exit stack
                proxy_headers=True,
                server_header=False,  # no "server: uvicorn" banner
                # httptools, with its own refusals as TMF Errors; header sizes are
                # bounded by gateway/guards.py (431), as httptools has no such option.
                http=TmfHttpToolsProtocol,
                timeout_graceful_shutdown=_DRAIN_SECONDS,
            )
        )
        # uvicorn drains on SIGTERM, then raises it again under the handler it found: were
        # that the default, the process would end before the stack below released leases.
        signal.signal(signal.SIGTERM, lambda *_: None)
        await server.serve()
        return 0 if server.started else 4


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:  # a signed token for trying the API locally
        return devtoken.main(argv[1:])
    if argv[:1] == ["migrate"]:  # the store's schema (gateway/migrations)
        return migrations_cli.main(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="tmf678-gateway", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG)))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8678")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tmf678-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
