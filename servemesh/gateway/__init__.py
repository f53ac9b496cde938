"""HTTP gateways over the runtime. This is the one layer that maps errors to HTTP status
codes (``servemesh.gateway.kit``); each surface (``openai``, ...) adds only its routes
and the shape of its error bodies."""
