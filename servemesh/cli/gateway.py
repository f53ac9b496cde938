"""``servemesh gateway``: one process serving the capability API, KServe OIP v2 REST and
gRPC, and (switched on) the OpenAI API, over the same replicas; optionally with a
capability app served in the same process."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import Settings
from ..errors import ServemeshError
from . import PORT


def gateway(target: Annotated[str | None, typer.Argument(
                help="module:app or path/file.py:app to serve in this process too (optional)")] = None,
            http_port: Annotated[int, typer.Option(
                **PORT, help="HTTP port: capability API, /v2 (KServe), /v1 (OpenAI)")]
            = 8000,
            grpc_port: Annotated[int, typer.Option(**PORT, help="KServe OIP v2 gRPC port")] = 8001,
            host: Annotated[str, typer.Option(help="address both ports bind to")] = "127.0.0.1",
            capability_api: Annotated[bool, typer.Option(
                help="serve the capability API's /infer/json and /infer/stream (/register is always served)")]
            = True,
            kserve: Annotated[bool, typer.Option(help="serve KServe OIP v2 REST under /v2")] = True,
            kserve_grpc: Annotated[bool, typer.Option(help="serve KServe OIP v2 gRPC on --grpc-port")] = True,
            openai: Annotated[bool, typer.Option(
                help="serve the OpenAI API under /v1 (for LLM pipeline processors found in etcd)")] = False,
            object_store: Annotated[str | None, typer.Option(
                help="object store of the app served here (default SERVEMESH_OBJECT_STORE)")] = None,
            log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None) -> None:
    """Run a gateway: capability API, KServe OIP v2 REST and gRPC (and OpenAI) in one process."""
    from ..apps.gateway import Surfaces, gateway_runtime, serve_gateway
    from ..log import configure_logging
    from ..runtime import run
    from ..runtime.worker import run_until_signalled
    from .capability import load_app

    surfaces = Surfaces(capability=capability_api, kserve=kserve, kserve_grpc=kserve_grpc, openai=openai)

    async def main() -> None:
        runtime, store = gateway_runtime(Settings.from_env(object_store=object_store))
        async with runtime:
            await run_until_signalled(runtime, serve_gateway(
                runtime, store, host=host, http_port=http_port, grpc_port=grpc_port, surfaces=surfaces, app=app,
                object_store=object_store))

    try:
        configure_logging(log_level)
        app = load_app(target) if target else None
        run(main())
    except ServemeshError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
