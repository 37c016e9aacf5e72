"""The annotation app in a real browser: Playwright drives Debian's chromium (installed by `make test`).

An annotator logs in, labels five pairs with the keyboard only, the admin exports from the admin
page, and the exported file says exactly what was chosen.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
ADMIN = "admin-token-for-browser-test-0123"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing; `make test` installs it with apt-get install chromium")
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def _index(prompt: str) -> int:
    return int(prompt.split(":")[0].split()[-1])


@pytest.fixture
def server(tmp_path):
    import uvicorn

    from alignkit.feedback.annotate.app import create_app
    from alignkit.feedback.annotate.store import Store

    store = Store(tmp_path / "b.sqlite")
    rows = [{"prompt": f"Question {i}: which answer is right?", "response_a": f"alpha answer {i}", "response_b": f"beta answer {i}"}
            for i in range(5)]
    rows[2]["prompt"] = "<img src=x id=injected onerror=\"document.title='pwned'\"> Question 2"
    store.import_pairs(rows)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(store, ADMIN, "Pick the answer that is right.\n- Be fair."), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", store
    instance.should_exit = True
    thread.join(timeout=10)


def test_annotate_five_pairs_with_the_keyboard_and_export(server, tmp_path):
    base, store = server
    token = store.add_annotator("ann")["token"]
    # Pair i: prefer alpha on even i, beta on odd i; strength cycles 1, 2, 3.
    expected = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.fill("#token", token)
            page.press("#token", "Enter")
            page.wait_for_selector("#work:not([hidden])")
            assert "Pick the answer that is right." in page.text_content("#guidelines")
            for n in range(5):
                page.wait_for_selector("#task[data-task-id]")  # selector waits: the page's CSP forbids eval
                prompt = page.text_content("#prompt")
                index = _index(prompt)
                wanted = "alpha" if index % 2 == 0 else "beta"
                left, right = page.text_content("#left"), page.text_content("#right")
                strength = n % 3 + 1
                page.locator("body").click(position={"x": 1, "y": 1})  # focus the page, not a field
                page.keyboard.press("a" if wanted in left else "b")
                page.keyboard.press(str(strength))
                task_id = page.get_attribute("#task", "data-task-id")
                page.keyboard.press("Enter")
                page.wait_for_selector(f'#task:not([data-task-id="{task_id}"]), #done:not([hidden])')
                expected[prompt] = (left if wanted in left else right, round(strength / 3, 3))
            page.wait_for_selector("#done:not([hidden])")
            assert page.text_content("#progress").startswith("5 done")
            assert page.title() != "pwned" and page.locator("#injected").count() == 0  # the prompt was shown as text

            admin = browser.new_page(accept_downloads=True)
            admin.goto(base + "/admin")
            admin.fill("#token", ADMIN)
            admin.press("#token", "Enter")
            admin.wait_for_selector("#admin:not([hidden])")
            assert "5 votes" in admin.text_content("#summary")
            with admin.expect_download() as download:
                admin.click("#export-votes")
            path = tmp_path / "export.jsonl"
            download.value.save_as(path)
        finally:
            browser.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5
    assert {r["prompt"]: (r["chosen"], r["strength"]) for r in rows} == expected
    assert all(r["annotator"] == "ann" for r in rows)
    assert all(r["chosen"].startswith("alpha" if _index(r["prompt"]) % 2 == 0 else "beta") for r in rows)
