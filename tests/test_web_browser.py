"""The browser views in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver (no browser download). The live view of a tiny run (`--web`), its Stop
button, and the app (`nst-ext serve`): uploads, the queue, the preview, the download, a bad upload.

Outside CI the tests skip where Chromium is not installed (apt-get install chromium
chromium-driver); in CI (CI set) a missing browser fails them. NST_EXT_SCREENSHOTS=FOLDER keeps a
screenshot of each page there (docs/images holds the README's)."""

import base64
import contextlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_ext.web.preview import encode_jpeg
from test_cli import CONTENT, STYLE

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HAVE_BROWSER = all(os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER))
if not HAVE_BROWSER and not os.environ.get("CI"):
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)
webdriver = (
    pytest.importorskip("selenium.webdriver")
    if not os.environ.get("CI")
    else __import__("selenium.webdriver", fromlist=["webdriver"])
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = pytest.mark.browser
# Long enough at 64 px for a few pictures at the preview's two a second, on a slow shared CPU too,
# after the browser has loaded the page (150 steps, about 2 s, once ended before it had: 0 pictures).
LIVE_RUN = ["--size", "64", "--steps", "600"]


@pytest.fixture
def browser(tmp_path):
    assert HAVE_BROWSER, (
        f"the browser tests need {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot(driver, name, tmp_path):
    driver.save_screenshot(str(tmp_path / name))
    folder = os.environ.get("NST_EXT_SCREENSHOTS")
    if folder:
        shutil.copy(tmp_path / name, Path(folder) / name)


# The waits below end on events (a line printed, the page's state, the process's exit). This clock
# only stops a hung test: far beyond what a slow, loaded machine takes (a run here is seconds).
HANG = 900


def start(*args, cwd):
    """`nst-ext ARGS` in the background, and the address it prints (read from its stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_ext", *map(str, args)],
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    while True:  # each line, or the end of the output, is an event: no clock to miss
        line = process.stderr.readline()
        seen.append(line)
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if found:
            return process, found.group(1)
        if not line:  # the end of its output: it has exited, or is about to
            process.wait(timeout=HANG)
            break
    process.kill()
    raise AssertionError("no address printed: " + "".join(seen)[-2000:])


def finish(process, timeout=HANG):
    """Waits for `process` to exit; its exit status and the rest of its stderr."""
    rest = process.communicate(timeout=timeout)[1]
    return process.returncode, rest


# Once the command has exited its page has had its last word: the page must show it by then.
AFTER_EXIT = 30


def pictures_seen(driver, until, process=None):
    """The distinct pictures the page's preview showed (data URLs), sampled every 50 ms until
    `until()` is true (within AFTER_EXIT seconds of `process`'s exit, if given)."""
    seen = []
    deadline = time.monotonic() + HANG
    while not until():
        assert time.monotonic() < deadline, (
            f"the page never showed the end awaited: hung ({page_words(driver)}, {len(seen)} pictures)"
        )
        if process is not None and process.poll() is not None:
            deadline = min(deadline, time.monotonic() + AFTER_EXIT)
            process = None
        source = driver.find_element(By.CLASS_NAME, "picture").get_attribute("src") or ""
        if source.startswith("data:image/jpeg") and (not seen or seen[-1] != source):
            seen.append(source)
        time.sleep(0.05)
    return seen


def page_words(driver):
    """What the page says it shows, for a failure's message."""
    words = {name: driver.find_element(By.ID, name).text for name in ("where", "message")}
    return f"status {page_status(driver)!r}, {words}"


def decoded(data_url):
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float32) / 255


def page_status(driver):
    return driver.find_element(By.ID, "run").get_attribute("data-status")


def test_live_view_shows_the_run_as_it_goes_and_its_final_picture(browser, tmp_path):
    out = tmp_path / "out.png"
    process, url = start("stylize", CONTENT, STYLE, "-o", out, *LIVE_RUN, "--web", cwd=tmp_path)
    try:
        browser.get(url)
        seen = pictures_seen(browser, lambda: page_status(browser) in ("done", "failed"), process)
        status, stderr = finish(process)
    finally:
        process.kill()
    assert status == 0, stderr
    assert page_status(browser) == "done" and "finished" in browser.find_element(By.ID, "where").text
    assert len(set(seen)) >= 3, f"{len(set(seen))} pictures"
    assert len({decoded(picture).round(1).tobytes() for picture in seen}) >= 2  # they differ, not only in bytes
    saved = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    shown = decoded(browser.find_element(By.CLASS_NAME, "picture").get_attribute("src"))
    as_jpeg = decoded("," + base64.b64encode(encode_jpeg(saved)).decode())
    assert np.abs(shown - as_jpeg).mean() < 0.01  # the final picture is the one saved (both as JPEG)
    assert "s per step" in browser.find_element(By.ID, "timing").text
    screenshot(browser, "web-live.png", tmp_path)


# A page of another web site (here: another origin on this machine) that tries what a hostile page
# can without asking: "simple" fetches (no-cors) and form posts that change things, and a fetch
# that reads. TARGET is the server under attack, ATTEMPTS a list of [name, path, how]. The page's
# title becomes "done" and what each attempt got.
HOSTILE_PAGE = """<!doctype html><title>pending</title>
<script>
const target = TARGET, attempts = ATTEMPTS, results = {};
(async () => {
  for (const [name, path, how] of attempts) {
    try {
      if (how === "form") {
        const frame = document.createElement("iframe"), form = document.createElement("form");
        frame.name = name; form.method = "POST"; form.action = target + path; form.target = name;
        form.enctype = "multipart/form-data";
        for (const [key, value] of [["content_sample", "astronaut"], ["style_samples", "swirls"], ["size", "32"]]) {
          const input = document.createElement("input");
          input.type = "hidden"; input.name = key; input.value = value; form.appendChild(input);
        }
        document.body.append(frame, form);
        form.submit();
        results[name] = "submitted";
      } else if (how === "read") {
        const answer = await fetch(target + path);
        results[name] = "read " + answer.status + ": " + (await answer.text()).slice(0, 80);
      } else {
        const body = new FormData();
        body.append("content_sample", "astronaut"); body.append("style_samples", "swirls"); body.append("size", "32");
        const answer = await fetch(target + path, {method: "POST", mode: "no-cors", body});
        results[name] = "sent (" + answer.type + ")";
      }
    } catch (error) {
      results[name] = "blocked: " + error.name;
    }
  }
  setTimeout(() => { document.title = "done " + JSON.stringify(results); }, 2000);
})();
</script>"""


@contextlib.contextmanager
def hostile_site(target, attempts):
    """HOSTILE_PAGE served from http://localhost:PORT/ (another origin than `target`'s), its address."""
    page = HOSTILE_PAGE.replace("TARGET", json.dumps(target.rstrip("/"))).replace("ATTEMPTS", json.dumps(attempts))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def visit_hostile_site(driver, target, attempts):
    """What each of the hostile page's attempts on `target` got, once it has made them all."""
    with hostile_site(target, attempts) as address:
        driver.get(address)
        wait(lambda: driver.title.startswith("done "))
    return json.loads(driver.title[5:])


def test_stop_button_saves_the_best_picture_and_exits_130(browser, tmp_path):
    """Another site's page cannot stop the run or read its stream; the live view's own Stop can."""
    out = tmp_path / "out.png"
    process, url = start(
        "stylize", CONTENT, STYLE, "-o", out, "--size", "64", "--steps", "100000", "--web", cwd=tmp_path
    )
    try:
        browser.get(url)
        pictures_seen(browser, lambda: browser.find_element(By.CLASS_NAME, "picture").get_attribute("data-frame"))
        got = visit_hostile_site(
            browser, url, [["fetch", "/stop", "fetch"], ["form", "/stop", "form"], ["read", "/events", "read"]]
        )
        assert got["read"].startswith("blocked"), got  # no CORS: a foreign page reads nothing
        time.sleep(1.0)  # a stop, had one passed, ends the run within a step
        assert process.poll() is None, "another site's page stopped the run"
        browser.get(url)
        pictures_seen(browser, lambda: browser.find_element(By.CLASS_NAME, "picture").get_attribute("data-frame"))
        browser.find_element(By.ID, "stop").click()
        status, stderr = finish(process)
    finally:
        process.kill()
    assert status == 130, stderr
    assert "saved the best image so far" in stderr
    assert Image.open(out).size == (64, 64)
    wait(lambda: page_status(browser) == "stopped")


def test_app_uploads_queues_previews_and_downloads(browser, tmp_path):
    results = tmp_path / "results"
    process, url = start("serve", "--port", 0, "--out", results, cwd=tmp_path)
    try:
        browser.get(url)
        from nst_ext.web.uploads import form_fields

        for name, limits in form_fields().items():  # the form's defaults and bounds come from the server
            field = browser.find_element(By.NAME, name)
            wait(lambda: all(float(field.get_attribute(key) or "nan") == value for key, value in limits.items()))
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        form = browser.find_element(By.ID, "new-job")
        browser.find_element(By.ID, "content").send_keys(str(bad))
        browser.find_element(By.ID, "styles").send_keys(STYLE)
        browser.find_element(By.ID, "start").click()
        error = browser.find_element(By.ID, "form-error")
        wait(lambda: "is not a picture" in error.text)
        browser.find_element(By.ID, "content").clear()
        browser.find_element(By.ID, "content").send_keys(CONTENT)
        for name, value in (("size", "64"), ("steps", "150")):
            field = browser.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        browser.find_element(By.ID, "start").click()
        wait(lambda: row_state(browser, 1) is not None)
        browser.find_element(By.ID, "start").click()  # a second job, behind the first
        wait(lambda: row_state(browser, 2) == "waiting")
        assert "next in the queue" in in_row(browser, 2, "querySelector('.state').textContent")
        assert error.text == ""
        seen = pictures_seen(browser, lambda: row_state(browser, 1) == "done")
        assert len(set(seen)) >= 2, f"{len(set(seen))} pictures"
        wait(
            lambda: "picture 2" in browser.find_element(By.ID, "where").text
            and int(browser.find_element(By.CLASS_NAME, "picture").get_attribute("data-frame") or 0) >= 4
        )
        browser.set_window_size(1280, 1500)
        screenshot(browser, "web-app.png", tmp_path)  # the second job under way, the first one's result
        link = in_row(browser, 1, "querySelector('a.download').href")
        with urllib.request.urlopen(link, timeout=HANG) as answer:
            picture = Image.open(io.BytesIO(answer.read()))
        assert picture.format == "PNG" and max(picture.size) == 64
        assert (results / "0001-astronaut.png").is_file()  # numbered from 1: a refused upload is no job
        assert form.is_displayed()
    finally:
        process.terminate()
        process.communicate(timeout=HANG)


def test_another_sites_page_cannot_start_stop_or_read_jobs(browser, tmp_path):
    results = tmp_path / "results"
    process, url = start("serve", "--port", 0, "--out", results, cwd=tmp_path)
    try:
        own = {"Origin": url.rstrip("/")}
        request = urllib.request.Request(
            url + "jobs",
            method="POST",
            headers=own,
            data=(b"content_sample=astronaut&style_samples=swirls&size=32&steps=2000"),
        )
        with urllib.request.urlopen(request, timeout=HANG) as answer:
            assert answer.status == 201  # the app's own page may (as the form does)
        got = visit_hostile_site(
            browser,
            url,
            [
                ["start", "/jobs", "fetch"],
                ["stop", "/jobs/1/stop", "fetch"],
                ["form-start", "/jobs", "form"],
                ["form-stop", "/jobs/1/stop", "form"],
                ["read", "/jobs", "read"],
                ["result", "/results/x.png", "read"],
            ],
        )
        assert got["read"].startswith("blocked") and got["result"].startswith("blocked"), got
        time.sleep(0.5)
        with urllib.request.urlopen(url + "jobs", timeout=HANG) as answer:
            jobs = json.load(answer)["jobs"]
        assert [(job["number"], job["state"]) for job in jobs] == [(1, "running")], jobs
        stop = urllib.request.Request(url + "jobs/1/stop", method="POST", headers=own, data=b"")
        with urllib.request.urlopen(stop, timeout=HANG) as answer:
            assert answer.status == 202
    finally:
        process.terminate()
        process.communicate(timeout=HANG)
    assert not (results / "uploads").exists()  # nothing the hostile page sent was kept


def in_row(driver, number, expression):
    """`expression` of job `number`'s row (the table is redrawn as jobs change, so it is read in
    one script), or None while there is no such row."""
    return driver.execute_script(
        f"const row = document.getElementById('job-{number}'); return row ? row.{expression} : null;"
    )


def row_state(driver, number):
    return in_row(driver, number, "dataset.state")


def wait(condition):
    """Until `condition()` (an event on the page) holds; the clock only catches a hang."""
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, "the page never showed the end awaited: hung"
        time.sleep(0.05)
