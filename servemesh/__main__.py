"""``python -m servemesh``: the ``servemesh`` command (how images built by ``servemesh build`` serve)."""

from .cli.main import main

if __name__ == "__main__":
    main()
