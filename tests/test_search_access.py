"""Access to the search service (issue 30, item 5): API keys, read-only or admin, required when serving beyond
loopback, compared in constant time, rate-limited per key and never logged; CORS off unless asked; the page
works with a key (Chromium); an admin key starts an index update the service follows."""

import json
import logging
import os
import shutil
import stat
import time

import pytest

import dualtower
from dualtower.cli import main
from dualtower.search import SearchIndex, build_index
from dualtower.search.access import Access, read_keys

from .test_search import QUERIES, _Server, chromium, digits, trained  # noqa: F401 (fixtures)


@pytest.fixture()
def served(trained, digits, tmp_path, capsys):  # noqa: F811
    """An index of two digit classes, a keys file with a read key, a slow read key and an admin key."""
    folder = tmp_path / "images"
    for name in ("three", "seven"):
        shutil.copytree(digits / name, folder / name)
    model = dualtower.load(trained)
    build_index(str(folder), model, tmp_path / "index", workers=0)
    keys = {}
    for name, extra in (("reader", []), ("slow", ["--per-minute", "3"]), ("boss", ["--admin"])):
        assert main(["keys", "add", str(tmp_path / "keys.json"), name, *extra]) == 0
        keys[name] = capsys.readouterr().out.strip()
    return folder, tmp_path / "index", tmp_path / "keys.json", keys, model


def test_the_keys_file_keeps_digests_only(served, capsys):
    _, _, path, keys, _ = served
    text = path.read_text()
    assert not any(k in text for k in keys.values()) and len(set(keys.values())) == 3
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [(k.name, k.role, k.per_minute) for k in read_keys(path)] == \
        [("reader", "read", 600), ("slow", "read", 3), ("boss", "admin", 600)]
    assert main(["keys", "list", str(path)]) == 0
    assert "boss\tadmin\t600/min" in capsys.readouterr().out
    assert main(["keys", "add", str(path), "reader"]) == 2
    assert "exists already" in capsys.readouterr().err
    (path.parent / "bad.json").write_text(json.dumps({"keys": [{"name": "x", "role": "root", "sha256": "00"}]}))
    assert main(["serve", str(served[1]), "--keys", str(path.parent / "bad.json")]) == 2
    assert "keys[0] needs a name, a role" in capsys.readouterr().err


def test_serving_beyond_loopback_needs_keys(served, capsys):
    assert main(["serve", str(served[1]), "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 is reachable from other machines: give --keys FILE" in capsys.readouterr().err


def test_keys_roles_rates_and_nothing_logged(served, caplog):
    folder, out, path, keys, model = served
    index = SearchIndex(out, model=model)
    caplog.set_level(logging.INFO)
    server = _Server(index, access=Access(read_keys(path)), log_level="info")
    body = json.dumps({"text": QUERIES["three"], "k": 5}).encode()
    json_type = {"Content-Type": "application/json"}

    def search(headers):
        return server.request("/search", body, {**json_type, **headers})[0]

    try:
        assert search({}) == 401 and search({"Authorization": "Bearer wrong"}) == 401
        status, _, data = server.request("/thumb/1")
        assert status == 401 and "needs an API key" in json.loads(data)["error"]
        assert search({"Authorization": f"Bearer {keys['reader']}"}) == 200
        assert search({"X-API-Key": keys["reader"]}) == 200
        assert server.request("/")[0] == 200 and server.request("/healthz")[0] == 200  # the page itself is open
        assert server.request("/admin/update", b"", {"X-API-Key": keys["reader"]})[0] == 403
        # the slow key's 3 a minute: the fourth request waits, told how long
        assert [search({"X-API-Key": keys["slow"]}) for _ in range(4)] == [200, 200, 200, 429]
        status, _, data = server.request("/search", body, {**json_type, "X-API-Key": keys["slow"]})
        assert status == 429 and "over its 3 requests a minute" in json.loads(data)["error"]
        # the page's login: a cookie (HttpOnly, SameSite=Strict) the thumbnails carry too
        import urllib.request

        req = urllib.request.Request(server.url + "/login", json.dumps({"key": keys["reader"]}).encode(), json_type)
        with urllib.request.urlopen(req) as r:
            cookie = r.headers["Set-Cookie"]
        assert r.status == 204 and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        value = cookie.split(";")[0]
        assert server.request("/thumb/1", headers={"Cookie": value})[0] == 200
        assert server.request("/login", json.dumps({"key": "nope"}).encode(), json_type)[0] == 401
        # an admin key starts an update of the index; the service follows it
        new = folder / "seven" / "extra.png"
        shutil.copy(next((folder / "three").iterdir()), new)
        before = len(index)
        admin = {"X-API-Key": keys["boss"]}
        assert server.request("/admin/update", b"", admin)[0] == 202
        deadline = time.monotonic() + 60
        while json.loads(server.request("/admin/update", headers=admin)[2])["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        state = json.loads(server.request("/admin/update", headers=admin)[2])
        assert state["last"].startswith("seen") and "new 1" in state["last"], state
        status, _, data = server.request("/search", body, {**json_type, **admin})
        assert status == 200 and len(index) == before + 1
    finally:
        server.stop()
        index.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/search" in logged or "update" in logged  # the requests were logged, their keys were not
    assert not any(k in logged for k in keys.values())


def test_each_key_is_compared_in_constant_time(served, monkeypatch):
    import hmac

    access = Access(read_keys(served[2]))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert access.identify(served[3]["reader"]).name == "reader"  # the first key matches; all are compared
    assert len(calls) == 3
    assert access.identify("x" * 5000) is None  # over-long: refused before hashing


def test_cors_is_off_unless_asked(served):
    _, out, _, _, model = served
    index = SearchIndex(out, model=model)
    try:
        for cors, origin, allowed in (((), "https://elsewhere.example", False),
                                      (("https://photos.example",), "https://photos.example", True),
                                      (("https://photos.example",), "https://elsewhere.example", False)):
            server = _Server(index, cors=cors)
            try:
                import urllib.request

                req = urllib.request.Request(server.url + "/healthz", headers={"Origin": origin})
                with urllib.request.urlopen(req) as r:
                    header = r.headers.get("Access-Control-Allow-Origin")
                assert (header == origin) is allowed and (header is None) is not allowed
            finally:
                server.stop()
    finally:
        index.close()


@pytest.mark.skipif(shutil.which("chromedriver") is None or shutil.which("chromium") is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_page_asks_for_a_key_and_then_works(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, out, path, keys, model = served
    index = SearchIndex(out, model=model)
    server = _Server(index, access=Access(read_keys(path)))
    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(server.url + "/")
        box = browser.find_element(By.ID, "q")
        box.send_keys(QUERIES["three"])
        box.submit()
        wait.until(ec.visibility_of_element_located((By.ID, "key")))
        assert "needs an API key" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "key").send_keys("not a key")
        browser.find_element(By.ID, "key").submit()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "not one of this service's"))
        browser.find_element(By.ID, "key").send_keys(keys["reader"])
        browser.find_element(By.ID, "key").submit()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for"))
        assert not browser.find_element(By.ID, "login").is_displayed()
        wait.until(lambda b: b.execute_script(
            "return [...document.querySelectorAll('figure img')].filter(i => i.complete && i.naturalWidth > 0)"
            ".length") >= 10)  # thumbnails load with the cookie
    finally:
        browser.quit()
        server.stop()
        index.close()
