"""``servemesh sessions serve module:app`` and ``servemesh sessions hash-key``."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import Settings
from ..errors import ServemeshError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Stateful sessions: serve Burr apps and plain-Python stateful apps (docs/sessions.md).")


@app.command()
def serve(target: Annotated[str, typer.Argument(help="module:attr or path/file.py:attr (StatefulApp or Burr app)")],
          port: Annotated[int, typer.Option(help="HTTP port of the gateway")] = 8080,
          host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
          store: Annotated[str | None, typer.Option(
              help="sqlite:///file.db, postgresql://..., memory:// (default: SERVEMESH_SESSIONS_STORE or "
                   "sqlite:///servemesh-sessions.db)")] = None,
          name: Annotated[str | None, typer.Option(help="the app's name in paths [the attribute's, or burr]")] = None,
          gateway: Annotated[bool, typer.Option(help="serve the HTTP gateway")] = True,
          service: Annotated[bool, typer.Option(help="serve a session-service replica")] = True,
          chat: Annotated[str | None, typer.Option(
              help="expose /v1/chat/completions running these actions per turn, comma-separated (the first takes "
                   "`message`, the answer is the state's `reply`)")] = None,
          namespace: Annotated[str, typer.Option(help="the runtime namespace of the session service")] = "sessions",
          log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None) -> None:
    """Serve an app's sessions: a session-service replica and the HTTP gateway (or one of them)."""
    from ..apps.sessions import load_definition, serve_sessions
    from ..gateway.sessions.chat import ChatFlavour
    from ..log import configure_logging
    from ..runtime import DistributedRuntime, run
    from ..runtime.worker import run_until_signalled

    async def main() -> None:
        definition = load_definition(target, name)
        flavour = ChatFlavour([s.strip() for s in chat.split(",") if s.strip()]) if chat else None
        async with DistributedRuntime(Settings.from_env()) as runtime:
            await run_until_signalled(runtime, serve_sessions(
                definition, store=store, host=host, port=port, runtime=runtime, service=service, gateway=gateway,
                namespace=namespace,
                chat=flavour, on_ready=lambda url: typer.echo(f"sessions of {definition.name} on {url}" if url
                                                              else f"session service of {definition.name} ready")))

    try:
        configure_logging(log_level)
        run(main())
    except ServemeshError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("hash-key")
def hash_key(key: Annotated[str, typer.Argument(help="an API key to give a principal")]) -> None:
    """Print the SHA-256 of KEY, for the `key_sha256` of a principal (the file never holds the key)."""
    from ..sessions.acl import hash_key as digest

    typer.echo(digest(key))
