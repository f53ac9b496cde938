"""The ``servemesh`` command."""
