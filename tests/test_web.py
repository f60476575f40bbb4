"""The browser views' parts without a browser (nst_ext.web): what a page is shown of a run and how
often, the app's uploads and queue through its HTTP interface, and the command line's --web and
serve switches. The pages themselves, in Chromium: tests/test_web_browser.py."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from nst_ext.web.app import web_app  # noqa: E402
from nst_ext.web.guard import Access  # noqa: E402
from nst_ext.web.queue import JobQueue  # noqa: E402
from nst_ext.web.uploads import Uploads  # noqa: E402
from nst_ext.web.preview import PREVIEW_MAX_SIDE, Preview, encode_jpeg  # noqa: E402
from nst_ext.web.server import PreviewStreams, event  # noqa: E402
from test_cli import CONTENT, STYLE, assert_one_line_error, nst_ext_cli  # noqa: E402


class FakeProgress:
    """What the stylizer's callback gets (nst_ext.stylizer.Progress), with a picture of one grey."""

    def __init__(self, step, steps=10, stage=0, stages=1, grey=0.5, size=(12, 20)):
        self.stage, self.stages, self.step, self.steps, self.size = stage, stages, step, steps, size
        self.grey = grey
        self.content_loss, self.style_loss, self.total_loss = 1.0 * step, 2.0 * step, 3.0 * step
        self.taken = 0

    def image(self):
        self.taken += 1
        return torch.full((3, *self.size), self.grey)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def decoded(jpeg):
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32) / 255


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_preview_copies_the_picture_at_most_every_interval_and_at_each_stage_end():
    clock = Clock()
    preview = Preview("run", interval=0.5, clock=clock)
    taken = []
    for step in range(1, 11):  # a step every 0.2 s: a copy at 0.0, 0.6, 1.2, 1.8 s and the stage's last step
        progress = FakeProgress(step, grey=step / 10)
        preview.observe(progress)
        taken.append(progress.taken)
        clock.now += 0.2
    assert [step for step, count in zip(range(1, 11), taken) if count] == [1, 4, 7, 10]
    assert [point[0] for point in preview.losses] == [1, 4, 7, 10]
    assert preview.losses[-1] == [10, 10.0, 20.0, 30.0]
    assert preview.seconds_per_step == pytest.approx(0.2)
    wait_for(lambda: preview.frame >= 1)
    preview.finish(torch.full((3, 12, 20), 0.25), "done")
    state, jpeg = preview.state()
    assert state["status"] == "done" and state["step"] == 10 and (state["width"], state["height"]) == (20, 12)
    assert np.abs(decoded(jpeg) - 0.25).max() < 0.02  # the final picture is the last one shown


def test_preview_state_sends_only_what_a_page_lacks_and_starts_over_for_the_next_picture():
    clock = Clock()
    preview = Preview(interval=0.0, clock=clock)
    preview.observe(FakeProgress(1))
    wait_for(lambda: preview.frame == 1)
    first, jpeg = preview.state()
    assert first["losses_from"] == 0 and len(first["losses"]) == 1 and jpeg is not None
    again, jpeg = preview.state(first)
    assert again["losses"] == [] and again["losses_from"] == 1 and jpeg is None  # nothing new: no picture resent
    preview.observe(FakeProgress(2))
    wait_for(lambda: preview.frame == 2)
    second, jpeg = preview.state(again)
    assert second["losses_from"] == 1 and [p[0] for p in second["losses"]] == [2] and jpeg is not None
    preview.observe(FakeProgress(1))  # a batch's next item begins
    third, _ = preview.state(second)
    assert third["run"] == 1 and third["losses_from"] == 0 and [p[0] for p in third["losses"]] == [1]


def test_preview_waits_for_a_new_picture():
    preview = Preview(interval=0.0)
    seen = preview.version
    assert preview.wait(seen, 0.05) == seen  # nothing new: times out
    threading.Timer(0.05, preview.observe, [FakeProgress(1)]).start()
    assert preview.wait(seen, 5.0) > seen  # woken by the encoded picture


def test_jpeg_is_scaled_down_to_the_preview_side_and_keeps_the_colours():
    image = torch.rand(3, 30, 2000)
    picture = Image.open(io.BytesIO(encode_jpeg(image)))
    assert picture.size == (PREVIEW_MAX_SIDE, 15)
    small = torch.zeros(3, 16, 16)
    small[0] = 1.0  # red
    assert np.abs(decoded(encode_jpeg(small)) - [1, 0, 0]).max() < 0.05


def test_event_carries_the_picture_with_its_state():
    text = event({"version": 3}, b"\xff\xd8jpeg")
    assert text.startswith("data: ") and text.endswith("\n\n")
    assert json.loads(text[6:])["picture"] == "data:image/jpeg;base64,/9hqcGVn"
    assert "picture" not in json.loads(event({"version": 3}, None)[6:])


def png_bytes(width=24, height=16, colour=(200, 30, 30)):
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


class StandIn:
    """A job runner for the queue that makes a picture only when told to, so a test sees a job
    running and another waiting behind it."""

    def __init__(self):
        self.go = threading.Event()
        self.ran = []

    def __call__(self, job, on_progress):
        self.ran.append(job.number)
        for step in range(1, 4):
            on_progress(FakeProgress(step, steps=3))
        assert self.go.wait(10)
        Image.new("RGB", (8, 8), (10, 200, 10)).save(job.output)
        job.preview.finish(torch.zeros(3, 8, 8), "done")
        job.state = "done"


# The address the test clients play the app's own page at (nst_ext.web.guard checks Host and Origin).
ADDRESS = Access("127.0.0.1", 8765)
OWN_PAGE = "http://127.0.0.1:8765"


def own_page_client(app) -> TestClient:
    """A client for `app` that asks as the app's own page does: its Host, and its Origin on posts."""
    return TestClient(app, base_url=OWN_PAGE, headers={"Origin": OWN_PAGE})


@pytest.fixture
def app(tmp_path):
    runner = StandIn()
    queue = JobQueue(run=runner)
    uploads = Uploads(tmp_path, "cpu", max_upload=200_000, max_pixels=100_000)
    client = own_page_client(web_app(queue, uploads, ADDRESS))
    yield client, queue, runner, tmp_path
    runner.go.set()
    queue.close()


def submit(client, content=None, styles=(), **fields):
    files = []
    if content is not None:
        files.append(("content", content))
    files += [("styles", style) for style in styles]
    data = {"size": "64", **fields}
    return client.post("/jobs", files=files or None, data=data)


def test_app_queues_jobs_one_at_a_time_and_serves_the_result(app):
    client, queue, runner, out = app
    first = submit(client, ("photo.png", png_bytes(), "image/png"), [("look.png", png_bytes(colour=(0, 0, 255)))])
    assert first.status_code == 201, first.text
    second = submit(client, content_sample="astronaut", style_samples="swirls")
    assert second.status_code == 201, second.text
    wait_for(lambda: queue.current is not None and queue.current.number == 1)
    jobs = client.get("/jobs").json()["jobs"]
    assert [(job["state"], job["place"]) for job in jobs] == [("running", None), ("waiting", 1)]
    assert jobs[0]["settings"]["content"] == "photo.png" and jobs[0]["settings"]["styles"] == "look.png"
    assert jobs[1]["settings"]["content"] == "astronaut"
    runner.go.set()
    wait_for(lambda: [job["state"] for job in client.get("/jobs").json()["jobs"]] == ["done", "done"])
    assert runner.ran == [1, 2]
    result = client.get(client.get("/jobs").json()["jobs"][0]["result"])
    assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size == (8, 8)
    assert sorted(p.name for p in (out / "uploads").iterdir()) == ["look.png", "photo.png"]
    assert client.get("/results/uploads").status_code == 404  # only finished pictures are served


@pytest.mark.parametrize(
    "content, fields, message",
    [
        (("notes.png", b"this is text, not a picture", "image/png"), {}, r"'notes.png' is not a picture"),
        (("big.png", png_bytes(400, 300), "image/png"), {}, r"400x300 = 120,000 pixels, over the limit of 100,000"),
        (("huge.png", b"\x89PNG" + b"0" * 300_000, "image/png"), {}, r"293 KiB, over the limit of 195 KiB"),
        (("photo.png", png_bytes(), "image/png"), {"size": "9999"}, r"size: from 16 to 2048 px"),
        (("photo.png", png_bytes(), "image/png"), {"style_weight": "strong"}, r"style weight: expected a number"),
        (None, {}, r"choose the content picture"),
    ],
)
def test_app_refuses_a_bad_upload_with_a_message(app, content, fields, message):
    client, queue, _, out = app
    answer = submit(client, content, [("look.png", png_bytes())], **fields)
    assert answer.status_code == 400
    import re

    assert re.search(message, answer.json()["error"]), answer.json()["error"]
    assert queue.jobs == [] and not any((out / "uploads").glob("*"))  # nothing kept of a refused job


def test_an_upload_too_large_to_decode_is_one_line_for_the_uploader(app, monkeypatch):
    """Decoding past the server's memory (a MemoryError, injected: a real one would take the
    machine's memory) refuses the upload with a line that names nothing the uploader cannot set."""
    client, queue, _, out = app

    def out_of_memory(image):
        raise MemoryError

    photo, look = png_bytes(), png_bytes()
    monkeypatch.setattr(Image.Image, "load", out_of_memory)
    answer = submit(client, ("photo.png", photo, "image/png"), [("look.png", look)])
    error = answer.json()["error"]
    assert answer.status_code == 400 and error == (
        "the content picture 'photo.png' is too large to decode in this machine's memory; use a smaller image"
    ), error
    assert queue.jobs == [] and not any((out / "uploads").glob("*"))


def test_app_refuses_a_job_without_style(app):
    client, queue, _, _ = app
    answer = submit(client, ("photo.png", png_bytes(), "image/png"))
    assert answer.status_code == 400 and "at least one style" in answer.json()["error"]


def test_app_never_replaces_a_file(app):
    client, queue, runner, out = app
    (out / "0001-photo.png").write_bytes(b"somebody's picture")
    assert submit(client, ("photo.png", png_bytes(), "image/png"), [("look.png", png_bytes())]).status_code == 201
    runner.go.set()
    wait_for(lambda: queue.jobs[0].state == "done")
    assert queue.jobs[0].output.name == "0001-photo-1.png"
    assert (out / "0001-photo.png").read_bytes() == b"somebody's picture"


def test_app_stops_a_waiting_job(app):
    client, queue, runner, _ = app
    submit(client, content_sample="astronaut", style_samples="swirls")
    submit(client, content_sample="astronaut", style_samples="swirls")
    wait_for(lambda: queue.current is not None)
    assert client.post("/jobs/2/stop").status_code == 202
    runner.go.set()
    wait_for(lambda: queue.jobs[0].state == "done")
    assert queue.jobs[1].state == "stopped" and runner.ran == [1]


def test_event_stream_ends_after_the_final_picture():
    preview = Preview(interval=0.0)
    preview.observe(FakeProgress(1))
    preview.finish(torch.full((3, 8, 8), 0.5), "done")
    from nst_ext.web.live import live_app

    client = own_page_client(live_app(preview, PreviewStreams(), ADDRESS, stop=lambda: None))
    with client.stream("GET", "/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    states = [json.loads(line[6:]) for line in lines]
    assert states[-1]["status"] == "done" and "picture" in states[-1]
    assert "Stop" in client.get("/").text and client.get("/static/view.js").status_code == 200


def test_event_stream_sends_the_final_state_when_the_run_ends_while_an_earlier_one_is_sent():
    # The run may end between the stream reading a state and sending it: the stream must not take
    # the run's end for sent then (a clean-clone CI run's page never showed "done" that way).
    class EndsWhileSending(Preview):
        def state(self, shown=None):
            answer = super().state(shown)
            if not self.finished:
                self.finish(torch.full((3, 8, 8), 0.25), "done")
            return answer

    preview = EndsWhileSending(interval=0.0)
    preview.observe(FakeProgress(1))
    from nst_ext.web.live import live_app

    client = own_page_client(live_app(preview, PreviewStreams(), ADDRESS, stop=lambda: None))
    with client.stream("GET", "/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    states = [json.loads(line[6:]) for line in lines]
    assert [state["status"] for state in states] == ["running", "done"]
    assert [state["finished"] for state in states] == [False, True]
    assert np.abs(decoded(base64.b64decode(states[-1]["picture"].split(",", 1)[1])) - 0.25).max() < 0.02


def test_a_finished_run_waits_for_a_page_served_whose_stream_has_not_connected_yet():
    # On a busy machine a page may be loaded but not yet following the run when it ends: the
    # command must not close the server before that page got the final picture.
    import urllib.request

    from nst_ext.web.live import LiveView

    live = LiveView()
    with urllib.request.urlopen(live.url, timeout=10) as answer:
        assert b"Stop" in answer.read()
    closing = threading.Thread(target=live.close, args=(torch.full((3, 8, 8), 0.5),))
    closing.start()
    time.sleep(0.5)
    assert closing.is_alive(), "the server closed before the page served got the final picture"
    with urllib.request.urlopen(live.url + "events", timeout=10) as stream:
        states = [json.loads(line[6:]) for line in stream.read().decode().splitlines() if line.startswith("data: ")]
    closing.join(10)
    assert not closing.is_alive() and states[-1]["status"] == "done" and "picture" in states[-1]


def test_web_port_and_missing_extra_get_one_line(tmp_path, monkeypatch):
    refused = nst_ext_cli("stylize", CONTENT, STYLE, "-o", tmp_path / "out.png", "--web", "http")
    assert refused.returncode == 2 and "expected a port number" in refused.stderr
    assert "Traceback" not in refused.stderr
    from nst_ext.cli.style_flags import CommandError
    from nst_ext.cli.watching import web_module

    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as where the extra is not installed
    monkeypatch.delitem(__import__("sys").modules, "nst_ext.web.server", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "nst_ext.web.live", raising=False)
    with pytest.raises(CommandError, match=r"need the web extra \(uvicorn is not installed\): pip install"):
        web_module("live")


def test_serve_refuses_a_port_in_use_in_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = nst_ext_cli("serve", "--port", taken.getsockname()[1], "--out", tmp_path / "results")
    assert_one_line_error(result, r"cannot serve on 127.0.0.1:\d+: ")


def test_app_job_makes_the_picture_and_stop_keeps_the_best_one(tmp_path):
    """The real job runner (the stylizer, the provenance record, the atomic write), stopped from
    the page's side after a few steps: the picture so far is written and says how it was made."""
    from nst_ext.io import provenance
    from nst_ext.plan.options import StyleOptions
    from nst_ext.web.queue import Job, stylize_job

    queue = JobQueue(run=stylize_job)
    try:
        options = StyleOptions(size=32, steps=[100000], seed=3, device="cpu")
        job = Job(
            1,
            Uploads.sample_path("astronaut"),
            [Uploads.sample_path("swirls")],
            options,
            tmp_path / "0001-astronaut.png",
            {},
        )
        queue.submit(job)
        wait_for(lambda: job.preview is not None and job.preview.steps_done >= 3, seconds=120)
        queue.stop(1)
        wait_for(lambda: job.state in ("done", "stopped", "failed"), seconds=120)
    finally:
        queue.close()
    assert job.state == "stopped", job.message
    assert Image.open(job.output).size == (32, 32)
    assert provenance.read(job.output)["seed"] == 3
    assert job.preview.finished and job.preview.state()[0]["status"] == "stopped"


def test_batch_with_web_runs_and_prints_the_page(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        Image.open(CONTENT).convert("RGB").resize((40, 36)).rotate(index * 90).save(photos / f"p{index}.png")
    result = nst_ext_cli("batch", photos, STYLE, "-o", tmp_path / "styled", "--size", "32", "--steps", "3", "--web")
    assert result.returncode == 0, result.stderr
    assert "watch the run at http://127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "styled").glob("*.png")) == ["p0.png", "p1.png"]


def test_app_takes_masks_one_per_style(app):
    client, queue, _, out = app
    photo, look, mask = png_bytes(), png_bytes(colour=(0, 0, 255)), png_bytes(colour=(255, 255, 255))

    def post(*masks, content_mask=None):
        files = [
            ("content", ("photo.png", photo, "image/png")),
            ("styles", ("look.png", look, "image/png")),
            *(("style_masks", (f"m{index}.png", mask, "image/png")) for index, _ in enumerate(masks)),
        ]
        if content_mask:
            files.append(("content_mask", ("face.png", mask, "image/png")))
        return client.post("/jobs", files=files, data={"size": "64"})

    wrong = post(1, 2)
    assert wrong.status_code == 400 and "one style mask per style picture" in wrong.json()["error"]
    assert post(1, content_mask=True).status_code == 201
    options = queue.jobs[0].options
    assert len(options.style_masks) == 1 and open(options.style_masks[0], "rb").read() == mask
    assert open(options.content_mask, "rb").read() == mask
    assert queue.jobs[0].settings["style masks"] == "m0.png" and queue.jobs[0].settings["content mask"] == "face.png"


def test_the_form_reads_its_defaults_and_bounds_from_the_server(app):
    """One home for the form's numbers: the page has none of its own, /jobs hands them out, and they
    are the options' defaults and the checks' bounds."""
    import re

    from nst_ext.plan.options import StyleOptions
    from nst_ext.web.uploads import LARGEST_SIZE, LARGEST_STEPS, form_fields

    client, _, _, _ = app
    fields = client.get("/jobs").json()["form"]
    assert fields == form_fields()
    assert fields["size"]["value"] == StyleOptions().output_size and fields["size"]["max"] == LARGEST_SIZE
    assert fields["style_weight"]["value"] == StyleOptions().style_weight and fields["steps"]["max"] == LARGEST_STEPS
    page = client.get("/").text
    for name in fields:
        tag = re.search(rf'<input[^>]*name="{name}"[^>]*>', page).group(0)
        assert not re.search(r'\b(value|min|max)="', tag), tag
