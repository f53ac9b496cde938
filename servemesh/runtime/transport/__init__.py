"""Request-plane transports: inproc (see ``stream.LocalStream``), tcp and nats."""
