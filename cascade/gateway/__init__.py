"""The OpenAI-compatible HTTP gateway (``cascade serve``): app, wire format, limits, metrics,
feedback endpoint and serving. Only the CLI imports it; importing this package alone loads no
web stack."""
