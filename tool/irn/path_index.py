"""Pixel pairs within a radius and the thick line ("path") joining them (METHOD.md 13.4).

IRN compares every pixel of the stride-4 grid with its neighbours inside an open disc of radius
r. Each unordered pair is taken once, through a *search direction* o = (dy, dx) of the lower
half-plane. A pair's affinity is 1 minus the strongest class boundary on the path between its two
pixels, so for each direction we precompute the path's points and, for a grid of a given size,
the flat pixel indices of every source, destination and path point.

Conventions used by every array here:
  * pixel indices are row-major: idx(y, x) = y * S_w + x on an (S_h, S_w) grid;
  * directions are in *search order* (``search_dst``): paths bucketed by length, buckets in
    ascending length, generation order within a bucket (METHOD.md 13.4.2). Every label mask,
    affinity channel and displacement target uses this order.
"""
from __future__ import annotations

import numpy as np
import torch

# Pair labels are made by the data pipeline (data/ may not import tool/irn); re-exported here,
# their home in the module map (METHOD.md 13.11).
from data.irn_pairs import affinity_labels

__all__ = ["PathIndex", "affinity_labels", "direction_path", "path_max", "search_directions"]


def search_directions(radius: int) -> list[tuple[int, int]]:
    """The direction set O_r in generation order: (0, 1) .. (0, r-1), then dy = 1 .. r-1 with
    dx ascending, keeping the offsets strictly inside the disc (METHOD.md 13.4.1)."""
    dirs = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        dirs += [(dy, dx) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius ** 2]
    return dirs


def direction_path(dy: int, dx: int) -> np.ndarray:
    """The thick line from (0, 0) to (dy, dx) as an (L, 2) int array of (y, x) points.

    A point of the bounding box belongs to the path when its distance to the line through the
    two endpoints is below 1. Points run from the destination to the source: sorted by
    decreasing |y| + |x|, ties kept in generation order (y, then x, ascending).
    """
    norm2 = dy * dy + dx * dx
    points = [(y, x)
              for y in range(min(0, dy), max(0, dy) + 1)
              for x in range(min(0, dx), max(0, dx) + 1)
              if (dy * x - dx * y) ** 2 < norm2]  # squared distance < 1, without division
    points.sort(key=lambda p: -(abs(p[0]) + abs(p[1])))  # list.sort is stable
    return np.array(points, dtype=np.int64)


class PathIndex:
    """Search directions, their paths and the flat index arrays for one grid size.

    Args:
        radius: r, an integer >= 2; directions satisfy dy^2 + dx^2 < r^2 (10 for training,
            5 for inference).
        default_size: (S_h, S_w) of the grid the index arrays are built for. It must leave at
            least one source: S_h > r_f and S_w > 2 r_f.

    Attributes:
        radius, radius_floor: r and r_f = r - 1, the largest |dy| or |dx| of a direction.
        default_size: (S_h, S_w).
        search_paths: one np int64 array (n_g, L_g, 2) of (y, x) path points per bucket g,
            buckets in ascending path length L_g; the destination is point 0, the source last.
        search_dst: np int64 (n_dirs, 2), the (dy, dx) of every direction in search order.
        path_indices: one np int64 array (n_g, L_g, n_src) per bucket: the flat index of path
            point l of path j when the path starts at source s.
        src_indices: np int64 (n_src,), the sources: rows [0, S_h - r_f) and columns
            [r_f, S_w - r_f), row-major, so every direction stays on the grid.
        dst_indices: np int64 (n_dirs, n_src), source + direction.
    """

    def __init__(self, radius: int, default_size: tuple[int, int]) -> None:
        if int(radius) != radius or radius < 2:
            raise ValueError(f"radius must be an integer >= 2, got {radius}")
        self.radius = int(radius)
        self.radius_floor = self.radius - 1  # = ceil(r) - 1 for an integer r

        paths = [direction_path(dy, dx) for dy, dx in search_directions(self.radius)]
        lengths = sorted({len(p) for p in paths})
        self.search_paths = [np.stack([p for p in paths if len(p) == n]) for n in lengths]
        self.search_dst = np.concatenate([g[:, 0] for g in self.search_paths])

        self.default_size = (int(default_size[0]), int(default_size[1]))
        self.path_indices, self.src_indices, self.dst_indices = self.indices_for(
            self.default_size)

    @property
    def n_directions(self) -> int:
        return len(self.search_dst)

    def source_crop(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the source block of an (S_h, S_w) grid:
        (0, r_f, S_h - r_f, S_w - 2 r_f)."""
        r_f = self.radius_floor
        c_h, c_w = size[0] - r_f, size[1] - 2 * r_f
        if c_h <= 0 or c_w <= 0:
            raise ValueError(f"grid {tuple(size)} is too small for radius {self.radius}: "
                             f"need height > {r_f} and width > {2 * r_f}")
        return 0, r_f, c_h, c_w

    def indices_for(self, size: tuple[int, int]
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(path_indices, src_indices, dst_indices) of an (S_h, S_w) grid (METHOD.md 13.4.3);
        shapes as the attributes of the same names."""
        top, left, c_h, c_w = self.source_crop(size)
        width = size[1]
        ys, xs = np.meshgrid(np.arange(top, top + c_h), np.arange(left, left + c_w),
                             indexing="ij")
        src = (ys * width + xs).reshape(-1).astype(np.int64)
        # A point (y, x) relative to any source is a constant flat offset y * S_w + x.
        path_indices = [(g[..., 0] * width + g[..., 1])[..., None] + src
                        for g in self.search_paths]
        dst = (self.search_dst[:, 0] * width + self.search_dst[:, 1])[:, None] + src
        return path_indices, src, dst


def path_max(boundary: torch.Tensor,
             path_indices: list[np.ndarray] | list[torch.Tensor]) -> torch.Tensor:
    """Strongest boundary along every path: (N, 1, S_h, S_w) -> (N, n_dirs, n_src).

    ``1 - path_max(B, path_indices)`` is the pair affinity of METHOD.md 13.4.5. ``path_indices``
    must belong to the grid size of ``boundary``; it is read, never modified. The gradient goes
    to the first maximal point of each path (the one nearest the destination), as a max-pool
    does.
    """
    n = boundary.shape[0]
    flat = boundary.reshape(n, -1)
    out = []
    for idx in path_indices:
        idx = torch.as_tensor(idx, device=flat.device)
        n_g, length, n_src = idx.shape
        # index_select (not fancy indexing): a cheaper backward for these large index sets
        gathered = flat.index_select(1, idx.reshape(-1)).view(n, n_g, length, n_src)
        out.append(gathered.max(dim=2).values)
    return torch.cat(out, dim=1)
