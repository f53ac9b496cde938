"""``servemesh serve module:app`` (a capability replica) and ``servemesh api-server``.

The flags are AnyServe's: ``--port`` (the replica's OIP v2 gRPC port), ``--api-server``,
``--object-store``, ``--replica-id``. ``app.run()`` in an app's file reads the same
flags from its own command line.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Annotated, Any

import typer

from ..config import Settings
from ..errors import ConfigError, ServemeshError
from . import PORT


def load_app(target: str) -> Any:
    """``package.module:app``, ``path/file.py:app`` (``:app`` may be left out)."""
    from ..capability import App
    from ..sdk.loader import load_module

    where, _, attr = target.rpartition(":") if ":" in target.replace(":\\", "") else (target, "", "app")
    if not where:
        where, attr = attr, "app"
    module = load_module(where)
    found = getattr(module, attr or "app", None)
    if not isinstance(found, App):
        raise ConfigError(f"{target} is not a capability app: {where} needs `{attr or 'app'} = App()` "
                          "(AnyServe's `AnyServe()`) with @app.capability(...) handlers")
    return found


def default_replica_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def run_replica(app: Any, *, port: int, host: str, api_server: str | None, object_store: str | None,
                replica_id: str | None, token: str | None, log_level: str | None,
                system_port: int | None) -> None:
    from ..apps.capability import replica_runtime, serve_replica
    from ..log import configure_logging
    from ..runtime import run
    from ..runtime.worker import run_until_signalled

    configure_logging(log_level)
    settings = Settings.from_env(system_port=system_port, object_store=object_store)

    async def main() -> None:
        runtime, store = replica_runtime(settings)
        async with runtime:
            await run_until_signalled(runtime, serve_replica(
                runtime, app, replica_id=replica_id or default_replica_id(), host=host, port=port,
                api_server=api_server, object_store=object_store, token=token, store=store))

    run(main())
    leave_stuck_handlers()


def leave_stuck_handlers() -> None:
    """After the drain: ``def`` handlers still running in their threads (stuck in a call
    that never returns) would keep the process alive, since Python waits for them at
    exit. Say so and exit without them."""
    import logging
    import threading

    stuck = [t for t in threading.enumerate() if t.name.startswith("capability") and t.is_alive()]
    if stuck:
        logging.getLogger("servemesh.capability").warning(
            "%d def handler(s) still running after the drain (SERVEMESH_DRAIN_TIMEOUT): exiting without them",
            len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def serve(target: Annotated[str, typer.Argument(help="module:app or path/file.py:app")],
          port: Annotated[int, typer.Option(**PORT, help="the replica's OIP v2 gRPC port (0: a free one)")] = 8000,
          host: Annotated[str, typer.Option(help="address the gRPC port binds to")] = "127.0.0.1",
          api_server: Annotated[str | None, typer.Option(help="API server URL to register with (heartbeats)")]
          = None,
          object_store: Annotated[str | None, typer.Option(
              help="object store: a directory or nats://host:port?bucket=name (default SERVEMESH_OBJECT_STORE)")]
          = None,
          replica_id: Annotated[str | None, typer.Option(help="this replica's id [host-pid]")] = None,
          token: Annotated[str | None, typer.Option(
              help="the secret this replica id registers with (default SERVEMESH_CAPABILITY_TOKEN, else random)")]
          = None,
          log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None,
          system_port: Annotated[int | None, typer.Option(**PORT, help="serve /health /metrics on this port")] = None,
          ) -> None:
    """Serve a capability app (AnyServe's `anyserve module:app`) as one replica."""
    try:
        app = load_app(target)
        run_replica(app, port=port, host=host, api_server=api_server, object_store=object_store,
                    replica_id=replica_id, token=token, log_level=log_level, system_port=system_port)
    except ServemeshError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def api_server(port: Annotated[int, typer.Option(**PORT, help="HTTP port")] = 8080,
               host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
               log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None) -> None:
    """Run the capability API server (AnyServe-compatible /register, /registry, /infer/json, /infer/stream)."""
    from ..apps.capability import api_server_runtime, serve_api_server
    from ..log import configure_logging
    from ..runtime import run
    from ..runtime.worker import run_until_signalled

    async def main() -> None:
        runtime, store = api_server_runtime(Settings.from_env())
        async with runtime:
            await run_until_signalled(runtime, serve_api_server(runtime, store, host, port))

    try:
        configure_logging(log_level)
        run(main())
    except ServemeshError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def serve_app(app: Any, argv: list[str] | None = None) -> None:
    """``app.run()``: the flags of ``servemesh serve`` from ``argv`` (default: the command line)."""
    parser = argparse.ArgumentParser(description="Serve this capability app as one replica.")
    parser.add_argument("--port", type=_port, default=8000, help="OIP v2 gRPC port (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-server", default=None)
    parser.add_argument("--object-store", default=None)
    parser.add_argument("--replica-id", default=None)
    parser.add_argument("--token", default=None)
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--system-port", type=_port, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run_replica(app, port=args.port, host=args.host, api_server=args.api_server, object_store=args.object_store,
                    replica_id=args.replica_id, token=args.token, log_level=args.log_level,
                    system_port=args.system_port)
    except ServemeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
