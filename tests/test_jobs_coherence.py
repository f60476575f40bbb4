"""nst_ext.jobs.coherence: how a frame follows the frames before it. The chain's logic runs here with
stand-in stylizers (they return their start image, so a frame's picture is exactly what the chain
carried over), judged by the true motion of benchmarks/clips.py's clips; a real stylization of a
panned clip is tests/test_jobs_video.py's."""

from types import SimpleNamespace

import pytest
import torch

from nst_ext.errors import OptionError
from nst_ext.jobs.coherence import LONG_TERM, FrameChain, check_long_term, temporal_strength
from nst_ext.plan.options import StyleOptions

pytest.importorskip("cv2", reason="optical flow needs OpenCV (requirements.txt pins opencv-python-headless)")

from clips import motion_clip, warping_error  # noqa: E402


class StandIn:
    """In place of a Stylizer: paints a fixed random texture on a frame of its own (no start image),
    returns its start image for a frame that follows others; records what it was given. Its
    run number `stop_at`, counted over every StandIn, reports Ctrl-C (``interrupted``)."""

    stop_at, runs = None, 0

    def __init__(self, options=None):
        self.options, self.calls = options or StyleOptions(), []

    def run(self, content, styles, callback=None, init=None, temporal=None):
        self.calls.append(SimpleNamespace(content=content, init=init, temporal=temporal))
        StandIn.runs += 1
        texture = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
        return SimpleNamespace(
            tensor=texture if init is None else init.clone(), interrupted=StandIn.runs == StandIn.stop_at
        )


def run_chain(chain, frames):
    """The frames stylized in order as the video job drives the chain (the next frame read first)."""
    outputs = []
    chain.add_input(0, frames[0])
    for index in range(len(frames)):
        if index + 1 < len(frames):
            chain.add_input(index + 1, frames[index + 1])
        outputs.append(chain.stylize(index).tensor)
    return outputs


@pytest.mark.parametrize("long_term, expected", [((1, 2, 4), (1, 2, 4)), ([4, 1], (1, 4)), ((1,), (1,))])
def test_long_term_frames_are_checked_and_sorted(long_term, expected):
    assert check_long_term(long_term) == expected


@pytest.mark.parametrize("bad", [(), (2, 4), (1, 1), (0, 1), (1, 2.5), (True,), "1,2", None])
def test_bad_long_term_frames_are_one_option_error(bad):
    with pytest.raises(OptionError, match="long-term frames"):
        check_long_term(bad)


def test_an_unknown_coherence_is_refused():
    with pytest.raises(OptionError, match="coherence must be one of flow, still, none"):
        FrameChain(StandIn(), StandIn(), [], coherence="optical")


def test_the_texture_moves_with_a_panning_camera():
    clip = motion_clip("pan", "chelsea", 8, (60, 80), pan=(2, 1))
    results = {}
    for coherence in ("flow", "still"):
        with FrameChain(StandIn(), StandIn(), [], coherence=coherence) as chain:
            results[coherence] = warping_error(clip, run_chain(chain, clip.frames))
    # carried by the flow, the first frame's texture stays on the scene; left on the screen, it slides
    assert results["flow"] < 0.15 * results["still"], results


def test_the_temporal_target_is_each_pixels_most_recent_trusted_past():
    chain = FrameChain(StandIn(), StandIn(), [], coherence="flow", long_term=(1, 2, 4))
    height, width = 6, 8
    frame = torch.full((3, height, width), 0.1)
    chain.inputs[10] = frame
    for back, value in ((1, 0.25), (2, 0.5), (4, 0.75)):
        chain.outputs[10 - back] = torch.full((3, height, width), value)
    still = torch.zeros(2, height, width)

    def disagreeing(columns):  # a forward flow that does not cancel the (zero) backward one there
        forward = torch.zeros(2, height, width)
        forward[0, :, :columns] = 5.0
        return still, forward

    flows = {1: disagreeing(6), 2: disagreeing(4), 4: disagreeing(1)}
    init, target, mask = chain.warped_past(10, flows)
    expected = torch.tensor([0.1, 0.75, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25])
    assert torch.equal(target[0, 0, 1:], expected[1:]) and target[0, 0, 0] == 0
    assert torch.equal(mask, (torch.arange(width) >= 1).float().expand(height, width))
    assert torch.equal(init[0, 0], expected)  # the content where no earlier frame is trusted
    chain.close()


def test_the_chain_keeps_only_the_frames_it_reaches():
    clip = motion_clip("pan", "chelsea", 9, (30, 40), pan=(1, 0))
    following = StandIn()
    with FrameChain(StandIn(), following, [], coherence="flow", long_term=LONG_TERM) as chain:
        run_chain(chain, clip.frames)
        assert sorted(chain.outputs) == list(range(3, 9)) and len(chain.inputs) <= 6
    temporal = following.calls[-1].temporal
    assert temporal.mask.shape == (30, 40) and temporal.mask.mean() > 0.9  # a pan: almost all trusted
    assert temporal.weight == chain.temporal_weight


@pytest.mark.parametrize("style_weight", [0.0, 2.9, 20.0, 200.0])
def test_the_temporal_term_follows_the_style_weight(style_weight):
    """The temporal weight is given for the default style weight and scales with the style weight,
    in the term each frame gets: the balance of the two terms is the same at any style strength."""
    clip = motion_clip("pan", "chelsea", 3, (30, 40), pan=(1, 0))
    following = StandIn(StyleOptions(style_weight=style_weight))
    with FrameChain(StandIn(), following, [], coherence="flow", temporal_weight=500.0) as chain:
        run_chain(chain, clip.frames)
    expected = 500.0 * style_weight / StyleOptions().style_weight
    assert temporal_strength(500.0, style_weight) == pytest.approx(expected)
    assert following.calls[-1].temporal.weight == pytest.approx(expected)


def test_still_and_none_are_the_older_ways():
    clip = motion_clip("object", "hopper", 3, (30, 40), object_photo="ihc", object_step=(2, 0))
    opening, following = StandIn(), StandIn()
    with FrameChain(opening, following, [], coherence="still") as chain:
        outputs = run_chain(chain, clip.frames)
    assert len(opening.calls) == 1 and following.calls[0].init is outputs[0]
    mask = following.calls[0].temporal.mask
    assert 0 < mask.mean() < 1  # the moving object is free, the still background held
    opening = StandIn()
    with FrameChain(opening, StandIn(), [], coherence="none") as chain:
        run_chain(chain, clip.frames)
    assert len(opening.calls) == 3 and all(call.temporal is None for call in opening.calls)


@pytest.mark.parametrize("pan", [(0, 0), (1, 0)], ids=["still camera", "pan"])
def test_a_carried_frame_takes_the_input_s_light_and_keeps_its_texture(pan):
    # A fade to dark: each input frame 6% darker than the one before. The temporal term holds trusted
    # pixels to the carried frame, so without the input's change the video kept its first light.
    clip = motion_clip("fade", "chelsea", 6, (60, 80), pan=pan)
    frames = [(frame * (1 - 0.06 * index)).clamp(0, 1) for index, frame in enumerate(clip.frames)]

    class MidTones(StandIn):  # a first frame that darkening does not clip at 0
        def run(self, content, styles, callback=None, init=None, temporal=None):
            result = super().run(content, styles, callback, init, temporal)
            return result if init is not None else SimpleNamespace(tensor=0.4 + 0.5 * result.tensor, interrupted=False)

    with FrameChain(MidTones(), StandIn(), [], coherence="flow") as chain:
        outputs = run_chain(chain, frames)
    inner = (slice(None), slice(10, -10), slice(10, -10))

    def darkened(images):
        return float(images[0][inner].mean() - images[-1][inner].mean())

    assert darkened(outputs) > 0.7 * darkened(frames) > 0.05, (darkened(outputs), darkened(frames))
    if pan == (0, 0):  # the first frame's texture is all there, only darker: what changed is smooth
        change = (outputs[-1] - outputs[0])[inner]
        smooth = torch.nn.functional.avg_pool2d(change[None], 5, stride=1, padding=2)[0]
        assert float((change - smooth).abs().mean()) < 0.01
