"""Stage 2, inference: the IRN random walk from CAMs and a class-boundary map to pseudo labels
(METHOD.md 13.4.5 and 13.6).

Grid conventions: the edge map and the CAMs live on the stride-4 grid h x w (h = ceil(H / 4)),
pixels are vertices indexed row-major (y * w + x), and the walk couples pixel pairs whose offset
is one of the path index's search directions (34 for radius 5).

Two engines compute the same walk (METHOD.md 13.6.7):
- ``dense``: the reference. It builds the (hw, hw) transition matrix and squares it
  ``exp_times`` times (O((hw)^3) per squaring, about 0.55 GB per matrix on a VOC image).
- ``sparse``: it applies the sparse transition matrix 2^exp_times times to the (C, hw) seeds
  (about 69 non-zeros per column), which is orders of magnitude cheaper on a CPU.
``auto`` picks ``dense`` on CUDA (the reference arithmetic, fast there) and ``sparse`` elsewhere.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.voc import NUM_CLASSES, NUM_FG
from tool.irn.path_index import PathIndex, path_max

ENGINES = ("auto", "dense", "sparse")

IndexLike = np.ndarray | torch.Tensor


def _index(idx: IndexLike, device: torch.device) -> torch.Tensor:
    """int64 tensor on ``device``; it may share the caller's memory, which is only read (Q26)."""
    return torch.as_tensor(idx, dtype=torch.long, device=device)


def resolve_engine(engine: str, device: torch.device | str) -> str:
    """``dense`` or ``sparse`` for ``engine`` on ``device`` (``auto``: dense on CUDA only)."""
    if engine not in ENGINES:
        raise ValueError(f"random-walk engine {engine!r}: expected one of {ENGINES}")
    if engine == "auto":
        return "dense" if torch.device(device).type == "cuda" else "sparse"
    return engine


def edge_to_affinity(edge: torch.Tensor, path_indices: Sequence[IndexLike]) -> torch.Tensor:
    """Affinity of every (source, direction) pair: one minus the strongest boundary on its path.

    edge: (N, 1, S_h, S_w) boundary probabilities. path_indices: one int64 array or tensor per
    path-length bucket, (n_g, L_g, n_src), flat indices into the S_h x S_w grid (not modified).
    Returns (N, n_dirs, n_src), directions in bucket order (the path index's ``search_dst``).
    """
    if edge.dim() != 4 or edge.shape[1] != 1:
        raise ValueError(f"edge: expected (N, 1, S_h, S_w), got {tuple(edge.shape)}")
    # both endpoints are path points, so the max covers them as well (METHOD.md 13.4.5)
    return 1 - path_max(edge, path_indices)


def affinity_sparse2dense(aff: torch.Tensor, src_indices: IndexLike, dst_indices: IndexLike,
                          n_vertices: int) -> torch.Tensor:
    """Dense symmetric affinity matrix with a unit diagonal.

    aff: (1, n_dirs, n_src); src_indices (n_src,); dst_indices (n_dirs, n_src), vertex indices
    below ``n_vertices``. Returns (n_vertices, n_vertices) with A[s, t] = A[t, s] = aff for each
    pair, 1 on the diagonal and 0 elsewhere. Repeated pairs add up, as in the reference's
    sparse-to-dense conversion (a path index never repeats one).
    """
    if aff.dim() == 3:
        if aff.shape[0] != 1:
            raise ValueError(f"aff: one image at a time, got batch {aff.shape[0]}")
        aff = aff[0]
    dst = _index(dst_indices, aff.device)
    src = _index(src_indices, aff.device).expand_as(dst)
    if aff.shape != dst.shape:
        raise ValueError(f"aff {tuple(aff.shape)} does not match dst_indices {tuple(dst.shape)}")
    src, dst, vals = src.reshape(-1), dst.reshape(-1), aff.reshape(-1)
    diag = torch.arange(n_vertices, device=aff.device)
    dense = torch.zeros(n_vertices, n_vertices, dtype=aff.dtype, device=aff.device)
    dense.index_put_((torch.cat([src, dst, diag]), torch.cat([dst, src, diag])),
                     torch.cat([vals, vals, torch.ones_like(diag, dtype=aff.dtype)]),
                     accumulate=True)
    return dense


def _column_normalise_(scaled: torch.Tensor) -> torch.Tensor:
    """Divide each column of ``scaled`` by its sum, in place."""
    return scaled.div_(scaled.sum(dim=0, keepdim=True))


def to_transition_matrix(affinity_dense: torch.Tensor, beta: float, times: int) -> torch.Tensor:
    """T^(2^times) for T = A^beta (element-wise) with each column divided by its sum.

    affinity_dense: (n, n), not modified. Returns (n, n), column-stochastic.
    """
    trans = _column_normalise_(affinity_dense.pow(beta))
    for _ in range(times):
        trans = trans @ trans
    return trans


def walk_graph(edge: torch.Tensor, radius: int = 5
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pixel pair the walk couples on the h x w grid of ``edge`` (1, h, w), with its
    affinity: (src (m,), dst (m,), aff (m,)), vertex indices row-major into h * w.

    The reference pads the edge map with 1.0 (``radius`` columns left and right, ``radius`` rows
    at the bottom) so that every pixel is a path-index source, builds the affinity over the padded
    grid and crops the valid block; keeping only the pairs with both ends in the image gives that
    block directly, without the padded (hw)^2 matrix (METHOD.md 13.6.3 step 1).
    """
    if edge.dim() != 3 or edge.shape[0] != 1:
        raise ValueError(f"edge: expected (1, h, w), got {tuple(edge.shape)}")
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius: an integer >= 2, got {radius}")
    radius = int(radius)
    h, w = edge.shape[1:]
    ph, pw = h + radius, w + 2 * radius
    index = PathIndex(radius, (ph, pw))
    padded = F.pad(edge[None], (radius, radius, 0, radius), mode="constant", value=1.0)
    aff = edge_to_affinity(padded, index.path_indices)[0]  # (n_dirs, n_src)
    dst = _index(index.dst_indices, edge.device)
    src = _index(index.src_indices, edge.device).expand_as(dst)
    # padded vertex -> image vertex, -1 on the padding
    to_image = torch.full((ph, pw), -1, dtype=torch.long, device=edge.device)
    to_image[:h, radius:radius + w] = torch.arange(h * w, device=edge.device).view(h, w)
    to_image = to_image.view(-1)
    src, dst = to_image[src], to_image[dst]
    keep = (src >= 0) & (dst >= 0)
    return src[keep], dst[keep], aff[keep]


def _transposed_transition(src: torch.Tensor, dst: torch.Tensor, aff: torch.Tensor,
                           beta: float, n: int) -> torch.Tensor:
    """T^t as a sparse CSR (n, n) tensor, for T = S diag(1 / colsum S), S = A^beta.

    S is symmetric, so T^t = D^-1 S: row j of T^t is column j of T. Pairs are distinct (each
    unordered pair has one search direction), so no entry needs summing.
    """
    diag = torch.arange(n, device=aff.device)
    scaled = aff.pow(beta)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    vals = torch.cat([scaled, scaled, torch.ones(n, dtype=aff.dtype, device=aff.device)])
    rowsum = torch.zeros(n, dtype=aff.dtype, device=aff.device).index_add_(0, rows, vals)
    order = torch.argsort(rows * n + cols)  # CSR: by row, columns ascending within a row
    rows, cols, vals = rows[order], cols[order], (vals / rowsum[rows])[order]
    crow = torch.zeros(n + 1, dtype=torch.long, device=aff.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        return torch.sparse_csr_tensor(crow, cols, vals, (n, n), check_invariants=True)


def _sparse_walk(seeds: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, aff: torch.Tensor,
                 beta: float, steps: int) -> torch.Tensor:
    """seeds (C, n) times T^steps: y <- y T, ``steps`` times, as (T^t y^t)^t."""
    step = _transposed_transition(src, dst, aff, beta, seeds.shape[1])
    y = seeds.t().contiguous()
    for _ in range(steps):
        y = step @ y
    return y.t()


def propagate_to_edge(cams: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int,
                      radius: int = 5, engine: str = "dense") -> torch.Tensor:
    """The random walk of METHOD.md 13.6.3: seeds cams * (1 - edge), moved 2^exp_times steps.

    cams: (C, h, w) or (1, C, h, w); edge: (1, h, w) boundary probabilities on the same grid.
    engine: ``dense`` (reference: square the (hw, hw) transition matrix), ``sparse`` (apply the
    sparse transition 2^exp_times times) or ``auto`` (dense on CUDA, sparse elsewhere).
    Returns rw (C, 1, h, w): rw[c, j] = sum_i seeds[c, i] (T^(2^exp_times))[i, j].
    """
    if cams.dim() == 4:
        if cams.shape[0] != 1:
            raise ValueError(f"cams: one image at a time, got batch {cams.shape[0]}")
        cams = cams[0]
    if cams.dim() != 3 or edge.dim() != 3 or cams.shape[1:] != edge.shape[1:]:
        raise ValueError(f"cams {tuple(cams.shape)} and edge {tuple(edge.shape)}: expected "
                         "(C, h, w) and (1, h, w) on the same grid")
    engine = resolve_engine(engine, edge.device)
    dtype = torch.promote_types(torch.promote_types(cams.dtype, edge.dtype), torch.float32)
    cams, edge = cams.to(dtype), edge.to(dtype)
    n_ch, h, w = cams.shape
    if n_ch == 0:
        return cams.new_zeros(0, 1, h, w)
    seeds = (cams * (1 - edge)).reshape(n_ch, h * w)
    src, dst, aff = walk_graph(edge, radius)
    if engine == "dense":
        # to_transition_matrix inlined, in place on our own matrix and with no other name for
        # it, so that each squaring frees its operand: two (hw)^2 buffers at the peak, not three
        trans = _column_normalise_(
            affinity_sparse2dense(aff[None, None], src, dst[None], h * w).pow_(beta))
        for _ in range(exp_times):
            trans = trans @ trans
        rw = seeds @ trans
    else:
        rw = _sparse_walk(seeds, src, dst, aff, beta, 2 ** exp_times)
    return rw.reshape(n_ch, 1, h, w)


def rw_to_labels(rw: torch.Tensor, size: tuple[int, int], bg_thres: float,
                 keys: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo label and soft map from the walk's output (METHOD.md 13.6.4).

    rw: (C, 1, h, w); size: (H, W) with H <= 4h and W <= 4w. keys None: channel j is class
    key j (MuSCLe's all-classes layout, C = num_fg: 20 on VOC, 80 on COCO); otherwise the
    0-based class key of each channel.
    Upsampled x4 (bilinear), cropped to H x W, divided by its global maximum, with a constant
    channel ``bg_thres`` prepended. Returns (label np uint8 (H, W): 0 background, key + 1 for a
    class; soft np float16 (H, W, C + 1)). A maximum <= 0 (all-zero CAMs, no class) gives all
    background and zero class channels instead of the reference's NaN (METHOD.md 13.9 Q11).
    """
    if rw.dim() != 4 or rw.shape[1] != 1:
        raise ValueError(f"rw: expected (C, 1, h, w), got {tuple(rw.shape)}")
    n_ch, _, h, w = rw.shape
    H, W = (int(s) for s in size)
    if H > 4 * h or W > 4 * w:
        raise ValueError(f"size {(H, W)} is larger than 4 x the grid {(h, w)}")
    if keys is None:  # the channel count is the class count
        lut = torch.arange(n_ch + 1)
    else:
        keys = [int(k) for k in keys]
        if len(keys) != n_ch:
            raise ValueError(f"{len(keys)} keys for {n_ch} channels")
        lut = torch.tensor([0] + [k + 1 for k in keys])
    if n_ch:
        up = F.interpolate(rw.float(), scale_factor=4, mode="bilinear",
                           align_corners=False)[:, 0, :H, :W]
        if not torch.isfinite(up).all():
            raise ValueError("rw is not finite (NaN or inf in the CAMs or the edge map?)")
    else:
        up = rw.new_zeros(0, H, W, dtype=torch.float32)
    peak = up.max() if n_ch else up.new_zeros(())
    # Q11: with nothing positive there is nothing to normalise; everything is background
    up = up / peak if peak > 0 else torch.zeros_like(up)
    full = torch.cat([up.new_full((1, H, W), bg_thres), up])
    # torch.argmax returns the first maximum: background wins ties (Q29)
    label = lut.to(full.device)[full.argmax(dim=0)]
    return (label.to(torch.uint8).cpu().numpy(),
            full.permute(1, 2, 0).to(torch.float16).cpu().numpy())


def cams_on_grid(cam_dict: Mapping[int, np.ndarray], size: tuple[int, int],
                 grid: tuple[int, int], device: torch.device | str,
                 keys: Sequence[int] | None = None, *, num_fg: int = NUM_FG) -> torch.Tensor:
    """Hand-off CAM dict {0-based key: np float32 (H, W)} -> (len(keys), h, w) on the edge grid.

    keys None: all ``num_fg`` classes (20 on VOC, 80 on COCO), absent ones zero (MuSCLe's
    all-classes layout); otherwise those channels. Bilinear resize without antialiasing; the
    factor is H / h, not exactly 4 (Q10).
    """
    H, W = size
    chans = list(range(num_fg)) if keys is None else [int(k) for k in keys]
    maps = torch.zeros(len(chans), H, W, dtype=torch.float32)
    for i, k in enumerate(chans):
        if k in cam_dict:
            m = np.asarray(cam_dict[k], dtype=np.float32)
            if m.shape != (H, W):
                raise ValueError(f"CAM of class {k}: shape {m.shape}, image is {(H, W)}")
            maps[i] = torch.from_numpy(m)
    if not chans:
        return maps.new_zeros(0, *grid).to(device)
    return F.interpolate(maps[None].to(device), size=tuple(grid), mode="bilinear",
                         align_corners=False, antialias=False)[0]


def _check_keys(cam_dict: Mapping[int, np.ndarray], num_fg: int) -> list[int]:
    keys = sorted(int(k) for k in cam_dict)
    bad = [k for k in keys if not 0 <= k < num_fg]
    if bad or len(set(keys)) != len(cam_dict):
        raise ValueError(f"CAM dict keys must be distinct 0-based class indices 0..{num_fg - 1}"
                         f", got {sorted(cam_dict)}")
    return keys


def refine_cams(model: torch.nn.Module, img_pair: torch.Tensor,
                cam_dict: Mapping[int, np.ndarray], beta: float, exp_times: int,
                bg_thres: float, radius: int = 5, *, engine: str = "auto",
                present_only: bool = False, num_classes: int = NUM_CLASSES
                ) -> tuple[np.ndarray, np.ndarray]:
    """One image through METHOD.md 13.6: edge map, CAMs on its grid, random walk, labels.

    model: has ``edge_displacement(x_pair) -> (edge (1, h, w), disp)``. img_pair: (2, 3, H, W),
    the normalised image and its horizontal flip, on the model's device. cam_dict: the stage-1
    hand-off {0-based key: np float32 (H, W)}, present classes only, keys 0..num_classes - 2.
    present_only: propagate only the dict's classes instead of all num_fg = num_classes - 1
    (same labels, less work). Returns (label np uint8 (H, W) with values 0..num_fg; soft np
    float16 (H, W, num_classes), channel 0 = bg_thres, channel k + 1 = class key k, zero for
    absent classes). num_classes: 21 on VOC, 81 on COCO.
    """
    if img_pair.dim() != 4 or img_pair.shape[:2] != (2, 3):
        raise ValueError(f"img_pair: expected (2, 3, H, W), got {tuple(img_pair.shape)}")
    num_fg = int(num_classes) - 1
    keys = _check_keys(cam_dict, num_fg)
    H, W = img_pair.shape[2:]
    with torch.no_grad():
        edge, _ = model.edge_displacement(img_pair)
        h, w = edge.shape[1:]
        if (h, w) != (math.ceil(H / 4), math.ceil(W / 4)):
            raise ValueError(f"edge grid {(h, w)} is not the stride-4 grid of {(H, W)}")
        chans = keys if present_only else None
        cams = cams_on_grid(cam_dict, (H, W), (h, w), edge.device, chans, num_fg=num_fg)
        rw = propagate_to_edge(cams, edge, beta, exp_times, radius, engine)
        label, soft = rw_to_labels(rw, (H, W), bg_thres, chans)
    if present_only:  # the file format has all num_classes channels (METHOD.md 13.6.5)
        full = np.zeros((H, W, num_fg + 1), np.float16)
        full[..., 0] = soft[..., 0]
        full[..., [k + 1 for k in keys]] = soft[..., 1:]
        soft = full
    return label, soft
