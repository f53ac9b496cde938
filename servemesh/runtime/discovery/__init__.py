"""Discovery backends: ``memory`` (in-process) and ``etcd``."""
