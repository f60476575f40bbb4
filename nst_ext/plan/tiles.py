"""Where the tiles of a tiled stage lie (torch-free: the memory plan sizes them).

A picture too large for one pass through VGG is evaluated tile by tile (nst_ext.objective.tiled).
Each tile *owns* a rectangle of the picture and reads it with a *halo* around it: a VGG feature
depends only on the pixels of its receptive field, so with a halo at least as wide as that field
reaches (from the deepest layer in use) the features at the tile's own positions are exactly the
untiled picture's, zero padding at the picture's border included. The own rectangles' edges and the
tiles' origins lie on the pooling grid of that layer (multiples of 2^poolings), so every layer's
own positions are whole cells and the tiles' own cells partition each layer's feature map.
"""

from dataclasses import dataclass
from typing import Iterable, List, Tuple

from nst_ext.plan.layers import LAYER_INDEX, LAYERS


def _reach(names: Iterable[str]) -> Tuple[int, int]:
    """(before, after): how many pixels before a cell's first pixel and after its last pixel the
    receptive field of the deepest named layer's cell reaches (3x3 convolutions with padding 1,
    2x2 poolings of stride 2), found by walking the layers back from one cell."""
    deepest = max(LAYER_INDEX[name] for name in names)
    first, last = 0, 0  # the cell's index range at the deepest layer
    for layer in reversed(LAYERS[: deepest + 1]):
        if layer.kind == "conv":
            first, last = first - 1, last + 1
        elif layer.kind == "pool":
            first, last = 2 * first, 2 * last + 1
    stride = 2 ** LAYERS[deepest].pools_before
    return -first, last - (stride - 1)


def alignment(names: Iterable[str]) -> int:
    """The pooling grid of the deepest named layer, in pixels: 2^(its poolings)."""
    return 2 ** max(LAYERS[LAYER_INDEX[name]].pools_before for name in names)


def halo(names: Iterable[str]) -> int:
    """The halo in pixels a tile needs for exact features at every named layer: the receptive
    field's reach, rounded up to the pooling grid (80 for relu5_1)."""
    names = list(names)
    grid = alignment(names)
    reach = max(_reach(names))
    return -(-reach // grid) * grid


def tile_edge(edge: int, names: Iterable[str]) -> int:
    """`edge` rounded down to the pooling grid (at least one cell of it)."""
    grid = alignment(names)
    return max(grid, edge // grid * grid)


@dataclass(frozen=True)
class Tile:
    """One tile: it owns rows ``top … bottom - 1`` and columns ``left … right - 1`` of the
    picture and reads the rows and columns of ``read`` = (top, bottom, left, right), its own
    rectangle with the halo, clipped to the picture. The picture is ``height`` x ``width``."""

    top: int
    bottom: int
    left: int
    right: int
    read: Tuple[int, int, int, int]
    height: int
    width: int

    def own_cells(self, pools: int) -> Tuple[slice, slice, slice, slice]:
        """At a layer after `pools` poolings: (rows, columns) of the tile's own cells in the
        tile's feature map, then (rows, columns) of the same cells in the picture's feature map."""
        stride = 2**pools

        def span(start: int, stop: int, read_start: int, picture_side: int) -> Tuple[slice, slice]:
            cells = picture_side // stride if stop == picture_side else stop // stride
            first = start // stride
            return slice(first - read_start // stride, cells - read_start // stride), slice(first, cells)

        rows_here, rows = span(self.top, self.bottom, self.read[0], self.height)
        columns_here, columns = span(self.left, self.right, self.read[2], self.width)
        return rows_here, columns_here, rows, columns


def split(height: int, width: int, edge: int, names: Iterable[str]) -> List[Tile]:
    """The tiles of a `height` x `width` picture whose own rectangles are at most `edge` pixels on a
    side (`edge` a multiple of :func:`alignment`), with the halo the named layers need."""
    names = list(names)
    margin = halo(names)
    if edge % alignment(names):
        raise ValueError(f"a tile edge of {edge} px is not on the {alignment(names)} px pooling grid")
    tiles = []
    for top in range(0, height, edge):
        bottom = min(height, top + edge)
        for left in range(0, width, edge):
            right = min(width, left + edge)
            read = (
                max(0, top - margin),
                min(height, bottom + margin),
                max(0, left - margin),
                min(width, right + margin),
            )
            tiles.append(Tile(top, bottom, left, right, read, height, width))
    return tiles
