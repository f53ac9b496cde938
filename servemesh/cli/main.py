"""``servemesh``: run services, manage the local stack, inspect and call endpoints."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any, NoReturn

import msgspec
import typer

from ..config import Settings
from ..errors import ServemeshError
from . import PORT

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="servemesh: serve AI pipelines across processes and machines.")


def _settings(state_dir: str | None = None, etcd: str | None = None, nats: str | None = None) -> Settings:
    try:
        return Settings.from_env(state_dir=state_dir, etcd=etcd, nats=nats)
    except ServemeshError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


StateDir = Annotated[str | None, typer.Option(help="where the local stack is recorded [~/.servemesh]")]
EtcdOpt = Annotated[str | None, typer.Option(help="etcd URL (default: SERVEMESH_ETCD or the local stack)")]
NatsOpt = Annotated[str | None, typer.Option(help="NATS URL (default: SERVEMESH_NATS or the local stack)")]


@app.command()
def up(state_dir: StateDir = None,
       etcd_port: Annotated[int | None, typer.Option(**PORT, help="etcd client port [2379 if free]")] = None,
       nats_port: Annotated[int | None, typer.Option(**PORT, help="NATS port [4222 if free]")] = None) -> None:
    """Start a local etcd and nats-server (JetStream) for multi-process work on this machine."""
    from ..stack import start_stack

    settings = _settings(state_dir)
    try:
        record = start_stack(settings.state_dir, etcd_port, nats_port)
    except (ServemeshError, RuntimeError, TimeoutError) as exc:
        _fail(str(exc))
    verb = "already running" if record.get("already_running") else "started"
    typer.echo(f"local stack {verb} (recorded in {settings.state_dir}/stack.json)")
    typer.echo(f"  etcd  {record['etcd']}")
    typer.echo(f"  nats  {record['nats']}")
    typer.echo("every servemesh process on this machine now uses it; `servemesh down` stops it")
    typer.echo(f"inspect registrations: etcdctl --endpoints {record['etcd']} get --prefix instances")


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop the local stack started by `servemesh up`."""
    from ..stack import stop_stack

    settings = _settings(state_dir)
    record = stop_stack(settings.state_dir)
    if record is None:
        typer.echo("no local stack is recorded; nothing to stop")
        return
    typer.echo("local stack stopped")


@app.command()
def status(state_dir: StateDir = None) -> None:
    """Report the local stack's health and how many instances are registered."""
    from ..config import read_local_stack
    from ..stack import stack_health

    settings = _settings(state_dir)
    record = read_local_stack(settings.state_dir)
    if settings.etcd is None:
        typer.echo("no etcd configured and no local stack: processes run embedded (in-process only)")
        typer.echo("start one with `servemesh up`")
        raise typer.Exit(0)
    healthy = True
    if record is not None and record.get("etcd") == settings.etcd:
        for name, ok in stack_health(record).items():
            healthy &= ok
            typer.echo(f"{name:5} {record[name]}  {'healthy' if ok else 'NOT RESPONDING'}")
    else:
        typer.echo(f"etcd  {settings.etcd} (from SERVEMESH_ETCD)")
    try:
        records = asyncio.run(_list(settings, ""))
        typer.echo(f"{len(records)} instance registration(s)")
    except ServemeshError as exc:
        _fail(str(exc))
    if not healthy:
        raise typer.Exit(1)


async def _list(settings: Settings, namespace: str) -> list[Any]:
    from ..runtime.discovery.etcd import EtcdDiscovery
    from ..runtime.records import instance_prefix

    assert settings.etcd is not None
    discovery = EtcdDiscovery.from_settings(settings)
    await discovery.start()
    try:
        return await discovery.list(instance_prefix(namespace) if namespace else "instances/")
    finally:
        await discovery.close()


@app.command("ls")
def ls(namespace: Annotated[str, typer.Argument(help="only this namespace")] = "",
       json_out: Annotated[bool, typer.Option("--json", help="one JSON record per line")] = False,
       state_dir: StateDir = None, etcd: EtcdOpt = None) -> None:
    """List live instances (namespace, component, endpoint, instance id, transport, capabilities)."""
    settings = _settings(state_dir, etcd)
    if settings.etcd is None:
        _fail("no etcd configured: instances are only visible across processes with etcd "
              "(run `servemesh up` or set SERVEMESH_ETCD)")
    try:
        records = asyncio.run(_list(settings, namespace))
    except ServemeshError as exc:
        _fail(str(exc))
    if json_out:
        for r in records:
            typer.echo(msgspec.json.encode(r).decode())
        return
    if not records:
        typer.echo(f"no live instances{f' in namespace {namespace!r}' if namespace else ''}")
        return
    rows = [("NAMESPACE", "COMPONENT", "ENDPOINT", "INSTANCE", "TRANSPORT", "CAPABILITIES")]
    for r in records:
        rows.append((r.namespace, r.component, r.endpoint, f"{r.instance_id:x}",
                     ", ".join(f"{k}={v}" for k, v in r.transport.items()),
                     json.dumps(r.capabilities) if r.capabilities else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@app.command()
def call(path: Annotated[str, typer.Argument(help="namespace.component.endpoint")],
         payload: Annotated[str, typer.Argument(help="the request as JSON")] = "{}",
         timeout: Annotated[float, typer.Option(help="seconds for the whole call")] = 60.0,
         wait: Annotated[float, typer.Option(help="seconds to wait for an instance")] = 5.0,
         instance: Annotated[str | None, typer.Option(help="call this instance id (hex)")] = None,
         state_dir: StateDir = None, etcd: EtcdOpt = None, nats: NatsOpt = None) -> None:
    """Call an endpoint and print each streamed item as a JSON line."""
    try:
        request = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"the payload is not valid JSON: {exc}", 2)
    settings = _settings(state_dir, etcd, nats)
    if settings.etcd is None:
        _fail("no etcd configured: nothing outside this command's own process can be called "
              "(run `servemesh up` or set SERVEMESH_ETCD)")
    try:
        asyncio.run(_call(settings, path, request, timeout, wait, instance))
    except ServemeshError as exc:
        _fail(f"{type(exc).__name__}: {exc}")


async def _call(settings: Settings, path: str, request: Any, timeout: float, wait: float,
                instance: str | None) -> None:
    from ..runtime import Context, DistributedRuntime

    async with DistributedRuntime(settings) as runtime:
        client = await runtime.endpoint(path).client()
        await client.wait_for_instances(wait)
        ctx = Context(timeout=timeout)
        stream = (client.direct(request, int(instance, 16), context=ctx, annotated=False) if instance
                  else client.generate(request, context=ctx, annotated=False))
        async for item in stream:
            sys.stdout.write(json.dumps(item, default=str) + "\n")
            sys.stdout.flush()


@app.command()
def run(target: Annotated[str, typer.Argument(help="file.py, file.py:Class, module or module:Class")],
        log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None,
        system_port: Annotated[int | None, typer.Option(**PORT,
            help="serve /health /live /ready /metrics on this port (0: a free one; default: SERVEMESH_SYSTEM_PORT)")]
        = None,
        api_key: Annotated[str | None, typer.Option(
            help="require `Authorization: Bearer <key>` on the system port, probes excepted "
                 "(several: comma-separated; default: SERVEMESH_API_KEY)")] = None) -> None:
    """Serve every @service class of a file or module in this process until Ctrl-C / SIGTERM."""
    from ..log import configure_logging
    from ..runtime import DistributedRuntime, worker
    from ..runtime import run as run_coroutine
    from ..sdk import serve
    from ..sdk.loader import load_services

    async def serve_all(runtime: DistributedRuntime) -> None:
        await serve(*classes, runtime=runtime)

    try:
        configure_logging(log_level)
        classes = load_services(target)
        run_coroutine(worker(system_port=system_port, api_key=api_key)(serve_all)())
    except ServemeshError as exc:
        _fail(str(exc))


def _capability_commands() -> None:
    from .capability import api_server, serve
    from .gateway import gateway

    app.command("serve")(serve)
    app.command("api-server")(api_server)
    app.command("gateway")(gateway)


def _sessions_commands() -> None:
    from .sessions import app as sessions

    app.add_typer(sessions, name="sessions")


_capability_commands()
_sessions_commands()


def _function_commands() -> None:
    from .functions import build, new_app, serve_function, validate

    app.command("validate")(validate)
    app.command("serve-function")(serve_function)
    app.command("build")(build)
    app.add_typer(new_app, name="new")


_function_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
