"""The OpenAPI 3.1 document of every HTTP endpoint, served at ``GET /openapi.json``.

Built from the settings, so limits, model ids and the public URL are the running
gateway's own. One module per surface, next to the surface it describes; each
surface names its part in :mod:`muxproxy.surfaces.registry`, and
:func:`muxproxy.openapi.document.build_document` puts them together.
``tests/contract/test_openapi_conformance.py`` checks real answers against it and
``tests/contract/test_openapi_fuzz.py`` fuzzes every operation from it.
"""

from __future__ import annotations

from muxproxy import __version__

VERSION = __version__
