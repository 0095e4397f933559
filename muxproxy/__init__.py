"""muxproxy: a self-hosted reverse proxy and webhook relay for image generation APIs."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
