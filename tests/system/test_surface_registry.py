"""The surface registry: what each surface declares is what the app serves, and a
path under a surface's prefix that nothing serves answers in that surface's shape."""

from __future__ import annotations

from muxproxy.errors import status_error
from muxproxy.surfaces import SurfaceName
from muxproxy.surfaces.registry import CREATES, DEFAULT, SURFACES, Surface
from tests.support.gateway import RunningGateway


def _owner(path: str) -> Surface:
    """The surface whose prefix a path falls under, else the default one."""
    return next((s for s in SURFACES if s.prefix is not None and path.startswith(s.prefix)),
                DEFAULT)


def test_each_surface_is_declared_once_and_owns_its_routes() -> None:
    assert sorted(s.name for s in SURFACES) == sorted(SurfaceName)
    for surface in SURFACES:
        for route in surface.routes:
            owner = _owner(route.path)
            # A route outside any prefix answers unknown methods in the default shape.
            assert owner is surface or (surface.prefix is None and owner is DEFAULT), \
                (surface.name, route.path)


def test_create_paths_are_post_routes_of_their_surface_with_a_replay() -> None:
    assert set(CREATES) == {"/api/v1/images/generations", "/api/v1/generations",
                            "/v1/images/generations", "/v1/images/edits"}
    for path, surface in CREATES.items():
        assert surface.replay is not None, path
        assert any(r.path == path and "POST" in (r.methods or ()) for r in surface.routes)


async def test_unknown_paths_and_methods_answer_in_the_mounts_shape(
        gateway: RunningGateway) -> None:
    probes = [(s.prefix or "/", s) for s in SURFACES if s.prefix is not None]
    probes.append(("/api/v1/nothing-here", DEFAULT))
    for base, surface in probes:
        path = base.rstrip("/") + "/no/such/route"
        async with gateway.http.get(gateway.url + path, headers=gateway.headers()) as resp:
            body = await resp.read()
        expected = surface.render_error(status_error(404, f"no route for GET {path}"))
        assert (resp.status, body) == (404, expected.body), path
    for surface in SURFACES:
        route = surface.routes[0]
        path = route.path.replace("{", "").replace("}", "").replace(":path", "")
        async with gateway.http.put(gateway.url + path, headers=gateway.headers()) as resp:
            body = await resp.read()
            allow = resp.headers["Allow"]
        owner = _owner(route.path)
        expected = owner.render_error(status_error(405, "method PUT not allowed here"))
        assert (resp.status, body) == (405, expected.body), path
        served = {m for s in SURFACES for r in s.routes if r.path == route.path
                  for m in r.methods or ()}
        assert set(allow.split(", ")) == served, path


async def test_a_path_no_route_serves_is_counted_as_unmatched(
        gateway: RunningGateway) -> None:
    for path in ("/v1/nope", "/admin/nope", "/nope"):
        async with gateway.http.get(gateway.url + path) as resp:
            assert resp.status == 404
    async with gateway.http.get(gateway.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'route="unmatched",status="404"' in metrics.replace('method="GET",', "")
    assert 'route="/v1"' not in metrics and 'route="/admin"' not in metrics
