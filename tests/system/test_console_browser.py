"""The web console in a real browser (Chromium through Playwright): each scenario
signs in as a person would, clicks and types, and ends in a screenshot in the test's
own folder. Set MUXPROXY_CONSOLE_SCREENSHOTS=docs/images to also write the README's
two pictures there."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from muxproxy.webhooks.outbox import DeliveryStatus
from tests.support.browser import check_page, chromium, tab_to
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.wait import eventually
from tests.support.webhooks import LOOPBACK, Receiver

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Response

ADMIN_TOKEN = "console-admin-token-0123456789"
WIDE, NARROW = 1280, 390


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = merge(base_config(tmp_path), {
        **LOOPBACK, "admin": {"token": ADMIN_TOKEN},
        # A job that runs until it is cancelled (or the test ends).
        "providers": {"demo-slow": {"kind": "demo", "options": {"delay_seconds": 60}},
                      "demo-broken": {"kind": "demo", "options": {"failure_rate": 1}}},
        "models": {"demo-slow": {"routes": [{"provider": "demo-slow", "model": "slow"}]},
                   "demo-priced": {"routes": [{"provider": "demo", "model": "priced"}],
                                   "credits": 4},
                   "demo-broken": {"routes": [{"provider": "demo-broken", "model": "x"}]}}})
    async with run_gateway(config) as running:
        yield running


# One browser for the module (each test has its own contexts): starting Chromium
# costs seconds. The tests share the module's event loop with it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as found:
        yield found


@pytest_asyncio.fixture(loop_scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.listen()
    yield found
    await found.close()


class Watched:
    """A page, and what its console said: a CSP violation or a script error fails
    the test."""

    def __init__(self, page: Page, width: int) -> None:
        self.page = page
        self.width = width
        self.problems: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.on("response", self._response)

    def _message(self, message: ConsoleMessage) -> None:
        # A page answered 4xx on purpose says so too; _response judges those.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(message.text)

    def _response(self, response: Response) -> None:
        # Pages may answer 4xx on purpose; what a page loads (styles, scripts,
        # images, the progress read) may not.
        if response.status >= 400 and response.request.resource_type != "document":
            self.problems.append(f"{response.status} {response.url}")

    async def check(self) -> None:
        await check_page(self.page, self.width)
        assert self.problems == []


async def open_page(browser: Browser, width: int = WIDE) -> tuple[BrowserContext, Watched]:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(10_000)
    return context, Watched(await context.new_page(), width)


async def sign_in(gateway: RunningGateway, watched: Watched, token: str) -> Page:
    page = watched.page
    await page.goto(f"{gateway.url}/console/")
    await page.wait_for_url("**/console/signin")
    await page.get_by_label("Admin token or API key").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/overview")
    await watched.check()
    return page


async def shot(page: Page, folder: Path, name: str, *, readme: bool = False) -> None:
    await page.screenshot(path=folder / f"{name}.png", full_page=True)
    target = os.environ.get("MUXPROXY_CONSOLE_SCREENSHOTS")
    if readme and target:
        await page.screenshot(path=Path(target) / f"console-{name}.png")


async def delivered(gateway: RunningGateway, job_id: str, attempts: int) -> None:
    """Until the job's callback was delivered with ``attempts`` attempts recorded."""
    async def done() -> bool:
        found = await gateway.state.store.get_delivery(job_id)
        return found is not None and found.attempts >= attempts \
            and found.status is DeliveryStatus.DELIVERED

    await eventually(done)


async def create_key(gateway: RunningGateway, name: str, credits: int = 1000) -> str:
    async with gateway.http.post(f"{gateway.url}/admin/keys",
                                 json={"name": name, "credits": credits},
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        body: Any = await resp.json()
        assert resp.status == 201, body
    secret: str = body["secret"]
    return secret


async def test_operator_signs_in_creates_a_key_and_copies_its_secret(
        gateway: RunningGateway, browser: Browser, tmp_path: Path) -> None:
    context, watched = await open_page(browser)
    await context.grant_permissions(["clipboard-read", "clipboard-write"],
                                    origin=gateway.url)
    page = await sign_in(gateway, watched, ADMIN_TOKEN)
    assert await page.get_by_role("heading", level=1).inner_text() == "Overview: every key"
    await shot(page, tmp_path, "operator-signed-in")

    await page.get_by_role("link", name="Keys").click()
    await page.get_by_label("Name", exact=True).fill("design-team")
    await page.get_by_label("Credits to start with").fill("250")
    await page.get_by_label("Jobs at once").fill("3")
    await page.get_by_role("button", name="Create key").click()
    await page.wait_for_selector("#secret")
    await watched.check()
    secret = await page.get_by_label("Secret of design-team").input_value()
    assert secret.startswith("mux_")
    await page.get_by_role("button", name="Copy secret").click()
    await page.get_by_text("Copied to the clipboard.").wait_for()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await shot(page, tmp_path, "key-created")

    # The secret works on the API, and the limits were stored through KeyAdmin.
    key = await gateway.state.store.key_named("design-team")
    assert key is not None and key.balance == 250 and key.limits.max_concurrent == 3
    async with gateway.http.get(f"{gateway.url}/v1/models",
                                headers={"Authorization": f"Bearer {secret}"}) as resp:
        assert resp.status == 200
    # Shown once: the key's page never shows it again.
    await page.get_by_role("link", name="Open key design-team").click()
    assert secret not in await page.content()
    await context.close()


async def test_team_generates_in_the_playground_then_redelivers_the_webhook(
        gateway: RunningGateway, browser: Browser, receiver: Receiver,
        tmp_path: Path) -> None:
    secret = await create_key(gateway, "studio")
    context, watched = await open_page(browser)
    page = await sign_in(gateway, watched, secret)
    assert await page.get_by_role("heading", level=1).inner_text() == "Overview: studio"
    await shot(page, tmp_path, "team-signed-in")

    await page.get_by_role("link", name="Playground").click()
    await page.get_by_label("Model").select_option("demo-image")
    await page.get_by_label("Aspect ratio").select_option("16:9")
    await page.get_by_label("Prompt").fill("a lighthouse at dusk")
    reference = tmp_path / "reference.png"
    reference.write_bytes(png_bytes())
    await page.get_by_label("Reference image (optional)").set_input_files(reference)
    await page.get_by_label("Callback URL (optional)").fill(receiver.url())
    await page.get_by_role("button", name="Generate").click()
    result = page.get_by_role("img", name="result image 1 of job")
    await result.wait_for()
    assert await page.locator("#job-state").inner_text() == "completed"
    assert await result.evaluate("img => img.complete && img.naturalWidth > 0")
    await watched.check()
    await shot(page, tmp_path, "playground-result")

    await page.get_by_role("heading", name="Job").get_by_role("link").click()
    await page.wait_for_url("**/console/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    await delivered(gateway, job_id, 1)
    await page.reload()
    attempts = page.get_by_role("table", name="Every attempt")
    assert await attempts.locator("tbody tr").count() == 1
    text = await page.content()
    assert "reference.png" not in text and "[image/png uploaded, redacted]" in text
    await page.get_by_role("button", name="Redeliver the callback").click()
    await page.get_by_text("The callback is being sent again.").wait_for()
    await delivered(gateway, job_id, 2)
    await page.reload()
    assert await attempts.locator("tbody tr").count() == 2
    await watched.check()
    assert [hit.json["data"]["taskId"] for hit in receiver.hits] == [job_id, job_id]
    await shot(page, tmp_path, "job", readme=True)
    await context.close()


async def test_a_revoked_key_loses_its_session(gateway: RunningGateway, browser: Browser,
                                                tmp_path: Path) -> None:
    secret = await create_key(gateway, "leaving")
    team_context, team = await open_page(browser)
    page = await sign_in(gateway, team, secret)
    operator_context, operator = await open_page(browser)
    admin = await sign_in(gateway, operator, ADMIN_TOKEN)
    await admin.get_by_role("link", name="Keys").click()
    await admin.get_by_role("link", name="leaving").click()
    await admin.get_by_label("Yes, revoke leaving for good").check()
    await admin.get_by_role("button", name="Revoke key").click()
    await admin.get_by_text("The key is revoked").wait_for()

    await page.get_by_role("link", name="Jobs").click()
    await page.wait_for_url("**/console/signin?ended=revoked")
    await page.get_by_text("its API key was revoked").wait_for()
    # The key cannot sign in again either.
    await page.get_by_label("Admin token or API key").fill(secret)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("neither the admin token nor a valid API key").wait_for()
    await team.check()
    await shot(page, tmp_path, "revoked-session-refused")
    await team_context.close()
    await operator_context.close()


async def test_a_team_view_never_shows_another_keys_job(
        gateway: RunningGateway, browser: Browser, tmp_path: Path) -> None:
    mine = await gateway.submit({"model": "demo-image", "prompt": "mine"}, key=KEY_A)
    theirs = await gateway.submit({"model": "demo-image", "prompt": "theirs"}, key=KEY_B)
    await gateway.wait_terminal(mine, KEY_A)
    await gateway.wait_terminal(theirs, KEY_B)
    bravo = await gateway.state.store.key_named("bravo")
    assert bravo is not None
    context, watched = await open_page(browser)
    page = await sign_in(gateway, watched, KEY_A)
    for path in ("/console/jobs", f"/console/jobs?key={bravo.id}",
                 "/console/jobs?since=1h&state=completed"):
        await page.goto(gateway.url + path)
        body = await page.content()
        assert mine in body and theirs not in body, path
        assert "Key" not in await page.locator("thead").inner_text()
    thumbnail = page.get_by_role("img", name=f"result of job {mine}")
    assert await thumbnail.evaluate("img => img.complete && img.naturalWidth > 0")
    await shot(page, tmp_path, "team-jobs")
    for path in (f"/console/jobs/{theirs}", f"/console/jobs/{theirs}/status"):
        response = await page.goto(gateway.url + path)
        assert response is not None and response.status == 404, path
        assert theirs not in await page.content() or "task not found" in await page.content()
    for path in ("/console/keys", "/console/providers"):
        response = await page.goto(gateway.url + path)
        assert response is not None and response.status == 403, path
    await shot(page, tmp_path, "team-refused")
    await context.close()


async def test_a_form_without_its_csrf_token_is_refused(
        gateway: RunningGateway, browser: Browser, tmp_path: Path) -> None:
    context, watched = await open_page(browser)
    page = await sign_in(gateway, watched, ADMIN_TOKEN)
    await page.get_by_role("link", name="Keys").click()
    # The form as a forged page would send it: without the token, or with another.
    for value in (None, "forged-token"):
        await page.evaluate("""v => { const f = document.querySelector(
                                          'form[action$="/keys"] input[name=csrf]');
                                      if (v === null) { f.remove(); } else { f.value = v; } }""",
                            value)
        await page.get_by_label("Name", exact=True).fill("forged")
        await page.get_by_role("button", name="Create key").click()
        await page.get_by_text("CSRF check failed").wait_for()
        assert await gateway.state.store.key_named("forged") is None
        await shot(page, tmp_path, f"csrf-refused-{value or 'missing'}")
        await page.goto(f"{gateway.url}/console/keys")
    # The same request from outside the page: no token, no change.
    reply = await page.request.post(f"{gateway.url}/console/keys",
                                    form={"name": "forged", "credits": "5"})
    assert reply.status == 403 and await gateway.state.store.key_named("forged") is None
    await context.close()


async def test_keyboard_alone_signs_in_and_runs_the_playground_at_390_px(
        gateway: RunningGateway, browser: Browser, tmp_path: Path) -> None:
    context, watched = await open_page(browser, NARROW)
    page = watched.page
    await page.goto(f"{gateway.url}/console/signin")
    await page.keyboard.type(KEY_A)  # the token box has the focus
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/overview")
    await watched.check()
    await shot(page, tmp_path, "overview-390")
    await tab_to(page, "a[href$='/console/playground']")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/playground")
    await tab_to(page, "#model")
    await tab_to(page, "#prompt")
    await page.keyboard.type("a paper boat, drawn with the keyboard")
    await tab_to(page, "button[type=submit]:not(.signout button)")
    await page.keyboard.press("Enter")
    await page.get_by_role("img", name="result image 1 of job").wait_for()
    await watched.check()
    await shot(page, tmp_path, "playground-390")
    for path in ("/console/jobs", "/console/overview"):
        await page.goto(gateway.url + path)
        await watched.check()
    await context.close()


async def test_operator_overview_charts_the_jobs(gateway: RunningGateway, browser: Browser,
                                                 tmp_path: Path) -> None:
    runs = [("demo-image", KEY_A), ("demo-image", KEY_A), ("demo-priced", KEY_B),
            ("demo-image", KEY_B), ("demo-priced", KEY_A), ("demo-broken", KEY_B)]
    for i, (model, key) in enumerate(runs):
        task = await gateway.submit({"model": model, "prompt": f"p{i}"}, key=key)
        await gateway.wait_terminal(task, key)
    context, watched = await open_page(browser)
    page = await sign_in(gateway, watched, ADMIN_TOKEN)
    tiles = await page.locator("dl.tiles").inner_text()
    for figure in ("Jobs today\n6", "Credits today\n8", "Failure rate, 30 days\n16.7%"):
        assert figure in tiles
    bars = page.get_by_role("img", name="Busiest models (jobs, 30 days)")
    assert await bars.locator("title").all_text_contents() == [
        "demo-image: 3", "demo-priced: 2", "demo-broken: 1"]
    await shot(page, tmp_path, "overview", readme=True)
    await page.get_by_role("link", name="Providers").click()
    cells = page.get_by_role("row", name="demo demo closed").locator("td")
    assert await cells.nth(4).inner_text() == "5"  # jobs in the last hour
    assert await cells.nth(5).inner_text() == "0.0%"
    cells = page.get_by_role("row", name="demo-broken").locator("td")
    assert (await cells.nth(4).inner_text(), await cells.nth(5).inner_text()) == ("1", "100.0%")
    await watched.check()
    await shot(page, tmp_path, "providers")
    await context.close()


async def test_a_running_job_is_cancelled_from_its_page(
        gateway: RunningGateway, browser: Browser, tmp_path: Path) -> None:
    running = await gateway.submit({"model": "demo-slow", "prompt": "forever"}, key=KEY_A)
    context, watched = await open_page(browser)
    page = await sign_in(gateway, watched, KEY_A)
    await page.goto(f"{gateway.url}/console/jobs/{running}")
    await page.get_by_role("button", name="Cancel this job").click()
    await page.get_by_text("The job was cancelled.").wait_for()
    assert "Failed (cancelled)" in await page.get_by_role("alert").inner_text()
    assert await page.get_by_role("button", name="Cancel this job").count() == 0
    job = await gateway.state.store.get_job(running)
    assert job is not None and job.fail_code == "cancelled"
    await watched.check()
    await shot(page, tmp_path, "job-cancelled")
    await context.close()
