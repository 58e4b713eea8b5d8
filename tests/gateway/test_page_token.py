"""The live page presents a token the way a browser can: as a subprotocol, from the fragment."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.gateway.conftest import GatewayFactory
from tests.test_up_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def test_the_page_connects_with_the_token_in_its_fragment(start_gateway: GatewayFactory) -> None:
    secured = start_gateway(gateway_auth_tokens="s3cret+/=é")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(secured.http_url + "/#token=" + "s3cret%2B%2F%3D%C3%A9")
            expect(page.locator("#status")).to_have_text("live", timeout=15_000)
            page = browser.new_page()
            page.goto(secured.http_url + "/#token=wrong")
            expect(page.locator("#status")).to_contain_text("disconnected", timeout=15_000)
        finally:
            browser.close()
