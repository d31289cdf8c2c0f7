"""The dashboard in headless Chromium: sign in, watch tasks appear, filter, open one, stop one.

With FNGATE_SCREENSHOTS=1 the main views are saved to docs/images/ for the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

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


async def test_dashboard_end_to_end(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, browser: Browser, unique: Any
) -> None:
    work, slow, fail = unique("resize"), unique("report"), unique("notify")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "api": {"tokens": [{"name": "ops", "token": TOKEN, "scopes": ["admin"]}]},
            "functions": {
                work: {"handler": "python:examples.functions:chatty"},
                slow: {"handler": "python:examples.functions:sleepy", "timeout": "120s"},
                fail: {
                    "handler": "python:examples.functions:fail",
                    "async": {"max_retries": 1, "retry_delay": "100ms"},
                },
            },
        }
    )
    api = Api(http, gw.url, token=TOKEN)
    done = [await api.submit(work, {"lines": 3}) for _ in range(3)]
    failed = await api.submit(fail, {})
    for task_id in done:
        await api.wait_status(task_id, "Succeeded")
    await api.wait_status(failed, "Failed")

    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(gw.url + "/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", TOKEN)
    await page.click("#login-form button")
    card = page.locator(f'.card[data-function="{work}"]')
    await expect(card.locator('[data-count="completed"]')).to_have_text("3")
    await shot(page, "overview")

    await page.goto(gw.url + "/#/tasks")
    for task_id in done:
        await expect(page.locator(f'tr[data-task="{task_id}"]')).to_be_visible()
    late = await api.submit(work, {"lines": 1})
    await expect(page.locator(f'tr[data-task="{late}"]')).to_be_visible(timeout=10_000)
    await shot(page, "tasks")
    # The session's nats-server holds other tests' tasks too: filter by function, then status.
    await page.select_option("#filter-function", work)
    await page.select_option("#filter-status", "Failed")
    await expect(page.locator("#tasks tbody td.muted")).to_have_text("no tasks")
    await page.select_option("#filter-function", fail)
    await expect(page.locator(f'tr[data-task="{failed}"]')).to_be_visible()
    await expect(page.locator("#tasks tbody tr")).to_have_count(1)

    await page.click(f'tr[data-task="{failed}"] a.task')
    await expect(page.locator('#timeline [data-phase="Retrying"]')).to_be_visible()
    await expect(page.locator("#stop")).to_be_disabled()

    running = await api.submit(slow, {"seconds": 60})
    await api.wait_status(running, "Running")
    await page.goto(f"{gw.url}/#/task/{running}")
    await expect(page.locator('h2 [data-status="Running"]')).to_be_visible()
    await page.click("#stop")
    await expect(page.locator('h2 [data-status="Stopped"]')).to_be_visible(timeout=15_000)
    assert (await api.task(running))["status"] == "Stopped"
    await page.goto(f"{gw.url}/#/task/{done[0]}")
    await expect(page.locator("#logs")).to_contain_text("line 3 of 3")
    await shot(page, "task")
    await page.close()


def test_screenshots_are_committed() -> None:
    for name in ("overview", "tasks", "task"):
        assert (IMAGES / f"{name}.png").stat().st_size > 10_000, name
