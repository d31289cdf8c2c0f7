"""The console in headless Chromium: sign in; overview counts that add up; the task list
with filters and times in the browser's time zone; a task page with its error per attempt,
result, payload, durations and logs, updated live without moving the reader; triggers; the
invoke form; search by id; the banner while NATS is away.

With FNGATE_SCREENSHOTS=1 the main views are saved to docs/images/ for the README.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.tasks.invocation import parse_iso
from tests.conftest import Api, GatewayFactory
from tests.services import ROOT, NatsServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "dashboard-admin-token-123"
IMAGES = ROOT / "docs" / "images"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ZONE = "Asia/Kolkata"  # +05:30: an offset that is not a whole hour shows every mistake
SCREENSHOTS = ("overview", "tasks", "task", "task-failed", "triggers", "invoke")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def shot(page: Page, name: str) -> None:
    if os.environ.get("FNGATE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(IMAGES / f"{name}.png"), full_page=True)


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url + "/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", TOKEN)
    await page.click("#login-form button")
    await expect(page.locator("#login")).to_be_hidden()


def admin_api(nats_url: str, functions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "nats": {"url": nats_url},
        "api": {"tokens": [{"name": "ops", "token": TOKEN, "scopes": ["admin"]}]},
        "functions": functions,
        **extra,
    }


async def test_dashboard_end_to_end(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    work, slow, fail = unique("resize"), unique("report"), unique("notify")
    gw = gateway_factory(
        admin_api(
            nats_server.url,
            {
                work: {"handler": "python:examples.functions:chatty"},
                slow: {"handler": "python:examples.functions:sleepy", "timeout": "120s"},
                fail: {
                    "handler": "python:examples.functions:fail",
                    "async": {"max_retries": 1, "retry_delay": "100ms"},
                },
            },
        )
    )
    api = Api(http, gw.url, token=TOKEN)
    done = [await api.submit(work, {"lines": 3}) for _ in range(3)]
    failed = await api.submit(fail, {"image": "cat.png"})
    for task_id in done:
        await api.wait_status(task_id, "Succeeded")
    await api.wait_status(failed, "Failed")
    stopped = await api.submit(slow, {"seconds": 0}, X_Delay="3600")
    await api.post(f"/v1/tasks/{stopped}/stop")
    queued = await api.submit(slow, {"seconds": 0}, X_Delay="3600")

    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await sign_in(page, gw.url)
    # Overview: per function, the states add up to the total submitted.
    card = page.locator(f'.card[data-function="{work}"]')
    await expect(card.locator('[data-count="succeeded"]')).to_have_text("3")
    await expect(card.locator('[data-count="total"]')).to_have_text("3")
    slow_card = page.locator(f'.card[data-function="{slow}"]')
    await expect(slow_card.locator('[data-count="stopped"]')).to_have_text("1")
    await expect(slow_card.locator('[data-count="queued"]')).to_have_text("1")
    await expect(page.locator(f'.card[data-function="{fail}"] [data-count="failed"]')).to_have_text("1")
    for name in (work, slow, fail):
        total = page.locator(f'.card[data-function="{name}"] [data-count="total"]')
        assert await total.get_attribute("data-sum") == await total.text_content(), name
    # Charts of the last hour, drawn from the index: the tasks just run are on them.
    counts = page.locator(f'.stats[data-stats="{work}"] svg[data-chart="counts"]')
    await expect(counts).to_be_visible(timeout=15_000)
    await expect(counts.locator('g[data-series="submitted"]')).to_have_attribute("data-total", "3", timeout=15_000)
    await expect(counts.locator('g[data-series="succeeded"]')).to_have_attribute("data-total", "3")
    await expect(counts.locator('g[data-series="submitted"] polyline')).not_to_have_count(0)
    failing = page.locator(f'.stats[data-stats="{fail}"] svg[data-chart="counts"] g[data-series="failed"]')
    await expect(failing).to_have_attribute("data-total", "1", timeout=15_000)
    latency = page.locator(f'.stats[data-stats="{work}"] svg[data-chart="latency"] g[data-series="p99"]')
    await expect(latency.locator("circle")).not_to_have_count(0)  # a point where the tasks ended
    await expect(page.locator(f'.stats[data-stats="{work}"] [data-latency="end_to_end"]')).to_contain_text("(3 tasks)")
    await shot(page, "overview")

    await page.goto(gw.url + "/#/tasks")
    for task_id in done:
        await expect(page.locator(f'tr[data-task="{task_id}"]')).to_be_visible()
    late = await api.submit(work, {"lines": 1})
    await expect(page.locator(f'tr[data-task="{late}"]')).to_be_visible(timeout=10_000)
    await expect(page.locator(f'tr[data-task="{done[0]}"] td[data-duration]')).not_to_have_attribute(
        "data-duration", ""
    )
    await shot(page, "tasks")
    # The session's nats-server holds other tests' tasks too: filter by function, then status.
    await page.select_option("#filter-function", work)
    await page.select_option("#filter-status", "Failed")
    await expect(page.locator("#tasks tbody td.muted")).to_have_text("no tasks")
    await page.select_option("#filter-function", fail)
    await expect(page.locator(f'tr[data-task="{failed}"]')).to_be_visible()
    await expect(page.locator("#tasks tbody tr")).to_have_count(1)

    # A failed task: its error up top, one error per attempt, payload, traceback in the logs.
    await page.click(f'tr[data-task="{failed}"] a.task')
    await expect(page.locator("#task-error .type")).to_contain_text("FunctionError")
    await expect(page.locator("#task-error .message")).to_contain_text("failing on purpose (attempt 2)")
    await expect(page.locator("#attempts tbody tr")).to_have_count(2)
    await expect(page.locator('#attempts [data-attempt="1"] .attempt-error')).to_contain_text("(attempt 1)")
    await expect(page.locator('#attempts [data-attempt="1"] [data-status="Retrying"]')).to_be_visible()
    await expect(page.locator("#payload")).to_contain_text('"image": "cat.png"')
    await expect(page.locator("#logs")).to_contain_text("Traceback (most recent call last)")
    await expect(page.locator('#timeline [data-phase="Retrying"]')).to_be_visible()
    await expect(page.locator("#stop")).to_be_disabled()
    await shot(page, "task-failed")

    running = await api.submit(slow, {"seconds": 60})
    await api.wait_status(running, "Running")
    await page.goto(f"{gw.url}/#/task/{running}")
    await expect(page.locator('#task-status [data-status="Running"]')).to_be_visible()
    await page.click("#stop")
    await expect(page.locator('#task-status [data-status="Stopped"]')).to_be_visible(timeout=15_000)
    assert (await api.task(running))["status"] == "Stopped"
    await page.goto(f"{gw.url}/#/task/{done[0]}")
    await expect(page.locator("#logs")).to_contain_text("line 3 of 3")
    await expect(page.locator("#task-result")).to_contain_text('"lines": 3')
    await shot(page, "task")

    # Search by id: a known id opens the task.
    await page.fill("#search-id", failed)
    await page.press("#search-id", "Enter")
    await expect(page.locator("#task-title code")).to_have_text(failed)
    await api.post(f"/v1/tasks/{queued}/stop")
    await page.close()


async def test_task_page_updates_live_and_keeps_the_scroll_position(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    slow = unique("live")
    gw = gateway_factory(admin_api(nats_server.url, {slow: {"handler": "python:examples.functions:sleepy"}}))
    api = Api(http, gw.url, token=TOKEN)
    page = await browser.new_page(viewport={"width": 1000, "height": 420})
    await sign_in(page, gw.url)
    task_id = await api.submit(slow, {"seconds": 3, "items": [f"item {i}" for i in range(40)]})
    await page.goto(f"{gw.url}/#/task/{task_id}")
    await expect(page.locator('#task-status [data-status="Running"]')).to_be_visible()
    await expect(page.locator("#payload")).to_contain_text("item 39")
    await page.evaluate("document.getElementById('payload').dataset.mark = 'kept'")
    # The reader scrolled down to the payload and logs, below the parts that will change.
    await page.evaluate("document.querySelector('.detail').scrollIntoView()")
    before = await page.evaluate("window.scrollY")
    anchor = await page.locator("#logs").bounding_box()
    assert before > 0 and anchor is not None
    # The stream brings the end: the page changes in place, the reader stays where they were.
    await expect(page.locator('#task-status [data-status="Succeeded"]')).to_be_visible(timeout=15_000)
    await expect(page.locator("#task-result")).to_contain_text('"slept": 3')
    assert await page.evaluate("document.getElementById('payload').dataset.mark") == "kept"
    after = await page.locator("#logs").bounding_box()
    assert after is not None and abs(after["y"] - anchor["y"]) < 2, (anchor, after)
    await page.close()


def local_text(iso: str, zone: str) -> str:
    return datetime.fromtimestamp(parse_iso(iso), ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


async def test_list_times_round_trip_in_the_browser_time_zone(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    fn = unique("tz")
    gw = gateway_factory(admin_api(nats_server.url, {fn: {"handler": "python:examples.functions:echo"}}))
    api = Api(http, gw.url, token=TOKEN)
    ids = [await api.submit(fn, {"i": i}) for i in range(2)]
    records = [await api.wait_status(task_id, "Succeeded") for task_id in ids]
    context = await browser.new_context(timezone_id=ZONE, viewport={"width": 1400, "height": 800})
    page = await context.new_page()
    assert await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") in (ZONE, "Asia/Calcutta")
    await sign_in(page, gw.url)
    await page.goto(f"{gw.url}/#/tasks?function={fn}")
    first = page.locator(f'tr[data-task="{ids[0]}"]')
    await expect(first.locator("td.time").first).to_have_text(local_text(records[0]["submitted_at"], ZONE))

    # "since" one second before the first task, typed as a wall time of the browser's zone.
    moment = datetime.fromtimestamp(int(parse_iso(records[0]["submitted_at"])) - 1, ZoneInfo(ZONE))
    typed = moment.strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("#filter-since", typed)
    await page.dispatch_event("#filter-since", "change")
    await expect(page.locator(f'tr[data-task="{ids[1]}"]')).to_be_visible()
    await expect(first).to_be_visible()
    since = parse_qs(unquote(page.url.split("?", 1)[1]))["since"][0]
    assert parse_iso(since) == moment.timestamp(), since
    await page.reload()
    # Round trip through the URL. The input's value is the normalized form HTML gives a local
    # date and time: without its seconds when they are zero (one run in sixty).
    await expect(page.locator("#filter-since")).to_have_value(typed.removesuffix(":00"))
    await expect(first).to_be_visible()

    # "until" before the first task: nothing; shifting by the zone's offset would show them.
    until = (moment - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("#filter-until", until)
    await page.dispatch_event("#filter-until", "change")
    await expect(page.locator("#tasks tbody td.muted")).to_have_text("no tasks")
    await context.close()


async def test_triggers_page_and_invoke_form(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    fn, tick = unique("inv"), unique("tick")
    gw = gateway_factory(
        admin_api(
            nats_server.url,
            {fn: {"handler": "python:examples.functions:echo"}},
            triggers=[{"name": tick, "type": "timer", "every": "1s", "function": fn, "payload": {"tick": True}}],
        )
    )
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await sign_in(page, gw.url)
    await page.click("#nav-triggers")
    row = page.locator(f'tr[data-trigger="{tick}"]')
    await expect(row.locator('[data-status="running"]')).to_be_visible()
    await expect(row.locator('[data-counter="invocations"]')).not_to_have_text("0", timeout=10_000)
    await shot(page, "triggers")

    await page.click("#nav-invoke")
    await page.select_option("#invoke-function", fn)
    await page.fill("#invoke-payload", '{"from": "the form"}')
    await shot(page, "invoke")
    await page.click("#invoke-send")
    await expect(page.locator('#task-status [data-status="Succeeded"]')).to_be_visible(timeout=15_000)
    await expect(page.locator("#task-result")).to_contain_text('"from": "the form"')
    await expect(page.locator("#payload")).to_contain_text('"from": "the form"')

    await page.click("#nav-invoke")
    await page.select_option("#invoke-function", fn)
    await page.select_option("#invoke-mode", "sync")
    await page.fill("#invoke-payload", '{"sync": 1}')
    await page.click("#invoke-send")
    await expect(page.locator("#invoke-result")).to_contain_text("200")
    await expect(page.locator("#invoke-result")).to_contain_text('"sync": 1')
    await page.close()


async def test_banner_instead_of_stale_data_while_nats_is_away(
    gateway_factory: GatewayFactory, browser: Browser, tmp_path: Path, unique: Any
) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        fn = unique("banner")
        gw = gateway_factory(admin_api(nats.url, {fn: {"handler": "python:examples.functions:echo"}}))
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await sign_in(page, gw.url)
        card = page.locator(f'.card[data-function="{fn}"]')
        await expect(card).to_be_visible()
        await expect(page.locator("#banner")).to_be_hidden()
        nats.stop()
        await expect(page.locator("#banner")).to_contain_text("cannot reach NATS", timeout=15_000)
        await expect(card).to_be_hidden()
        nats.start()
        await expect(page.locator("#banner")).to_be_hidden(timeout=20_000)
        await expect(card).to_be_visible()
        await page.close()
    finally:
        nats.stop()


def test_screenshots_are_committed() -> None:
    for name in SCREENSHOTS:
        assert (IMAGES / f"{name}.png").stat().st_size > 10_000, name


async def test_bulk_rerun_from_the_task_list(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    fail = unique("redrive")
    gw = gateway_factory(
        admin_api(nats_server.url, {fail: {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}}})
    )
    api = Api(http, gw.url, token=TOKEN)
    failed = [await api.submit(fail, {"n": n}) for n in range(4)]
    for task_id in failed:
        await api.wait_status(task_id, "Failed")

    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("dialog", lambda dialog: dialog.accept())
    await sign_in(page, gw.url)
    await page.goto(f"{gw.url}/#/tasks?function={fail}&status=Failed")
    # The total matched is the dry-run count of the filter (the index may trail a moment).
    for _ in range(20):
        await expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(4)
        if await page.locator("#bulk-matched").text_content() == "4":
            break
        await page.reload()
    await expect(page.locator("#bulk-matched")).to_have_text("4")
    await expect(page.locator("#tasks-count")).to_contain_text("of 4 matching")

    # One picked row: one rerun; the pick survives the list's refreshes.
    await page.check(f'input[data-pick="{failed[0]}"]')
    await expect(page.locator("#bulk-picked")).to_have_text("1 picked")
    await page.click("#bulk-rerun")
    await expect(page.locator("#bulk-progress")).to_have_attribute("data-status", "Succeeded")
    await expect(page.locator("#bulk-progress")).to_contain_text("1/1 done")

    # The rerun failed too: the count follows the list's refreshes.
    await expect(page.locator("#bulk-matched")).to_have_text("5", timeout=20_000)

    # All matching: one bulk operation, followed to its end.
    await page.check("#select-all-matching")
    await expect(page.locator("#bulk-picked")).to_have_text("(5 tasks)")
    await page.click("#bulk-rerun")
    await expect(page.locator("#bulk-progress")).to_have_attribute("data-status", "Succeeded", timeout=30_000)
    await expect(page.locator("#bulk-progress")).to_contain_text("5/5 done, 0 failed")
    await expect(page.locator("#bulk-progress-bar")).to_have_js_property("max", 5)
    await expect(page.locator("#bulk-progress-bar")).to_have_js_property("value", 5)
    op_id = await page.locator("#bulk-progress").get_attribute("data-operation")
    status, op = await api.get(f"/v1/operations/{op_id}")
    assert status == 200 and (op["kind"], op["matched"], op["done"]) == ("rerun", 5, 5)
    await shot(page, "tasks-bulk")

    async def reruns() -> list[str] | None:
        _, body = await api.get(f"/v1/tasks?function={fail}&limit=100")
        found = [t["rerun_of"] for t in body["tasks"] if t.get("rerun_of")]
        return found if len(found) >= 6 else None

    from tests.conftest import wait_until

    found = await wait_until(reruns)
    # The picked one twice (by hand, then in bulk), the others and the first rerun once each.
    assert len(found) == 6 and found.count(failed[0]) == 2 and set(failed) <= set(found)
    await page.close()


async def test_bulk_stop_progress_bar_moves_to_its_end(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    """A bulk stop of thousands of waiting tasks from the list: the bar shows the operation
    part way, never goes back, and ends full (FNGATE_SCREENSHOTS=1 saves it part way)."""
    later = unique("nightly")
    gw = gateway_factory(admin_api(nats_server.url, {later: {"handler": "python:examples.functions:noop"}}))
    api = Api(http, gw.url, token=TOKEN)
    n = 3000
    slots = asyncio.Semaphore(32)

    async def submit(i: int) -> str:
        async with slots:
            return await api.submit(later, {"n": i}, X_Delay="3600")

    await asyncio.gather(*(submit(i) for i in range(n)))
    page = await browser.new_page(viewport={"width": 1280, "height": 560})
    page.on("dialog", lambda dialog: dialog.accept())
    await sign_in(page, gw.url)
    await page.goto(f"{gw.url}/#/tasks?function={later}&status=Enqueued")
    for _ in range(40):  # the index may trail the submits a moment
        await expect(page.locator("#bulk-matched")).not_to_have_text("")
        if await page.locator("#bulk-matched").text_content() == str(n):
            break
        await page.reload()
    await expect(page.locator("#bulk-matched")).to_have_text(str(n))
    await page.check("#select-all-matching")
    # Every state the bar shows, as the page draws it.
    await page.evaluate(
        """() => { window.seen = []; new MutationObserver(() => {
             const bar = document.getElementById("bulk-progress-bar");
             const status = document.getElementById("bulk-progress").dataset.status;
             if (bar) window.seen.push([bar.value, bar.max, status]);
           }).observe(document.getElementById("bulk-progress"), {subtree: true, childList: true, attributes: true,
                                                                characterData: true}); }"""
    )
    await page.click("#bulk-stop")
    progress = page.locator("#bulk-progress")
    await expect(progress).to_have_attribute("data-status", "Running")
    if os.environ.get("FNGATE_SCREENSHOTS") == "1":
        # Part way, for the docs: as soon as some of it is done (or it ended first).
        await page.wait_for_function(
            """() => { const bar = document.getElementById("bulk-progress-bar");
                       const status = document.getElementById("bulk-progress").dataset.status;
                       return bar.value > 0 || status !== "Running"; }"""
        )
        await page.locator("#bulk-bar").screenshot(path=str(IMAGES / "bulk-progress.png"))
    await expect(progress).to_have_attribute("data-status", "Succeeded", timeout=60_000)
    await expect(progress).to_contain_text(f"{n}/{n} done, 0 failed")
    await expect(page.locator("#bulk-progress-bar")).to_have_js_property("value", n)
    seen = [tuple(s) for s in await page.evaluate("window.seen") if s[2]]
    running = [value for value, top, status in seen if status == "Running" and top == n]
    assert running and min(running) < n, seen  # shown part way
    values = [value for value, top, _ in seen if top == n]
    assert values == sorted(values), seen  # never back
    status, body = await api.get(f"/v1/tasks?function={later}&status=Stopped&limit=1")
    assert status == 200 and body["tasks"], body
    await page.close()
