"""HTTP gateways over the runtime. This is the one layer that maps errors to HTTP status codes."""
