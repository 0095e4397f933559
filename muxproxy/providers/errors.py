"""Kept for ``runner.py`` and ``gateway.py``, which import the provider errors from
here; they are defined with the interface, in :mod:`muxproxy.providers.base`."""

from muxproxy.providers.base import Unsupported as Unsupported
from muxproxy.providers.base import UpstreamError as UpstreamError
