"""`tmf678-gateway [serve] [--config F] [--workers N]`: serve the API with uvicorn
(HOST/PORT from the environment); `tmf678-gateway check [--config F]`: check a
configuration against its back ends without serving (gateway/check.py);
`tmf678-gateway migrate`: the store's schema brought up to date (gateway/migrations/cli.py);
`tmf678-gateway token --scope ... --accounts ...`: a signed token for trying the API
locally (see gateway/devtoken.py).

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
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from gateway import check, devtoken
from gateway.app import StartupError, build_app, create_app, gateway_metrics, open_services
from gateway.config import DEFAULT_CONFIG, ConfigError, GatewayConfig, load_config
from gateway.logs import configure_logging
from gateway.metrics import MULTIPROC_DIR
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
    metrics = config.metrics
    if (
        config.auth.enabled
        and metrics.enabled
        and metrics.scope is None
        and not metrics.open_beyond_loopback
    ):
        # With auth on, everything else asks for a token: /metrics (back-end names, traffic,
        # queue depths) does not go out tokenless by accident either.
        return (
            f"{config.source}: {host!r} is not a loopback address and /metrics needs no token:"
            " set metrics.scope (scrapers send a bearer token with it),"
            " metrics.open_beyond_loopback: true, or metrics.enabled: false"
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
    metrics = gateway_metrics(config)
    async with AsyncExitStack() as stack:
        try:
            services = await open_services(config, stack, root + API_PREFIX, metrics)
        except StartupError as exc:
            print(f"tmf678-gateway: cannot start: {exc}", file=sys.stderr)
            return 3
        app = build_app(config, services, metrics)
        # Start-up built a large heap (OAS schemas, WSDLs, compiled mappings) that lives
        # as long as the process: out of the collector's sight, every collection a
        # page of records triggers stays small.
        gc.collect()
        gc.freeze()
        structlog.get_logger("gateway").info("gateway_listening", host=host, port=port)
        server = uvicorn.Server(_uvicorn_config(app, host, port, lifespan="off"))
        # uvicorn drains on SIGTERM, then raises it again under the handler it found: were
        # that the default, the process would end before the stack below released leases.
        signal.signal(signal.SIGTERM, lambda *_: None)
        await server.serve()
        return 0 if server.started else 4


def _uvicorn_config(
    app: Starlette | str, host: str, port: int, *, lifespan: str, workers: int = 1
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=isinstance(app, str),
        log_config=None,
        access_log=False,
        lifespan=lifespan,  # type: ignore[arg-type]
        proxy_headers=True,
        server_header=False,  # no "server: uvicorn" banner
        # httptools, with its own refusals as TMF Errors; header sizes are
        # bounded by gateway/guards.py (431), as httptools has no such option.
        http=TmfHttpToolsProtocol,
        timeout_graceful_shutdown=_DRAIN_SECONDS,
    )


#: What `serve --workers N` tells its worker processes (they read the config themselves).
_WORKER_CONFIG = "TMF678_WORKER_CONFIG"
_WORKER_ROOT = "TMF678_WORKER_ROOT"


def serve_workers(config: GatewayConfig, host: str, port: int, workers: int) -> int:
    """N worker processes on one listening socket (uvicorn's supervisor).

    Each worker opens its own back ends, store connections and background work (the
    store shares the work out: leases); a worker that dies is replaced. Metrics of all
    workers are summed through prometheus-client's multiprocess files, in a directory
    made here and removed at exit.
    """
    refusal = exposure_refusal(config, host)
    if refusal is not None:
        print(f"tmf678-gateway: cannot start: {refusal}", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="tmf678-metrics-") as directory:
        os.environ[MULTIPROC_DIR] = directory
        os.environ[_WORKER_CONFIG] = config.source
        os.environ[_WORKER_ROOT] = config.api.public_base_url or f"http://{host}:{port}"
        settings = _uvicorn_config(
            "gateway.__main__:worker_app", host, port, lifespan="on", workers=workers
        )
        supervisor = Multiprocess(settings, sockets=[settings.bind_socket()])
        structlog.get_logger("gateway").info(
            "gateway_listening", host=host, port=port, workers=workers
        )
        supervisor.run()
        failed = any(p.exitcode == 3 for p in supervisor.processes)
    return 3 if failed else 0


def worker_app() -> Starlette:
    """One worker's application (`serve --workers N`): it opens its services on start-up.

    A start-up failure is one line on stderr and exit code 3, on which uvicorn's
    supervisor stops every worker (rather than a traceback and a restart loop).
    """
    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())
    config = load_config(os.environ[_WORKER_CONFIG])
    app = create_app(config, event_base_url=os.environ[_WORKER_ROOT])
    opening = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with opening(app):
                yield
        except StartupError as exc:  # raised before serving: what it opened is closed
            print(f"tmf678-gateway: cannot start: {exc}", file=sys.stderr, flush=True)
            os._exit(3)

    app.router.lifespan_context = lifespan
    return app


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:  # a signed token for trying the API locally
        return devtoken.main(argv[1:])
    if argv[:1] == ["check"]:  # the configuration against its back ends, without serving
        return check.main(argv[1:])
    if argv[:1] == ["migrate"]:  # the store's schema (gateway/migrations)
        return migrations_cli.main(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="tmf678-gateway", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG)))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8678")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("WORKERS", "1")), help="processes"
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tmf678-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        os.environ["LOG_LEVEL"] = args.log_level
        return serve_workers(config, args.host, args.port, args.workers)
    return asyncio.run(serve(config, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
