"""Request-plane transports behind one seam (``base``): inproc, tcp, nats and memory."""
