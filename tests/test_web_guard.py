"""The guard in front of every page we serve (nst_ext.web.guard), tried as a hostile web page, a
DNS-rebinding site and a greedy client would try it: Host spoofs, foreign, ``null`` and missing
origins, a foreign Referer, IPv6 literals, the token of a server beyond loopback, oversized and
chunked bodies, too many parts, the caps on the queue and the uploads folder, the headers on
every answer, and a 500 that tells nothing. The same checks in Chromium, from a page of another
origin: tests/test_web_browser.py."""

import os
import re
import socket
import subprocess
import sys

import pytest

pytest.importorskip("starlette")
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from nst_ext.web.app import MAX_WAITING_JOBS, web_app  # noqa: E402
from nst_ext.web.guard import SECURITY_HEADERS, Access, is_loopback  # noqa: E402
from nst_ext.web.live import live_app  # noqa: E402
from nst_ext.web.preview import Preview  # noqa: E402
from nst_ext.web.queue import JobQueue  # noqa: E402
from nst_ext.web.server import PreviewStreams, guarded_app  # noqa: E402
from nst_ext.web.uploads import LARGEST_STEPS, MAX_FILES, Uploads  # noqa: E402
from test_cli import assert_one_line_error, nst_ext_cli  # noqa: E402
from test_web import ADDRESS, OWN_PAGE, StandIn, png_bytes, submit, wait_for  # noqa: E402


@pytest.fixture
def served(tmp_path):
    """The app with a stand-in runner, and a client that sets every header itself."""
    runner = StandIn()
    queue = JobQueue(run=runner)
    uploads = Uploads(tmp_path, "cpu", max_upload=200_000, max_pixels=100_000)
    client = TestClient(web_app(queue, uploads, ADDRESS), base_url=OWN_PAGE)
    yield client, queue, runner, uploads
    runner.go.set()
    queue.close()


def sample_job(client, **headers):
    return client.post(
        "/jobs", data={"size": "64", "content_sample": "astronaut", "style_samples": "swirls"}, headers=headers
    )


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("LOCALHOST:8765", True),
        ("[::1]:8765", True),
        ("evil.example", False),
        ("evil.example:8765", False),
        ("127.0.0.1", False),
        ("127.0.0.1:8766", False),
        ("127.0.0.1:8765.evil.example", False),
        ("localhost.evil.example:8765", False),
        ("[::ffff:127.0.0.1]:8765", False),
        ("[::1]", False),
        ("::1:8765", False),
        ("0.0.0.0:8765", False),
        ("", False),
        ("127.0.0.1:8765 ", False),
    ],
)
def test_only_this_machines_names_with_our_port_are_answered(served, host, allowed):
    """DNS rebinding: a foreign name resolved to 127.0.0.1 sends its own Host; none is answered."""
    client, queue, _, _ = served
    for path in ("/", "/jobs", "/static/view.js", "/samples/astronaut", "/results/x.png"):
        answer = client.get(path, headers={"host": host})
        if allowed:
            assert answer.status_code in (200, 404), (path, answer.status_code)
        else:
            assert answer.status_code == 403 and "answers only to" in answer.json()["error"], (path, host)
    posted = sample_job(client, host=host, origin=f"http://{host}")
    assert posted.status_code == (201 if allowed else 403)
    assert len(queue.jobs) == (1 if allowed else 0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"origin": "null"},
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1:8766"},
        {"origin": "https://127.0.0.1:8765"},
        {"origin": "http://127.0.0.1:8765.evil.example"},
        {"origin": "http://localhost:8765"},  # this server's other name, but not the page the request names
        {"referer": "http://evil.example/page"},
        {"referer": "null"},
        {"origin": "", "referer": ""},
        {"origin": "http://evil.example", "referer": "http://127.0.0.1:8765/"},
        {"origin": "http://127.0.0.1:8765@evil.example"},
        {"origin": "http:\\\\127.0.0.1:8765"},
    ],
)
def test_a_change_from_any_other_page_is_refused(served, headers):
    """Cross-site form posts and fetches are "simple" requests a browser sends without asking: the
    server refuses every one that is not from its own page, and nothing changes."""
    client, queue, runner, _ = served
    assert sample_job(client, origin=OWN_PAGE).status_code == 201
    wait_for(lambda: queue.current is not None)
    refused = sample_job(client, **headers)
    assert refused.status_code == 403 and "this server's own page" in refused.json()["error"]
    stop = client.post("/jobs/1/stop", headers=headers)
    assert stop.status_code == 403
    assert len(queue.jobs) == 1 and queue.jobs[0].state == "running" and not queue.jobs[0].stop_requested.is_set()


@pytest.mark.parametrize(
    "repeated",
    [
        [("origin", "http://evil.example"), ("origin", OWN_PAGE)],
        [("origin", OWN_PAGE), ("origin", "null")],
        [("referer", "http://evil.example/"), ("referer", OWN_PAGE + "/")],
    ],
)
def test_a_request_that_repeats_a_checked_header_is_refused(served, repeated):
    """Which copy would count? Neither: a browser never repeats them, a forged request may."""
    client, queue, _, _ = served
    assert sample_job(client, origin=OWN_PAGE).status_code == 201
    wait_for(lambda: queue.current is not None)
    answer = client.post("/jobs/1/stop", headers=repeated)
    assert answer.status_code == 400 and "repeats its" in answer.json()["error"]
    assert not queue.jobs[0].stop_requested.is_set()


def test_the_own_page_may_change_things_with_its_origin_or_its_referer(served):
    client, queue, _, _ = served
    assert sample_job(client, origin=OWN_PAGE).status_code == 201
    assert sample_job(client, referer=OWN_PAGE + "/").status_code == 201  # a browser that sends no Origin
    assert client.post("/jobs/2/stop", headers={"origin": OWN_PAGE}).status_code == 202
    assert queue.jobs[1].state == "stopped"


def test_the_live_views_stop_works_only_from_its_own_page():
    stops = []
    preview = Preview(interval=0.0)
    client = TestClient(live_app(preview, PreviewStreams(), ADDRESS, stop=lambda: stops.append(1)), base_url=OWN_PAGE)
    for headers in (
        {},
        {"origin": "null"},
        {"origin": "http://evil.example"},
        {"referer": "http://evil.example/"},
        {"origin": OWN_PAGE, "host": "evil.example"},
    ):
        assert client.post("/stop", headers=headers).status_code == 403
    assert client.get("/events", headers={"host": "evil.example:8765"}).status_code == 403
    assert stops == []
    assert client.post("/stop", headers={"origin": OWN_PAGE}).status_code == 202 and stops == [1]


def test_every_answer_carries_the_security_headers(served, monkeypatch):
    client, queue, _, _ = served
    client = TestClient(client.app, base_url=OWN_PAGE, raise_server_exceptions=False)
    monkeypatch.setattr(queue, "shown", lambda: (_ for _ in ()).throw(ValueError("embedded null byte /home/secret")))
    answers = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/nowhere"),
        client.put("/jobs"),
        client.get("/", headers={"host": "evil.example"}),
        sample_job(client),
        client.get("/jobs"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 404, 403, 403, 403, 500]
    for answer in answers:
        for name, value in SECURITY_HEADERS:
            assert answer.headers[name.decode()] == value.decode(), (answer.request.url, name)
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answers[2].json()["error"] == "Not Found"  # JSON, for the page to show
    assert answers[3].headers["content-type"] == "application/json"
    assert answers[-1].json() == {"error": "internal error (the server's log has the details)"}  # no text of the bug


def test_a_result_is_downloaded_as_an_attachment_with_its_own_name(served):
    client, queue, runner, _ = served
    sample_job(client, origin=OWN_PAGE)
    runner.go.set()
    wait_for(lambda: queue.jobs[0].state == "done")
    answer = client.get(client.get("/jobs").json()["jobs"][0]["result"])
    assert answer.headers["content-disposition"] == 'attachment; filename="0001-astronaut.png"'


def test_bounds_on_steps_parts_and_fields_are_one_line_of_json(served):
    client, queue, _, _ = served
    assert sample_job(client, origin=OWN_PAGE).status_code == 201
    steps = client.post(
        "/jobs",
        data={"content_sample": "astronaut", "style_samples": "swirls", "steps": "1000000000"},
        headers={"origin": OWN_PAGE},
    )
    assert (
        steps.status_code == 400
        and steps.json()["error"] == f"steps: from 1 to {LARGEST_STEPS} per scale here, got 1000000000"
    )
    files = [("styles", (f"s{index}.png", png_bytes(), "image/png")) for index in range(MAX_FILES + 1)]
    parts = client.post("/jobs", files=files, headers={"origin": OWN_PAGE})
    assert parts.status_code == 400 and parts.headers["content-type"] == "application/json"
    assert re.match(r"the upload was refused: Too many files.*at most 5 pictures", parts.json()["error"]), parts.json()
    fields = client.post("/jobs", data={f"field{index}": "x" for index in range(40)}, headers={"origin": OWN_PAGE})
    assert fields.status_code == 400 and "Too many fields" in fields.json()["error"]
    long_field = client.post(
        "/jobs",
        files=[("content", ("p.png", png_bytes(), "image/png"))],
        data={"seed": "1" * 70_000},
        headers={"origin": OWN_PAGE},
    )
    assert long_field.status_code == 400 and "the upload was refused" in long_field.json()["error"]
    assert len(queue.jobs) == 1


def test_the_queue_and_the_uploads_folder_are_capped(served, monkeypatch):
    client, queue, runner, uploads = served
    for _ in range(MAX_WAITING_JOBS + 1):  # one running, MAX_WAITING_JOBS waiting
        assert sample_job(client, origin=OWN_PAGE).status_code == 201
        wait_for(lambda: queue.current is not None)
    full = sample_job(client, origin=OWN_PAGE)
    assert full.status_code == 429 and f"{MAX_WAITING_JOBS} jobs are waiting already" in full.json()["error"]
    assert client.post("/jobs/2/stop", headers={"origin": OWN_PAGE}).status_code == 202
    assert sample_job(client, origin=OWN_PAGE).status_code == 201  # room again
    monkeypatch.setattr(type(uploads), "max_folder", property(lambda self: 1000))
    uploads.folder.mkdir(parents=True, exist_ok=True)
    (uploads.folder / "old.png").write_bytes(b"0" * 900)
    client.post("/jobs/3/stop", headers={"origin": OWN_PAGE})
    crowded = submit(
        TestClient(client.app, base_url=OWN_PAGE, headers={"origin": OWN_PAGE}),
        ("photo.png", png_bytes(), "image/png"),
        [("look.png", png_bytes())],
    )
    assert crowded.status_code == 400
    assert re.search(r"uploads folder holds \d+ bytes, near its limit of 1000 bytes", crowded.json()["error"])
    assert sorted(path.name for path in uploads.folder.iterdir()) == ["old.png"]  # nothing of the refused job kept


def test_an_upload_declared_larger_than_the_limit_is_refused_before_it_is_read(served):
    client, queue, _, uploads = served
    answer = client.post(
        "/jobs",
        content=b"x" * 10,
        headers={
            "origin": OWN_PAGE,
            "content-length": str(uploads.max_request + 1),
            "content-type": "multipart/form-data; boundary=b",
        },
    )
    assert answer.status_code == 413 and "each picture may be at most 195 KiB" in answer.json()["error"]


def test_a_streamed_upload_is_cut_at_the_limit(served):
    """A body without Content-Length (chunked) is counted as it streams in and refused past the limit."""
    client, queue, _, uploads = served
    sent = []

    def chunks():
        for _ in range(uploads.max_request // 65536 + 10):
            sent.append(65536)
            yield b"--b\r\n" + b"0" * 65531

    answer = client.post(
        "/jobs", content=chunks(), headers={"origin": OWN_PAGE, "content-type": "multipart/form-data; boundary=b"}
    )
    assert answer.status_code == 413 and "over 1 MiB in all" in answer.json()["error"], answer.text
    assert queue.jobs == [] and not any(uploads.folder.glob("*"))


TOKEN_ADDRESS = Access("0.0.0.0", 8765, token="the-token")
REMOTE = "http://192.0.2.7:8765"


def test_beyond_loopback_every_route_needs_the_token(tmp_path):
    """Listening on every address: the printed address carries a token, exchanged once for an
    HttpOnly, SameSite=Strict cookie and taken out of the address; without it nothing answers."""
    runner = StandIn()
    queue = JobQueue(run=runner)
    try:
        app = web_app(queue, Uploads(tmp_path, "cpu", max_upload=200_000), TOKEN_ADDRESS)
        client = TestClient(app, base_url=REMOTE, follow_redirects=False)
        for path in ("/", "/jobs", "/static/view.js", "/?token=wrong", "/?token=", "/jobs?token=the-token%20"):
            assert client.get(path).status_code == 403, path
        forged = TestClient(app, base_url=REMOTE, cookies={"nst_ext_token_8765": "wrong"})
        assert forged.get("/").status_code == 403
        assert sample_job(client, origin=REMOTE).status_code == 403  # the right origin, but no token
        exchange = client.get("/?token=the-token&x=1")
        assert exchange.status_code == 303 and exchange.headers["location"] == "/?x=1"
        cookie = exchange.headers["set-cookie"]
        assert cookie == "nst_ext_token_8765=the-token; Path=/; HttpOnly; SameSite=Strict"
        escape = client.get(REMOTE + "//evil.example/?token=the-token")
        assert escape.headers["location"] == "/evil.example/"  # never to another site
        assert client.get("/jobs").status_code == 200  # the client keeps the cookie
        assert sample_job(client, origin=REMOTE).status_code == 201
        assert sample_job(client, origin="http://evil.example").status_code == 403  # the token alone is not enough
        client.cookies.clear()
        assert client.post("/jobs?token=the-token", headers={"origin": REMOTE}).status_code == 403  # no exchange
    finally:
        runner.go.set()  # the job it queued finishes at once rather than at the stand-in's timeout
        queue.close()


def test_the_address_rules_for_each_kind_of_host():
    assert all(map(is_loopback, ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.0.2.7", "localhost.evil.example", "")))
    loopback = Access.for_address("127.0.0.1", 9000)
    assert loopback.token is None and loopback.url() == "http://127.0.0.1:9000/"
    assert loopback.allowed_hosts == {"127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    six = Access.for_address("::1", 9000)
    assert six.url() == "http://[::1]:9000/" and "[::1]:9000" in six.allowed_hosts
    remote = Access.for_address("192.0.2.7", 9000)
    assert len(remote.token) >= 40 and remote.url() == f"http://192.0.2.7:9000/?token={remote.token}"
    assert remote.allowed_hosts == {"192.0.2.7:9000"}
    assert Access.for_address("0.0.0.0", 9000).allowed_hosts is None  # every name: the token is the check
    assert Access.for_address("127.0.0.1", 80).host_allowed("localhost")  # browsers leave port 80 out
    assert Access.for_address("::1", 9000).token != Access.for_address("::", 9000).token


def test_no_websocket_is_accepted(served):
    from starlette.websockets import WebSocketDisconnect

    client, _, _, _ = served
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/events", headers={"origin": OWN_PAGE}):
            pass


def test_a_bug_is_logged_not_shown(caplog):
    def broken(request):
        raise ValueError("embedded null byte in /home/someone/secret")

    app = guarded_app([Route("/broken", broken)], ADDRESS, 1000, lambda limit: "too large")
    answer = TestClient(app, base_url=OWN_PAGE, raise_server_exceptions=False).get("/broken")
    assert answer.status_code == 500 and "secret" not in answer.text and "ValueError" not in answer.text
    assert "embedded null byte" in caplog.text


def _peak_memory_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's peak memory from /proc")
def test_a_chunked_upload_far_over_the_limit_keeps_the_servers_memory_flat(tmp_path):
    """The real server (`nst-ext serve`), sent 96 MiB chunked where it takes 1.1 MiB: it answers
    413 and its peak memory grows by far less than what was sent."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nst_ext",
            "serve",
            "--port",
            "0",
            "--out",
            str(tmp_path / "r"),
            "--max-upload",
            "200KiB",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        before = _peak_memory_kib(process.pid)
        sent = 0
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(
                f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            part = (
                b'--b\r\nContent-Disposition: form-data; name="content"; filename="big.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )  # a file part that never ends
            connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            chunk = b"0" * (1 << 20)
            try:
                for _ in range(96):
                    connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                connection.sendall(b"0\r\n\r\n")
            except OSError:  # the server answered and closed: what it read was cut at the limit
                pass
            connection.settimeout(10)
            try:
                while not answer.endswith(b"}"):
                    piece = connection.recv(65536)
                    if not piece:
                        break
                    answer += piece
            except OSError:
                pass
        grew = _peak_memory_kib(process.pid) - before
        print(f"sent {sent >> 20} MiB; the server's peak memory grew by {grew} KiB")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"the upload is over" in answer
        assert grew < 24 * 1024, f"the server's peak memory grew by {grew} KiB after {sent >> 20} MiB were sent"
    finally:
        process.terminate()
        process.wait(30)


def test_serve_into_a_file_or_an_unmakeable_folder_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    assert_one_line_error(nst_ext_cli("serve", "--port", "0", "--out", tmp_path / "taken"), r"is a file")
    assert_one_line_error(
        nst_ext_cli("serve", "--port", "0", "--out", tmp_path / "taken" / "below"),
        r"cannot make the output folder .*: ",
    )


def test_the_security_guide_states_the_caps_this_code_has():
    from pathlib import Path

    from nst_ext.web.uploads import UPLOADS_FOLDER_UPLOADS

    guide = (Path(__file__).parent.parent / "docs" / "web.md").read_text()
    assert f"at most {MAX_WAITING_JOBS} jobs wait at once, at most {LARGEST_STEPS} steps per scale" in guide
    assert f"at most {UPLOADS_FOLDER_UPLOADS} × `--max-upload`" in guide and f"{MAX_FILES} × `--max-upload`" in guide


def test_a_job_that_fails_on_a_bug_shows_no_text_of_it(tmp_path, caplog):
    def broken(job, on_progress):
        raise RuntimeError("cannot open /home/someone/private/photo.png")

    queue = JobQueue(run=broken)
    try:
        client = TestClient(web_app(queue, Uploads(tmp_path, "cpu", max_upload=200_000), ADDRESS), base_url=OWN_PAGE)
        assert sample_job(client, origin=OWN_PAGE).status_code == 201
        wait_for(lambda: queue.jobs[0].state == "failed")
        shown = client.get("/jobs").json()["jobs"][0]
        assert shown["message"] == "internal error (the server's log has the details)"
        assert "private/photo.png" in caplog.text
    finally:
        queue.close()
