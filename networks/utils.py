"""Match-level helpers: patch sampling, coarse filtering, anchors, epipolar distances."""

from __future__ import annotations

import torch
from torch import Tensor


def _homogeneous(x: Tensor) -> Tensor:
    """(N, 2) or (N, 3) points → (N, 3) homogeneous points."""
    if x.shape[-1] == 3:
        return x
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def _epipolar_terms(x1: Tensor, x2: Tensor, F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x1 = _homogeneous(x1).to(F.dtype)
    x2 = _homogeneous(x2).to(F.dtype)
    Fx1 = x1 @ F.transpose(-1, -2)  # (N, 3): rows are F x1
    Ftx2 = x2 @ F  # (N, 3): rows are F^T x2
    x2tFx1 = (x2 * Fx1).sum(-1)
    return x2tFx1, Fx1, Ftx2


def sampson_dist(x1: Tensor, x2: Tensor, F: Tensor) -> Tensor:
    """Squared Sampson distance (px²) of correspondences x1 ↔ x2 under F.

    Args:
        x1, x2: (N, 2) pixel coordinates (x, y) or (N, 3) homogeneous points.
        F: (3, 3) fundamental matrix with x2ᵀ F x1 = 0.
    Returns:
        (N,) distances ``(x2ᵀFx1)² / ((Fx1)₀² + (Fx1)₁² + (Fᵀx2)₀² + (Fᵀx2)₁² + 1e-8)``.
    """
    x2tFx1, Fx1, Ftx2 = _epipolar_terms(x1, x2, F)
    denom = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2 + 1e-8
    return x2tFx1**2 / denom


def sym_epi_dist(x1: Tensor, x2: Tensor, F: Tensor, sqrt: bool = False) -> Tensor:
    """Squared symmetric epipolar distance (px²); `sqrt` is accepted and ignored as in the original.

    Args:
        x1, x2: (N, 2) or (N, 3) points; F: (3, 3).
    Returns:
        (N,) ``(x2ᵀFx1)² (1/((Fᵀx2)₀²+(Fᵀx2)₁²+1e-8) + 1/((Fx1)₀²+(Fx1)₁²+1e-8))``.
    """
    del sqrt
    x2tFx1, Fx1, Ftx2 = _epipolar_terms(x1, x2, F)
    d1 = Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2 + 1e-8
    d2 = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + 1e-8
    return x2tFx1**2 * (1.0 / d1 + 1.0 / d2)
