"""A key's history on the ModelMux API (``GET /api/v1/generations``) and the native
API (``GET /api/v1/images/generations/list``): newest first, paged by a cursor that
loses no job, each key seeing only its own. Real gateway, real SQLite."""

from __future__ import annotations

from typing import Any

from tests.support.gateway import KEY_A, KEY_B, RunningGateway


async def get(gw: RunningGateway, path: str, key: str = KEY_A,
              **params: Any) -> tuple[int, Any]:
    async with gw.http.get(gw.url + path, headers=gw.headers(key), params=params) as resp:
        return resp.status, await resp.json()


async def submit_all(gw: RunningGateway, count: int, key: str) -> list[str]:
    ids = [await gw.submit({"model": "demo-image", "prompt": f"picture {i}"}, key=key)
           for i in range(count)]
    for task_id in ids:
        await gw.wait_terminal(task_id, key=key)
    return ids


async def test_modelmux_history_pages_newest_first(gateway: RunningGateway) -> None:
    mine = await submit_all(gateway, 5, KEY_A)
    theirs = await submit_all(gateway, 2, KEY_B)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"before": cursor} if cursor else {})
        status, body = await get(gateway, "/api/v1/generations", **params)
        assert status == 200, body
        assert set(body) == {"generations", "nextCursor"}
        pages += 1
        for item in body["generations"]:
            assert item["status"] == "completed" and item["outputUrl"].startswith(gateway.url)
            assert item["creditsUsed"] == 0 and item["model"] == "demo-image"
        seen += [item["historyId"] for item in body["generations"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    # Newest first; each key its own.
    assert seen == mine[::-1]
    status, body = await get(gateway, "/api/v1/generations", key=KEY_B)
    assert [g["historyId"] for g in body["generations"]] == theirs[::-1]
    assert body["nextCursor"] is None
    # The view is the poll's, links included.
    status, one = await get(gateway, f"/api/v1/generations/{mine[-1]}")
    listed = (await get(gateway, "/api/v1/generations", limit="1"))[1]["generations"][0]
    assert {k: v for k, v in listed.items() if k != "outputUrl"} \
        == {k: v for k, v in one.items() if k != "outputUrl"}


async def test_native_list_pages_with_the_same_cursor(gateway: RunningGateway) -> None:
    mine = await submit_all(gateway, 3, KEY_A)
    await submit_all(gateway, 1, KEY_B)
    status, first = await get(gateway, "/api/v1/images/generations/list", limit="2")
    assert status == 200 and first["code"] == 200 and first["msg"] == "success"
    tasks = first["data"]["tasks"]
    assert [t["taskId"] for t in tasks] == mine[:0:-1]
    assert all(t["state"] == "completed" and len(t["resultUrls"]) == 1 for t in tasks)
    status, rest = await get(gateway, "/api/v1/images/generations/list", limit="2",
                             before=first["data"]["nextCursor"])
    assert [t["taskId"] for t in rest["data"]["tasks"]] == mine[:1]
    assert rest["data"]["nextCursor"] is None
    # A time works as 'before' too: everything created earlier.
    newest = tasks[0]
    status, older = await get(gateway, "/api/v1/images/generations/list",
                              before=str(newest["createTime"]))
    assert newest["taskId"] not in [t["taskId"] for t in older["data"]["tasks"]]


async def test_history_refuses_bad_paging_in_each_shape(gateway: RunningGateway) -> None:
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"before": "abc"},
                   {"before": "12."}, {"before": "-5"}):
        status, body = await get(gateway, "/api/v1/generations", **params)
        assert status == 400 and body["code"] == "invalid_request", (params, body)
        status, body = await get(gateway, "/api/v1/images/generations/list", **params)
        assert status == 400 and body["code"] == 400 and body["data"] is None, (params, body)
    async with gateway.http.get(f"{gateway.url}/api/v1/generations") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_api_key"
    status, body = await get(gateway, "/api/v1/generations")
    assert (status, body) == (200, {"generations": [], "nextCursor": None})
