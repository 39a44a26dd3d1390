"""Match-level helpers: patch sampling, coarse filtering, anchors, epipolar distances."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from utils.geometry import epipolar_terms, sampson_from_terms, symmetric_from_terms


def _homogeneous(x: Tensor) -> Tensor:
    """(N, 2) or (N, 3) points → (N, 3) homogeneous points."""
    if x.shape[-1] == 3:
        return x
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def _terms(x1: Tensor, x2: Tensor, F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return epipolar_terms(_homogeneous(x1).to(F.dtype), _homogeneous(x2).to(F.dtype), F)


def sampson_dist(x1: Tensor, x2: Tensor, F: Tensor) -> Tensor:
    """Squared Sampson distance (px²) of correspondences x1 ↔ x2 under F (differentiable).

    The formula of :func:`utils.geometry.sampson_distance`, on tensors.

    Args:
        x1, x2: (N, 2) pixel coordinates (x, y) or (N, 3) homogeneous points.
        F: (3, 3) fundamental matrix with x2ᵀ F x1 = 0.
    Returns:
        (N,) distances ``(x2ᵀFx1)² / ((Fx1)₀² + (Fx1)₁² + (Fᵀx2)₀² + (Fᵀx2)₁² + 1e-8)``.
    """
    return sampson_from_terms(*_terms(x1, x2, F))


def sym_epi_dist(x1: Tensor, x2: Tensor, F: Tensor, sqrt: bool = False) -> Tensor:
    """Symmetric epipolar distance (differentiable), 1e-8 inside each denominator.

    The original accepted `sqrt` and ignored it (always squared); here `sqrt=True` returns
    the unsquared distance (px), as :func:`utils.geometry.symmetric_epipolar_distance` does.

    Args:
        x1, x2: (N, 2) or (N, 3) points; F: (3, 3).
    Returns:
        (N,) ``(x2ᵀFx1)² (1/((Fᵀx2)₀²+(Fᵀx2)₁²+1e-8) + 1/((Fx1)₀²+(Fx1)₁²+1e-8))`` (px²), or
        with `sqrt` ``|x2ᵀFx1| (1/√(...) + 1/√(...))`` (px).
    """
    return symmetric_from_terms(*_terms(x1, x2, F), sqrt=sqrt, eps=1e-8)


def select_local_patch_feats(
    feats1: Sequence[Tensor],
    feats2: Sequence[Tensor],
    ibatch: int,
    imatches: Tensor,
    feat_idx: Sequence[int] = (0, 1, 2, 3),
    feats_downsample: Sequence[int] = (1, 2, 2, 2, 2),
    psize: int = 16,
    ptype: str = "center",
) -> tuple[Tensor, Tensor]:
    """Sample a psize×psize window of features around each match, at every chosen level.

    Coordinates are truncated to integers; offsets run over ``-psize//2 .. psize//2 - 1``
    (``ptype='center'``) or ``0 .. psize-1`` (any other ptype), row-major (dy outer, dx
    inner). At level j the index is ``clamp((x + dx) // ds_j, 0, W // ds_j - 1)`` with ds_j
    the cumulative downsample of that level and W the image width (rows likewise).

    Args:
        feats1, feats2: per-level maps (B, C_j, H/ds_j, W/ds_j); level 0 is the image.
        ibatch: which batch entry to sample from.
        imatches: (N, 4) matches (x1, y1, x2, y2) in pixels.
    Returns:
        f1s, f2s: (D, N·psize²) with D = sum of C_j over `feat_idx`.
    """
    f1s, f2s = [], []
    for j, (iy1, ix1, iy2, ix2) in _patch_index_levels(
        feats1, feats2, imatches, feat_idx, feats_downsample, psize, ptype
    ):
        f1s.append(feats1[j][ibatch][:, iy1, ix1])
        f2s.append(feats2[j][ibatch][:, iy2, ix2])
    return torch.cat(f1s, dim=0), torch.cat(f2s, dim=0)


def _patch_index_levels(
    feats1: Sequence[Tensor],
    feats2: Sequence[Tensor],
    imatches: Tensor,
    feat_idx: Sequence[int],
    feats_downsample: Sequence[int],
    psize: int,
    ptype: str,
) -> list[tuple[int, tuple[Tensor, Tensor, Tensor, Tensor]]]:
    """Per level j of `feat_idx`: j and the (N·psize²,) row / column
    indices of the patch cells in image 1 and image 2 (`select_local_patch_feats`' rule)."""
    device = imatches.device
    offs = torch.arange(psize, device=device)
    if ptype == "center":
        offs = offs - psize // 2
    dy = offs.view(-1, 1).expand(psize, psize).reshape(1, -1)
    dx = offs.view(1, -1).expand(psize, psize).reshape(1, -1)
    h1, w1 = feats1[0].shape[-2:]
    h2, w2 = feats2[0].shape[-2:]
    x1, y1, x2, y2 = imatches.long().t().reshape(4, -1, 1)
    cum_ds = torch.tensor(list(feats_downsample)).cumprod(0).tolist()

    def ids(v: Tensor, d: Tensor, size: int, ds: int) -> Tensor:
        return torch.div(v + d, ds, rounding_mode="floor").clamp(0, size // ds - 1).view(-1)

    out = []
    for j in feat_idx:
        ds = int(cum_ds[j])
        idx = (ids(y1, dy, h1, ds), ids(x1, dx, w1, ds), ids(y2, dy, h2, ds), ids(x2, dx, w2, ds))
        out.append((j, idx))
    return out


def sample_patch_pairs(
    feats1: Sequence[Tensor],
    feats2: Sequence[Tensor],
    ibatch: int,
    imatches: Tensor,
    feat_idx: Sequence[int] = (0, 1, 2, 3),
    feats_downsample: Sequence[int] = (1, 2, 2, 2, 2),
    psize: int = 16,
    ptype: str = "center",
) -> Tensor:
    """The regressor's input, sampled straight into its layout: L2-normalised patch pairs.

    The same cells as `select_local_patch_feats` (its index rule), each image's D channels
    L2-normalised over the concatenated levels (``feature_l2norm`` of f1s / f2s over dim 0)
    and image 1's channels first, but gathered as rows of channels from channels-last maps
    into one (N·psize², 2D) array: the result is (N, 2D, psize, psize) in channels-last
    memory format, with no concatenation of (D, N·psize²) blocks and no transposes.

    Args:
        feats1, feats2: per-level maps (B, C_j, H/ds_j, W/ds_j), float32; channels-last
            maps are used as they are, others are converted once per call.
    Returns:
        (N, 2D, psize, psize) float32, channels-last.
    """
    n = imatches.shape[0]
    rows1, rows2 = [], []
    for j, (iy1, ix1, iy2, ix2) in _patch_index_levels(
        feats1, feats2, imatches, feat_idx, feats_downsample, psize, ptype
    ):
        m1 = feats1[j][ibatch].float().permute(1, 2, 0)  # (H, W, C): contiguous if NHWC
        m2 = feats2[j][ibatch].float().permute(1, 2, 0)
        rows1.append(m1.contiguous()[iy1, ix1])
        rows2.append(m2.contiguous()[iy2, ix2])
    rows = torch.cat(rows1 + rows2, dim=1)  # (N·p², 2D)
    d = rows.shape[1] // 2
    halves = rows.view(-1, 2, d)
    # feature_l2norm's f / sqrt(sum f² + 1e-6) as one multiplication by rsqrt: the same
    # values within float32 rounding, ≈ 0.6× the time of pow + div (+ their backward) on
    # these (n·p², 2, D) blocks (benchmarks/RESULTS.md, issue 17).
    halves = halves * torch.rsqrt((halves * halves).sum(2, keepdim=True) + 1e-6)
    return halves.view(n, psize, psize, 2 * d).permute(0, 3, 1, 2)


def filter_coarse(
    coarse_matches: Sequence[Tensor] | Tensor,
    match_scores: Sequence[Tensor] | Tensor,
    ncn_thres: float = 0.0,
    mutual: bool = True,
    ptmax: int | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-image filtering of coarse proposals (docs/architecture.md §3).

    Duplicated rows are collapsed to one (keeping the score of the first occurrence) and
    come out sorted lexicographically by (x1, y1, x2, y2); with `mutual` only rows found in
    both directions stay. Then rows with score > `ncn_thres` stay. A step that would leave
    nothing is skipped. With `ptmax`, the survivors are shuffled and repeated cyclically to
    exactly `ptmax` rows.

    Args:
        coarse_matches: (B, N, 4) or a list of (N, 4); match_scores: (B, N) or list of (N,).
    Returns:
        lists of (M, 4) matches and (M,) scores, one entry per image.
    """
    out_m, out_s = [], []
    for matches, scores in zip(coarse_matches, match_scores, strict=True):
        if matches.shape[0] > 0:
            uniq, inverse, counts = torch.unique(
                matches, dim=0, return_inverse=True, return_counts=True
            )
            pos = torch.arange(matches.shape[0], device=matches.device)
            first = torch.full((uniq.shape[0],), matches.shape[0], device=matches.device)
            first = first.scatter_reduce(0, inverse, pos, reduce="amin")
            keep = counts > 1 if mutual else torch.ones_like(counts, dtype=torch.bool)
            if keep.any():
                matches, scores = uniq[keep], scores[first[keep]]
            above = scores > ncn_thres
            if above.any():
                matches, scores = matches[above], scores[above]
        if ptmax:
            n = matches.shape[0]
            if n == 0:
                raise ValueError("filter_coarse: cannot sample ptmax rows from zero matches")
            perm = torch.randperm(n, device=matches.device)
            ids = perm.repeat((ptmax + n - 1) // n)[:ptmax]
            matches, scores = matches[ids], scores[ids]
        out_m.append(matches)
        out_s.append(scores)
    return out_m, out_s


def shift_to_anchors(matches: Sequence[Tensor], pshift: int = 8, panc: int = 8) -> list[Tensor]:
    """Expand each coarse match into 8 anchor rows (``panc == 8``; ``panc == 1`` is a no-op).

    Per match, in order: pt1 shifted by (−s,−s), (+s,−s), (−s,+s), (+s,+s) with pt2 fixed,
    then pt2 shifted the same four ways with pt1 fixed (s = `pshift`).

    Args:
        matches: list of (N, 4) per image.
    Returns:
        list of (8N, 4) (or the input matches when panc == 1).
    """
    if panc == 1:
        return list(matches)
    if panc != 8:
        raise ValueError(f"panc must be 1 or 8, got {panc}")
    out = []
    for m in matches:
        s = torch.tensor(
            [[-pshift, -pshift], [pshift, -pshift], [-pshift, pshift], [pshift, pshift]],
            dtype=m.dtype,
            device=m.device,
        )
        zeros = torch.zeros_like(s)
        shifts = torch.cat([torch.cat([s, zeros], 1), torch.cat([zeros, s], 1)], 0)  # (8, 4)
        out.append((m.unsqueeze(1) + shifts.unsqueeze(0)).reshape(-1, 4))
    return out
