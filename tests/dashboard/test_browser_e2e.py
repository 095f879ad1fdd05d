"""End to end in headless Chromium: log in, walk every page, change the SSL listener through its form, and prove
each change (or refusal) with real TLS clients against the running broker. Screenshots of every page are written
to ``tests/dashboard/screenshots/``; the Listeners page also to ``docs/images/dashboard-listeners.png`` when ``WHARF_UPDATE_DOCS_IMAGES=1``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from wharf_broker.tls.devpki import new_key

from .conftest import DOCS_IMAGES, PASSWORD, TOKEN, screenshot, tls_probe


def wait_for(driver, css: str, timeout: float = 15):
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def login(driver, base: str, username: str, password: str) -> None:
    driver.get(base + "/dashboard/")
    wait_for(driver, "#password")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()


def set_switch(driver, name: str, on: bool) -> None:
    box = driver.find_element(By.ID, name)
    if box.is_selected() != on:
        # The real checkbox is visually hidden behind the switch: click what a person clicks.
        box.find_element(By.XPATH, "following-sibling::span[@class='slider']").click()
    assert box.is_selected() == on


def submit_ssl_form(driver, base: str, files: dict[str, bytes], tmp_path, *, verify: bool, fail: bool) -> None:
    driver.get(base + "/dashboard/listeners/ssl%3Adefault")
    wait_for(driver, "#ssl-form")
    set_switch(driver, "verify", verify)
    set_switch(driver, "fail_if_no_peer_cert", fail)
    for name, data in files.items():
        path = tmp_path / f"upload-{name}-{time.monotonic_ns()}.pem"
        path.write_bytes(data)
        driver.find_element(By.ID, name).send_keys(str(path))
    driver.find_element(By.ID, "update").click()


def field_error(driver, name: str) -> str:
    return wait_for(driver, f"#error-{name}").text


def connected_tls_client(port: int, pki, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.dir / "ca.crt"), certfile=str(pki.dir / "client.crt"),
                   keyfile=str(pki.dir / "client.key"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.is_connected(), "the MQTT client over TLS did not connect"
    return client


def test_dashboard_end_to_end(browser, dashboard_broker, pki, tmp_path):
    broker, driver = dashboard_broker, browser
    base = broker.admin_url
    ssl_port = broker.port("ssl:default")
    old_fingerprint = pki.server.fingerprint

    # Before: one-way TLS, the old certificate; a client without a certificate gets in.
    before = tls_probe(ssl_port, pki)
    assert before.fingerprint == old_fingerprint and before.connected, before

    # Login: a wrong password is refused on the page; then the admin token logs in.
    login(driver, base, "admin", "not the password")
    assert "Wrong username, password or token" in wait_for(driver, ".flash-bad").text
    screenshot(driver, "01-login")
    login(driver, base, "admin", PASSWORD)
    wait_for(driver, "[data-stat=node]")
    assert "/dashboard/" in driver.current_url and PASSWORD not in driver.current_url

    # Overview: node, uptime, connections, message rates and the listeners with their state.
    publisher = connected_tls_client(ssl_port, pki, "overview-publisher")
    try:
        for number in range(20):
            publisher.publish("dashboard/test", f"message {number}", qos=1).wait_for_publish(5)
        driver.get(base + "/dashboard/")
        stats = {card.get_attribute("data-stat"): card.text for card in
                 driver.find_elements(By.CSS_SELECTOR, "[data-stat]")}
        assert "wharf@dashboard-test" in stats["node"]
        assert re.fullmatch(r"UPTIME\n\d+s\nsince \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", stats["uptime"]), stats
        assert "20 received" in stats["messages in"], stats
        assert stats["connections"].splitlines()[1] == "1", stats
        rows = driver.find_element(By.ID, "overview-listeners").text
        assert "ssl:default" in rows and "tcp:default" in rows and "running" in rows
        assert "1 / 512" in rows
        screenshot(driver, "02-overview")
    finally:
        publisher.loop_stop()
        publisher.disconnect()

    # Listeners: type, bind, connections/max, and the served certificate's subject, expiry and fingerprint.
    driver.find_element(By.LINK_TEXT, "Listeners").click()
    table = wait_for(driver, "#listeners").text
    assert f"127.0.0.1:{ssl_port}" in table
    assert "broker-before" in table and "O=Wharf Test, C=SE" in table
    assert ":".join(old_fingerprint[i:i + 2] for i in range(0, 64, 2)).upper() in table
    assert "days left" in table
    screenshot(driver, "03-listeners", also=DOCS_IMAGES / "dashboard-listeners.png")

    # The SSL listener form: every field of EMQX's list, with its defaults.
    driver.find_element(By.LINK_TEXT, "ssl:default").click()
    wait_for(driver, "#ssl-form")
    for name in ("verify", "certfile", "keyfile", "cacertfile", "fail_if_no_peer_cert", "depth", "password",
                 "enable_ocsp_stapling", "enable_crl_check", "ciphers", "reload_interval"):
        assert driver.find_elements(By.ID, name), f"no field {name}"
    assert driver.find_element(By.ID, "depth").get_attribute("value") == "10"
    checked = {box.get_attribute("value") for box in driver.find_elements(By.NAME, "versions") if box.is_selected()}
    assert checked == {"tlsv1.3", "tlsv1.2"}
    # Fail If No Peer Cert follows TLS Verify.
    assert not driver.find_element(By.ID, "fail_if_no_peer_cert").is_enabled()
    set_switch(driver, "verify", True)
    assert driver.find_element(By.ID, "fail_if_no_peer_cert").is_enabled()
    assert "PRIVATE KEY" not in driver.page_source
    screenshot(driver, "04-ssl-listener-form")

    new_server = pki.ca.issue("broker-after", server=True, sans=["localhost", "127.0.0.1"])
    stranger = new_key()
    expired = pki.ca.issue("broker-expired", server=True, sans=["localhost"],
                           not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30),
                           not_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    from cryptography.hazmat.primitives import serialization
    stranger_pem = stranger.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    wrong_uploads = [
        ("mismatched key", {"certfile": new_server.cert_pem(), "keyfile": stranger_pem}, "keyfile",
         "does not match"),
        ("expired certificate", {"certfile": expired.cert_pem(), "keyfile": expired.key_pem()}, "certfile",
         "not valid now"),
        ("garbage", {"certfile": b"this is not a certificate\n", "keyfile": new_server.key_pem()}, "certfile",
         "not a PEM certificate"),
    ]
    for number, (what, files, field, message) in enumerate(wrong_uploads, 1):
        submit_ssl_form(driver, base, files, tmp_path, verify=True, fail=True)
        error = field_error(driver, field)
        assert message in error, f"{what}: {error!r}"
        assert "Nothing was changed" in driver.find_element(By.ID, "error-summary").text
        assert "PRIVATE KEY" not in driver.page_source
        if number == 1:
            screenshot(driver, "05-ssl-listener-refused-upload")
        # Nothing changed, not even the switches posted with the bad files: same certificate, no client
        # certificate needed.
        probe = tls_probe(ssl_port, pki)
        assert probe.fingerprint == old_fingerprint and probe.connected, (what, probe)
        status, body = broker.admin("GET", "/api/v5/listeners/ssl:default")
        assert status == 200
        options = json.loads(body)["ssl_options"]
        assert options["verify"] == "verify_none" and options["certfile"] == str(pki.dir / "server.crt"), what

    # The real change: TLS Verify and Fail If No Peer Cert on, a new certificate and key → Update.
    submit_ssl_form(driver, base, {"certfile": new_server.cert_pem(), "keyfile": new_server.key_pem()},
                    tmp_path, verify=True, fail=True)
    assert "Updated ssl:default" in wait_for(driver, ".flash-good").text
    assert driver.find_element(By.ID, "verify").is_selected()
    assert driver.find_element(By.ID, "fail_if_no_peer_cert").is_selected()
    screenshot(driver, "06-ssl-listener-updated")

    # A real TLS client proves it: the new certificate is served, a client without a certificate is refused,
    # one with a certificate from the CA gets in.
    refused = tls_probe(ssl_port, pki)
    assert not refused.connected, refused
    admitted = tls_probe(ssl_port, pki, client=pki.client)
    assert admitted.fingerprint == new_server.fingerprint and admitted.connected, admitted
    status, body = broker.admin("GET", "/api/v5/listeners/ssl:default")
    assert status == 200
    options = json.loads(body)["ssl_options"]
    assert options["verify"] == "verify_peer" and options["fail_if_no_peer_cert"] is True
    # The uploads live in the upload dir, the key readable only by the broker's user.
    keyfile = options["keyfile"]
    assert keyfile.startswith(str(tmp_path / "uploads" / "ssl-default")), keyfile
    assert os.stat(keyfile).st_mode & 0o077 == 0

    # Certificates: what is served now, when it was loaded, reload state; "Reload now".
    driver.find_element(By.LINK_TEXT, "Certificates").click()
    card = wait_for(driver, "[data-listener='ssl:default']").text
    assert "CN=broker-after" in card
    assert ":".join(new_server.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper() in card
    assert "Last reload error" in card and "none" in card
    driver.find_element(By.ID, "reload-ssl-default").click()
    assert "unchanged" in wait_for(driver, ".flash-good").text
    screenshot(driver, "07-certificates")

    # Clients: listener, protocol version, TLS version and cipher, client-certificate subject.
    client = connected_tls_client(ssl_port, pki, "sensor-7")
    try:
        driver.find_element(By.LINK_TEXT, "Clients").click()
        rows = wait_for(driver, "#clients").text
        assert "sensor-7" in rows and "ssl:default" in rows and "MQTT 5.0" in rows
        assert "TLSv1.3" in rows and "CN=device-42" in rows
        screenshot(driver, "08-clients")
        # Searching narrows the (paged) list; a search nothing matches says so.
        search = driver.find_element(By.ID, "search-like_clientid")
        search.send_keys("sensor")
        driver.find_element(By.ID, "search").click()
        WebDriverWait(driver, 15).until(lambda d: "like_clientid=sensor" in d.current_url)
        assert "sensor-7" in wait_for(driver, "#clients").text
        assert "1 of" in driver.find_element(By.CSS_SELECTOR, ".card h2").text
        search = driver.find_element(By.ID, "search-like_clientid")
        search.clear()
        search.send_keys("nobody-here")
        driver.find_element(By.ID, "search").click()
        WebDriverWait(driver, 15).until(lambda d: "nobody-here" in d.current_url)
        assert "No client matches the search." in wait_for(driver, "#clients").text
    finally:
        client.loop_stop()
        client.disconnect()

    # Logging out ends the session.
    driver.find_element(By.CSS_SELECTOR, "button.link").click()
    wait_for(driver, "#password")
    driver.get(base + "/dashboard/listeners")
    wait_for(driver, "#password")


def test_token_login_in_browser(browser, dashboard_broker):
    login(browser, dashboard_broker.admin_url, "", TOKEN)
    assert "Overview" in wait_for(browser, "h1").text


@pytest.fixture
def managed_broker(broker_process, pki, tmp_path):
    from .conftest import broker_config
    return broker_process(broker_config(pki, tmp_path / "uploads", 'managed_by = "iot/edge-broker"'), token=TOKEN)


def test_managed_listener_is_read_only(browser, managed_broker):
    login(browser, managed_broker.admin_url, "admin", PASSWORD)
    wait_for(browser, "[data-stat=node]")
    browser.get(managed_broker.admin_url + "/dashboard/listeners/ssl%3Adefault")
    wait_for(browser, "#ssl-form")
    assert "iot/edge-broker" in browser.find_element(By.CSS_SELECTOR, ".managed-banner").text
    assert "Owned by MQTTBroker iot/edge-broker" in browser.find_element(By.ID, "field-verify").text
    for name in ("verify", "certfile", "keyfile", "depth", "ciphers"):
        assert not browser.find_element(By.ID, name).is_enabled(), name
    assert not browser.find_elements(By.ID, "update")
    # Live state is still shown.
    assert "CN=broker-before" in browser.page_source
    screenshot(browser, "09-managed-listener")
