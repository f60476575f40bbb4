"""What VGG's layers keep alive for the backward pass, and where to cut the network: into segments
for activation checkpointing (the least held at once) and across devices (in proportion to their free
memory). Torch-free byte counts from the layer registry (nst_ext.plan.layers); the stage's whole
estimate is nst_ext.plan.memory's, the devices' placement nst_ext.model.network's.
"""

from typing import List, Optional, Sequence, Tuple

from nst_ext.plan.layers import LAYER_INDEX, LAYERS, layer_elements


def saved_bytes_per_layer(
    height: int, width: int, last_layer: str, tapped: Sequence[str], activation_bytes: int
) -> List[int]:
    """Bytes each layer's output keeps alive for the backward pass, for layers 0 … `last_layer`,
    with in-place ReLU (nst_ext.model.vgg): a ReLU's output (its own backward and the next layer read
    it), a pooling's output (the next convolution reads it), a convolution's output only when a
    loss reads it (`tapped`); the first convolution's input is counted with the first layer."""
    last, read_by_losses = LAYER_INDEX[last_layer], set(tapped)
    saved = []
    for index in range(last + 1):
        layer = LAYERS[index]
        keeps = layer.kind == "relu" or (layer.kind == "pool" and index < last) or layer.name in read_by_losses
        saved.append(layer_elements(index, height, width) * activation_bytes if keeps else 0)
    saved[0] += 3 * height * width * activation_bytes
    return saved


def choose_segments(
    saved: Sequence[int], output_bytes: Sequence[int], breaks: Sequence[int] = ()
) -> Tuple[List[Tuple[int, int]], int]:
    """Splits layers ``0 … len(saved) - 1`` into contiguous segments ``(start, stop)`` for
    activation checkpointing: what stays is each segment's input (``output_bytes`` of the layer
    before it) plus, during the backward pass, the largest segment's saved activations. Returns
    the segments minimising that peak, and the peak in bytes. ``breaks``: layer indices at which a
    segment must start (a change of device)."""
    count = len(saved)
    best: Optional[Tuple[List[Tuple[int, int]], int]] = None
    # Every contiguous run's total is a candidate for the largest segment's size.
    thresholds = {sum(saved[a:b]) for a in range(count) for b in range(a + 1, count + 1)}
    for threshold in sorted(t for t in thresholds if t > 0):
        segments, start, interior = [], 0, 0
        for index in range(count):
            if index > start and (index in breaks or interior + saved[index] > threshold):
                segments.append((start, index))
                start, interior = index, 0
            interior += saved[index]
        segments.append((start, count))
        peak = sum(output_bytes[stop - 1] for _, stop in segments[:-1]) + max(sum(saved[a:b]) for a, b in segments)
        if best is None or peak < best[1]:
            best = (segments, peak)
    if best is None:  # no layer keeps anything: one segment, nothing held
        return [(0, count)], 0
    return best


def split_layers(saved: Sequence[int], free: Sequence[int]) -> List[int]:
    """The layer indices at which each device after the first begins, so that the bytes each
    device's layers keep (`saved`, per layer) are in proportion to its `free` bytes. Each device
    gets at least one layer."""
    devices, total, capacity = len(free), sum(saved), sum(free)
    starts: List[int] = []
    running, device = 0, 0
    for index, size in enumerate(saved):
        remaining_layers, remaining_devices = len(saved) - index, devices - 1 - device
        share = total * sum(free[: device + 1]) / capacity
        if (
            device < devices - 1
            and index > (starts[-1] if starts else 0)
            and (running + size / 2 > share or remaining_layers <= remaining_devices)
        ):
            starts.append(index)
            device += 1
        running += size
    while len(starts) < devices - 1:  # fewer layers than devices cannot happen for VGG; keep it total
        starts.append(len(saved) - (devices - 1 - len(starts)))
    return starts
