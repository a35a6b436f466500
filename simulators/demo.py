"""`make demo`: the three bundled back ends behind one gateway, for all three resources.

Starts the REST (enterprise) and SOAP (consumer) simulators on loopback, makes sure the
legacy SQLite database exists, and runs the gateway with `config/federated.yaml` on
HOST:PORT until interrupted; the simulators stop with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from simulators.billing_db import ensure_demo_database

ROOT = Path(__file__).resolve().parent.parent


def _wait_for(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"demo: nothing listens on port {port}")


def _ensure_free(port: int) -> None:
    """Stop at once when something else listens on the port: the gateway would talk to it."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"demo: port {port} is in use (set REST_PORT / SOAP_PORT)")


def main() -> int:
    # A plain `kill` should stop the simulators too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    rest_port = int(os.environ.get("REST_PORT", "8701"))
    soap_port = int(os.environ.get("SOAP_PORT", "8702"))
    _ensure_free(rest_port)
    _ensure_free(soap_port)
    db = ensure_demo_database(os.environ.get("LEGACY_DB", "var/legacy_billing.sqlite"))
    simulators = [
        subprocess.Popen(
            [sys.executable, "-m", "simulators.rest_billing", "--port", str(rest_port)]
        ),
        subprocess.Popen(
            [sys.executable, "-m", "simulators.soap_billing", "--port", str(soap_port)]
        ),
    ]
    try:
        _wait_for(rest_port)
        _wait_for(soap_port)
        env = {
            **os.environ,
            "LEGACY_DB": str(db),
            "ENTERPRISE_URL": f"http://127.0.0.1:{rest_port}",
            "CONSUMER_WSDL": f"http://127.0.0.1:{soap_port}/billing.wsdl",
        }
        config = str(ROOT / "config" / "federated.yaml")
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--config", config], env=env)
        simulators.append(gateway)
        return gateway.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in reversed(simulators):
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
