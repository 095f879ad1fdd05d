"""Headless Chromium against a broker without an admin token (password login only): the Dashboard still works
through its loopback address, and the same broker reached under a foreign DNS name (Chromium maps evil.example
to 127.0.0.1, as a DNS-rebinding attacker would) answers nothing but refusals."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from .conftest import CHROMEDRIVER, CHROMIUM, PASSWORD, TOKEN, broker_config
from .test_browser_e2e import login, submit_ssl_form, wait_for


@pytest.fixture
def rebinding_browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP evil.example 127.0.0.1", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


def test_dashboard_without_a_token(broker_process, pki, tmp_path, rebinding_browser):
    config = broker_config(pki, tmp_path / "uploads").replace(f'token = "{TOKEN}"', "")
    broker = broker_process(config)
    port = int(broker.admin_url.rsplit(":", 1)[1])
    driver = rebinding_browser

    # Under the attacker's name: the login page, the API and its metrics are all refused.
    for path in ("/dashboard/login", "/api/v5/listeners", "/metrics"):
        driver.get(f"http://evil.example:{port}{path}")
        assert "FOREIGN_HOST" in driver.page_source, path
    # A script on the attacker's page cannot read or change anything either.
    driver.get(f"http://evil.example:{port}/healthz")
    result = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v5/listeners/ssl:default', {method: 'PUT', headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({ssl_options: {verify: 'verify_none'}})})
          .then(r => done(r.status)).catch(e => done(String(e)));
    """)
    assert result == 403

    # Through its own address the Dashboard works: log in with the password, change the SSL listener by form.
    base = f"http://localhost:{port}"
    login(driver, base, "admin", PASSWORD)
    wait_for(driver, "nav")
    submit_ssl_form(driver, base, {}, tmp_path, verify=True, fail=False)
    assert "Updated ssl:default" in wait_for(driver, ".flash-good").text
    with urllib.request.urlopen(broker.admin_url + "/api/v5/listeners/ssl:default", timeout=10) as response:
        assert json.loads(response.read())["ssl_options"]["verify"] == "verify_peer"
