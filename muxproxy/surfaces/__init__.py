"""The HTTP surfaces: one module per client-facing API."""
