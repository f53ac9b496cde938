"""The ``servemesh`` command."""

#: typer.Option(**PORT, ...): a TCP port (0: a free one)
PORT: dict[str, int] = {"min": 0, "max": 65535}
