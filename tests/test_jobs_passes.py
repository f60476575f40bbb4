"""nst_ext.jobs.passes: Ruder et al.'s multi-pass mode. The passes' logic runs with a stand-in
stylizer (it returns its start image, so a frame's picture is exactly what the pass made of it),
judged against the true motion of benchmarks/clips.py's clips; a real stylization runs once."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from nst_ext.errors import OptionError
from nst_ext.jobs import passes
from nst_ext.jobs.coherence import temporal_strength
from nst_ext.plan.options import StyleOptions

pytest.importorskip("cv2", reason="optical flow needs OpenCV (requirements.txt pins opencv-python-headless)")

from clips import motion_clip  # noqa: E402


class StandIn:
    """In place of a Stylizer: returns its start image; records what it was given. Its run number
    `stop_at` reports Ctrl-C (``interrupted``)."""

    def __init__(self, style_weight=StyleOptions.style_weight, stop_at=None):
        self.options = dataclasses.replace(StyleOptions(), style_weight=style_weight)
        self.calls, self.stop_at = [], stop_at

    def run(self, content, styles, callback=None, init=None, temporal=None):
        self.calls.append(SimpleNamespace(content=content, init=init, temporal=temporal))
        return SimpleNamespace(tensor=init.clone(), interrupted=len(self.calls) == self.stop_at)


@pytest.mark.parametrize("good", [1, 2, passes.MAX_PASSES])
def test_passes_in_range_are_taken(good):
    assert passes.check_passes(good) == good


@pytest.mark.parametrize("bad", [0, -1, passes.MAX_PASSES + 1, 2.0, True, "2", None])
def test_passes_out_of_range_are_one_option_error(bad):
    with pytest.raises(OptionError, match="passes must be"):
        passes.check_passes(bad)


def test_passes_alternate_backward_then_forward_keeping_each_pass_s_first_frame():
    assert passes.pass_order(5, 1) == (range(3, -1, -1), 1)
    assert passes.pass_order(5, 2) == (range(1, 5), -1)
    assert passes.pass_order(5, 3) == passes.pass_order(5, 1)


def test_each_frame_starts_from_its_picture_blended_with_its_neighbour_s_warped():
    clip = motion_clip("pan", "chelsea", 4, (30, 40), pan=(1, 0))  # whole-pixel pan: exact warps
    generator = torch.Generator().manual_seed(1)
    outputs = [torch.rand(3, 30, 40, generator=generator) for _ in clip.frames]
    before = [output.clone() for output in outputs]
    stand_in = StandIn(style_weight=3 * StyleOptions.style_weight)
    done = []
    stopped = passes.refine_in_passes(
        stand_in, [], clip.frames, outputs, 3, 500.0, callback=lambda p, i: done.append((p, i))
    )
    assert not stopped
    assert done == [(2, 2), (2, 1), (2, 0), (3, 1), (3, 2), (3, 3)]
    first = stand_in.calls[0]  # pass 2, frame 2: its neighbour is frame 3 (kept), the camera 1 px right
    assert torch.equal(first.content, clip.frames[2])
    trusted = first.temporal.mask.bool()
    assert trusted[:, 2:-2].all() and not trusted[:, 0].any()  # frame 3 no longer shows the left column
    neighbour = torch.zeros_like(before[3])
    neighbour[:, :, 1:] = before[3][:, :, :-1]  # frame 3 moved onto frame 2's screen: frame2(x) = frame3(x - 1)
    torch.testing.assert_close(
        first.temporal.previous[:, :, 1:-1], neighbour[:, :, 1:-1], atol=0.02, rtol=0
    )  # the flow found, not the true one
    blended = passes.PASS_BLEND * neighbour + (1 - passes.PASS_BLEND) * before[2]
    torch.testing.assert_close(first.init[:, trusted][:, :], blended[:, trusted], atol=0.02, rtol=0)
    assert torch.equal(first.init[:, ~trusted], before[2][:, ~trusted])
    assert first.temporal.weight == pytest.approx(temporal_strength(500.0, stand_in.options.style_weight))
    assert torch.equal(outputs[0], stand_in.calls[2].init)  # each frame replaced by its new picture
    assert torch.equal(outputs[3], stand_in.calls[5].init)


def test_a_stop_keeps_the_frames_made_so_far():
    clip = motion_clip("pan", "chelsea", 4, (30, 40), pan=(1, 0))
    outputs = [frame.clone() * 0.5 for frame in clip.frames]
    before = [output.clone() for output in outputs]
    stand_in = StandIn(stop_at=2)
    assert passes.refine_in_passes(stand_in, [], clip.frames, outputs, 2, 500.0)
    assert not torch.equal(outputs[2], before[2])  # the first frame of the pass was finished
    assert torch.equal(outputs[1], before[1]) and torch.equal(outputs[3], before[3])


def test_one_pass_or_one_frame_changes_nothing_and_mismatched_lists_are_refused():
    clip = motion_clip("pan", "chelsea", 3, (30, 40), pan=(1, 0))
    outputs = [frame.clone() for frame in clip.frames]
    stand_in = StandIn()
    assert not passes.refine_in_passes(stand_in, [], clip.frames, outputs, 1, 500.0)
    assert not passes.refine_in_passes(stand_in, [], clip.frames[:1], outputs[:1], 3, 500.0)
    assert not stand_in.calls
    with pytest.raises(ValueError, match="2 stylized frames for 3"):
        passes.refine_in_passes(stand_in, [], clip.frames, outputs[:2], 2, 500.0)
