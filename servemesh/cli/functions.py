"""``servemesh validate``, ``serve-function``, ``build`` and ``new function``: typed functions."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from ..config import Settings
from ..errors import FunctionInvalid, ServemeshError
from . import PORT

new_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Scaffold new things.")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def validate(directory: Annotated[str, typer.Argument(help="the function's directory (metadata.py, main.py)")]
             ) -> None:
    """Check a function without running it; every problem at once, with its location."""
    from ..functions import validate as check

    try:
        problems = check(directory)
    except ServemeshError as exc:
        _fail(str(exc))
        return
    if problems:
        typer.echo(f"{directory}: {len(problems)} problem(s)", err=True)
        for problem in problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{directory}: valid")


def serve_function(directory: Annotated[str, typer.Argument(help="the function's directory")],
                   host: Annotated[str, typer.Option(help="address the HTTP port binds to")] = "127.0.0.1",
                   port: Annotated[int, typer.Option(**PORT, help="HTTP port (0: a free one)")] = 3000,
                   log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None) -> None:
    """Serve a function: HTTP (POST /execute, GET /metadata) and the runtime endpoint <ns>.<name>.execute."""
    from ..apps.functions import serve_function as serve
    from ..functions import load_function
    from ..log import configure_logging
    from ..runtime import DistributedRuntime, run

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with DistributedRuntime(Settings.from_env()) as runtime:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, runtime.request_shutdown)
            await serve(runtime, func, host, port,
                        on_ready=lambda url: typer.echo(f"function {func.name} {func.version} ready on {url}"))

    try:
        configure_logging(log_level)
        func = load_function(directory)
        func.check()
        run(main())
    except FunctionInvalid as exc:
        _fail(str(exc))
    except ServemeshError as exc:
        _fail(str(exc))


def build(directory: Annotated[str, typer.Argument(help="the function's directory")],
          registry: Annotated[str, typer.Option(help="HOST[:PORT]/PREFIX the image is tagged (and pushed) under")],
          push: Annotated[bool, typer.Option(help="push the image over the OCI distribution API")] = False,
          base: Annotated[str | None, typer.Option(
              help="base image: a registry reference, oci:DIR[:TAG], a rootfs tar, or scratch "
                   "(default: the Dockerfile's FROM, else SERVEMESH_FUNCTION_BASE)")] = None,
          cuda: Annotated[bool, typer.Option(help="use the CUDA base image (SERVEMESH_FUNCTION_CUDA_BASE)")] = False,
          force: Annotated[bool, typer.Option(help="overwrite a version that was already pushed")] = False,
          output: Annotated[str | None, typer.Option(help="also write the image as an OCI layout here")] = None,
          servemesh_deps: Annotated[bool, typer.Option(
              help="resolve servemesh's own requirements into the dependency layer (off: the base has them)")]
          = True,
          find_links: Annotated[list[str] | None, typer.Option(
              "--find-links", help="a wheel directory (or URL) pip resolves requirements from instead of an index "
                                   "(repeatable; default SERVEMESH_FUNCTION_FIND_LINKS)")] = None,
          user: Annotated[str | None, typer.Option(help="registry user (default SERVEMESH_REGISTRY_USER)")] = None,
          password: Annotated[str | None, typer.Option(
              help="registry password (default SERVEMESH_REGISTRY_PASSWORD)")] = None,
          token: Annotated[str | None, typer.Option(help="a bearer token (default SERVEMESH_REGISTRY_TOKEN)")] = None,
          plain_http: Annotated[bool | None, typer.Option(
              "--plain-http/--https", help="registry protocol [plain HTTP for loopback hosts only]")] = None,
          ) -> None:
    """Validate a function and build its OCI image without a Docker daemon; --push it to a registry."""
    from ..functions.build import BuildOptions, Credentials, RegistryClient
    from ..functions.build import build as build_image
    from ..functions.build import push as push_image
    from ..functions.build.oci import write_layout

    settings = Settings.from_env(registry_user=user, registry_password=password, registry_token=token)
    creds = Credentials(settings.registry_user, settings.registry_password, settings.registry_token)
    options = BuildOptions(registry=registry, cache=Path(settings.state_dir) / "build-cache", base=base,
                           cuda_base=settings.function_cuda_base, cuda=cuda, default_base=settings.function_base,
                           python=settings.function_python, servemesh_deps=servemesh_deps, credentials=creds,
                           find_links=find_links or (settings.function_find_links or "").split(),
                           plain_http=plain_http, timeout=settings.registry_timeout)
    try:
        image = build_image(directory, options)
        typer.echo(f"built {image.reference} {image.digest} ({len(image.layers)} layers, base {image.base})")
        if output:
            write_layout(Path(output), image.reference.ref, image.manifest, image.blobs())
            typer.echo(f"wrote OCI layout {output}:{image.reference.ref}")
        if push:
            with RegistryClient(image.reference.host, creds, plain_http=plain_http,
                                timeout=settings.registry_timeout) as client:
                report = push_image(image, client, force=force)
            if not report.manifest_put:
                typer.echo(f"{report.reference} is already pushed with this digest: nothing to push")
            else:
                size = sum(s for _, s in report.uploaded)
                typer.echo(f"pushed {report.reference} {report.digest}: {len(report.uploaded)} blob(s) uploaded "
                           f"({size} bytes), {report.present} already there")
                if report.compared_with:
                    typer.echo(f"compatible with {report.compared_with}"
                               + "".join(f"\n  {c}" for c in report.changes))
    except ServemeshError as exc:
        _fail(str(exc))


@new_app.command("function")
def new_function(name: Annotated[str, typer.Argument(help="NAME or CATEGORY/NAME")],
                 directory: Annotated[str, typer.Option("--dir", help="where the category directories live")] = ".",
                 category: Annotated[str, typer.Option(help="the category (unless NAME has one)")] = "general",
                 version: Annotated[str, typer.Option(help="the first version")] = "1.0.0",
                 base: Annotated[str, typer.Option(help="the Dockerfile's FROM")] = "python:3.11-slim") -> None:
    """Write a function in the seed's layout: CATEGORY/NAME/VERSION/ with metadata.py and main.py."""
    from ..functions.scaffold import new_function as scaffold

    try:
        target = scaffold(name, directory, category=category, version=version, base=base)
    except ServemeshError as exc:
        _fail(str(exc))
        return
    typer.echo(f"wrote {target}/ (metadata.py, main.py, requirements.txt, Dockerfile)")
    typer.echo(f"next: servemesh validate {target} && servemesh serve-function {target}")
