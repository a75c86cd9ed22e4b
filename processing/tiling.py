"""Tiling for high-resolution images: overlapping tiles in, one stitched anomaly map out.

A 2048x2048 part resized to a 256 px model input loses defects a few pixels wide. Tiled, the model
sees every pixel at the image's own resolution, in tiles of its input size (the AnomalyModel
contract is unchanged: it only ever sees batches of tiles).

Tiles start every `tile - overlap` pixels along each axis and the last tile of a row or column is
placed flush with the border, so every pixel is covered and no tile hangs over the edge. An image
smaller than a tile is padded by repeating its border pixels, and the padding is cut off the map.
Where tiles overlap, the map is the average of their maps. The image score is the largest of its
tiles' scores, each computed by the method's own `maps_and_scores`, so a defect scores as it would
in one tile.

Tiles run through the model `inference_batch_size` at a time and are summed into their image's map
as they come, so besides the images and their maps, memory holds one batch of tiles.
"""
import itertools
from dataclasses import dataclass

import numpy as np

from processing.errors import UserError


def add_arguments(parser):
    """--tile/--overlap of the commands that apply a trained model (finetune, test, predict)."""
    parser.add_argument("--tile", type=int, default=None,
                        help="apply the model tile by tile; SIZE must be its input size, 0 means whole resized images "
                             "(default: as trained)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="overlap of neighbouring tiles in pixels (default: as trained, else tile / 4)")


@dataclass(frozen=True)
class Tiling:
    tile: int
    overlap: int = 0

    def __post_init__(self):
        if self.tile < 1:
            raise UserError(f"--tile must be at least 1 pixel, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise UserError(f"--overlap must be at least 0 and smaller than the tile ({self.tile} px), "
                            f"got {self.overlap}")

    @classmethod
    def from_flags(cls, tile, overlap):
        """The tiling the --tile/--overlap flags ask for; None without --tile (or with --tile 0)."""
        if not tile:
            if overlap is not None:
                raise UserError("--overlap needs --tile: pass the tile size too")
            return None
        return cls(tile, tile // 4 if overlap is None else overlap)

    @classmethod
    def from_json(cls, record):
        return cls(record["tile"], record["overlap"]) if record else None

    def to_json(self):
        return {"tile": self.tile, "overlap": self.overlap}

    @property
    def stride(self):
        return self.tile - self.overlap

    def starts(self, length):
        """First pixel of each tile along an axis of `length` pixels; the last tile ends at the border."""
        if length <= self.tile:
            return [0]
        return list(range(0, length - self.tile, self.stride)) + [length - self.tile]

    def positions(self, height, width):
        """(top, left) of every tile, row by row."""
        return [(top, left) for top in self.starts(height) for left in self.starts(width)]

    def count(self, height, width):
        return len(self.starts(height)) * len(self.starts(width))

    def pad(self, image):
        """`image` (H, W, C) grown to at least tile x tile by repeating its last row and column."""
        height, width = image.shape[:2]
        extra = ((0, max(self.tile - height, 0)), (0, max(self.tile - width, 0)), (0, 0))
        return np.pad(image, extra, mode="edge") if any(after for _, after in extra) else image

    def split_tensor(self, image):
        """The tiles of one tf image tensor of static shape (H >= tile, W >= tile, C), for tf.data training."""
        import tensorflow as tf

        height, width = image.shape[:2]
        positions = self.positions(height, width)
        return tf.stack([image[top:top + self.tile, left:left + self.tile] for top, left in positions])


class Stitcher:
    """Sums tile maps into a full map and counts how many tiles covered each pixel; `result()` averages."""

    def __init__(self, height, width, tile):
        self.height, self.width, self.tile = height, width, tile
        padded = (max(height, tile), max(width, tile))
        self.total = np.zeros(padded, np.float64)  # float64: sums of many float32 maps stay exact enough
        self.covered = np.zeros(padded, np.int32)

    def add(self, tile_maps, positions):
        for tile_map, (top, left) in zip(tile_maps, positions):
            self.total[top:top + self.tile, left:left + self.tile] += tile_map
            self.covered[top:top + self.tile, left:left + self.tile] += 1

    def result(self):
        if not self.covered.all():
            raise ValueError("some pixels are covered by no tile")
        return (self.total / self.covered)[:self.height, :self.width].astype(np.float32)


def stitch(tile_maps, positions, height, width):
    """(H, W) average of (n, tile, tile) maps placed at `positions`."""
    stitcher = Stitcher(height, width, np.shape(tile_maps)[-1])
    stitcher.add(tile_maps, positions)
    return stitcher.result()


def tiled_maps_and_scores(model, images, tiling=None):
    """(N, H, W) maps and (N,) scores of images (N, H, W, C): the model's own without tiling, else
    stitched from tiles; tiles of consecutive images share batches, and an image's sums are
    dropped as soon as its map is done."""
    if tiling is None:
        return model.maps_and_scores(images)
    images = np.asarray(images, np.float32)
    height, width = images.shape[1:3]
    maps = np.empty(images.shape[:3], np.float32)
    scores = np.full(len(images), -np.inf, np.float32)
    in_progress = {}  # image index -> Stitcher
    tiles = _tiles(images, tiling)
    while batch := list(itertools.islice(tiles, model.inference_batch_size)):
        indices, positions, crops = zip(*batch)
        tile_maps, tile_scores = model.maps_and_scores(np.stack(crops))
        for index, position, tile_map, tile_score in zip(indices, positions, tile_maps, tile_scores):
            in_progress.setdefault(index, Stitcher(height, width, tiling.tile)).add([tile_map], [position])
            scores[index] = max(scores[index], tile_score)
        for index in [i for i in in_progress if i < indices[-1]]:  # images are tiled in order: these are complete
            maps[index] = in_progress.pop(index).result()
    for index, stitcher in in_progress.items():
        maps[index] = stitcher.result()
    return maps, scores


def _tiles(images, tiling):
    """(image index, (top, left), tile) for every tile of every image, in order."""
    for index, image in enumerate(images):
        padded = tiling.pad(image)
        for top, left in tiling.positions(*padded.shape[:2]):
            yield index, (top, left), padded[top:top + tiling.tile, left:left + tiling.tile]
