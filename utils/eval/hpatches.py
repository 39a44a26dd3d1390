"""HPatches sequences: data layout, matching / homography metrics and the evaluation loop.

Pure numpy / OpenCV; the matcher is any callable ``(im1_path, im2_path) -> matches`` (see
``utils/eval/runner.py``), so the metrics and the runner work (and are tested) without the
network.

Layout (``hpatches-sequences-release``): one folder per sequence, ``i_*`` (illumination
changes) or ``v_*`` (viewpoint changes), each with images ``1.ppm`` .. ``6.ppm`` and the
ground-truth homographies ``H_1_2`` .. ``H_1_6`` as 3x3 whitespace-separated text, mapping
pixels of image 1 to pixels of image k: ``x_k ~ H_1_k @ (x_1, y_1, 1)``.

Metrics (the usual protocol of D2-Net / Patch2Pix for MMA, of SuperPoint / LoFTR for
homographies):
- reprojection error of a match (x1, y1, x2, y2): ``|| H_1_k(x1, y1) - (x2, y2) ||`` in pixels
  of image k;
- MMA@t of a pair: the fraction of its matches with error <= t (0 for a pair without
  matches); reported as the mean over pairs, for t = 1..10 px;
- homography: estimated from the matches with RANSAC (or OpenCV's USAC MAGSAC++); corner
  error = mean distance between the 4 corners (0, 0), (w-1, 0), (0, h-1), (w-1, h-1) of
  image 1 warped by the estimated and by the true homography (infinite when estimation fails
  or there are fewer than 4 matches); correctness@t = fraction of pairs with corner error
  <= t; AUC@t = area under the recall-vs-corner-error curve on [0, t], divided by t.

Coordinate frame: the matchers must return matches in ORIGINAL pixels of the two images.
Patch2Pix's ``estimate_matches(..., imsize=1024)`` does: it resizes each image (longer side
to at most ``imsize``, rounded down to a multiple of ``upsample * ksize``), matches, and
multiplies the matches by the per-image, per-axis scales ``(w_orig / w_new, h_orig / h_new)``.
The ground-truth homographies are therefore used unchanged (no rescaling of H). The only
residual is the pixel-centre convention of that rescaling (``x * s`` instead of
``(x + 0.5) * s - 0.5``), a bias of ``0.5 * (s - 1)`` px, below 0.1 px on HPatches at
``imsize=1024`` (s is about 1.0-1.2), and exactly 0 when the image is not resized.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.common.cli import UsageError
from utils.datasets.preprocess import image_size
from utils.eval.runner import Matcher, as_matches, run_pairs
from utils.geometry import error_auc

MMA_THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))
HOMOGRAPHY_THRESHOLDS: tuple[int, ...] = (1, 3, 5, 10)

# The 8 high-resolution sequences left out by the D2-Net HPatches protocol (108 sequences
# remain: 52 illumination, 56 viewpoint), which Patch2Pix's HPatches results follow.
D2NET_EXCLUDED: tuple[str, ...] = (
    "i_contruction",
    "i_crownnight",
    "i_dc",
    "i_pencils",
    "i_whitebuilding",
    "v_artisans",
    "v_astronautis",
    "v_talent",
)


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def warp_points(pts: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply a homography to points.

    Args:
        pts: (N, 2) points (x, y).
        H: (3, 3) homography.

    Returns:
        (N, 2) warped points (inf / nan where the point maps to infinity).
    """
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    ph = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ np.asarray(H, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return ph[:, :2] / ph[:, 2:3]


def reprojection_errors(matches: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Reprojection error of each match under the true homography from image 1 to image 2.

    Args:
        matches: (N, 4) rows (x1, y1, x2, y2).
        H: (3, 3) homography mapping image-1 pixels to image-2 pixels.

    Returns:
        (N,) distances ``|| H(x1, y1) - (x2, y2) ||`` in pixels (inf for points at infinity).
    """
    m = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    err = np.linalg.norm(warp_points(m[:, :2], H) - m[:, 2:], axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def mma_curve(errors: np.ndarray, thresholds: Sequence[float] = MMA_THRESHOLDS) -> np.ndarray:
    """Matching accuracy of one pair at each threshold.

    Args:
        errors: (N,) reprojection errors of the pair's matches.
        thresholds: (T,) pixel thresholds.

    Returns:
        (T,) fraction of errors <= threshold; zeros when there is no match.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return np.zeros(len(t))
    return (e[None, :] <= t[:, None]).mean(axis=1)


def image_corners(width: int, height: int) -> np.ndarray:
    """The 4 corner pixels (x, y) of a width x height image: (4, 2)."""
    return np.array(
        [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64
    )


def corner_error(
    H_est: np.ndarray | None,
    H_gt: np.ndarray,
    width: int,
    height: int,
) -> float:
    """Mean distance between image-1 corners warped by the estimated and the true H.

    Args:
        H_est: (3, 3) estimated homography, or None (estimation failed) -> inf.
        H_gt: (3, 3) ground-truth homography.
        width, height: size of image 1 in pixels.

    Returns:
        The mean corner distance in pixels of image 2 (inf on failure / degenerate H).
    """
    if H_est is None:
        return float("inf")
    c = image_corners(width, height)
    d = np.linalg.norm(warp_points(c, H_est) - warp_points(c, H_gt), axis=1)
    val = float(np.mean(d))
    return val if np.isfinite(val) else float("inf")


def estimate_homography(
    matches: np.ndarray,
    ransac_thres: float = 2.0,
    solver: str = "ransac",
    max_iters: int = 10000,
    confidence: float = 0.999,
    seed: int | None = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Robustly fit the homography from image 1 to image 2.

    Args:
        matches: (N, 4) rows (x1, y1, x2, y2).
        ransac_thres: inlier threshold (reprojection error, px).
        solver: 'ransac' (cv2.RANSAC) or 'usac' (cv2.USAC_MAGSAC).
        max_iters, confidence: robust estimator settings.
        seed: seeds OpenCV's RNG so that results are reproducible (None: leave it).

    Returns:
        H (3, 3) or None when it cannot be estimated (fewer than 4 matches / failure), and
        the (N,) boolean inlier mask (all False on failure).
    """
    m = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    inl = np.zeros(len(m), dtype=bool)
    if len(m) < 4:
        return None, inl
    methods = {"ransac": cv2.RANSAC, "usac": cv2.USAC_MAGSAC}
    if solver not in methods:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(methods)}")
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    try:
        H, mask = cv2.findHomography(
            m[:, :2],
            m[:, 2:],
            methods[solver],
            float(ransac_thres),
            maxIters=int(max_iters),
            confidence=float(confidence),
        )
    except cv2.error:
        return None, inl
    if H is None or H.shape != (3, 3) or not np.all(np.isfinite(H)):
        return None, inl
    return H, mask.reshape(-1).astype(bool)


# --------------------------------------------------------------------------------------
# data set
# --------------------------------------------------------------------------------------
class HomographyFileError(UsageError, ValueError):
    """A homography file that is not a 3x3 matrix (one line, exit 2 in every command)."""


def read_homography(path: str | os.PathLike) -> np.ndarray:
    """Read an HPatches ``H_1_k`` file: (3, 3) float64.

    Raises:
        HomographyFileError (a UsageError and ValueError) naming the file when it is not
        three lines of three finite numbers.
    """
    try:
        H = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise HomographyFileError(f"{path}: not a 3x3 homography text file ({e})") from None
    if H.shape != (3, 3):
        raise HomographyFileError(
            f"{path}: expected a 3x3 matrix of finite numbers, got shape {H.shape}"
        )
    return check_homography(H, str(path))


def check_homography(H: np.ndarray, name: str) -> np.ndarray:
    """Refuse a 3x3 matrix that is no homography: a NaN / inf entry, or singular (e.g. all
    zeros; ``|det|`` below 1e-12 of the entries' scale cubed).

    Returns:
        `H`.
    Raises:
        HomographyFileError naming `name`.
    """
    if not np.all(np.isfinite(H)):
        raise HomographyFileError(f"{name}: the 3x3 homography has NaN or infinite entries")
    scale = float(np.abs(H).max())
    if scale == 0.0 or abs(float(np.linalg.det(H / scale))) < 1e-12:
        raise HomographyFileError(f"{name}: the 3x3 homography is singular (all zeros?)")
    return H


def write_homography(path: str | os.PathLike, H: np.ndarray) -> None:
    """Write a (3, 3) homography as HPatches does: 3 lines of 3 space-separated numbers."""
    np.savetxt(path, np.asarray(H, dtype=np.float64).reshape(3, 3), fmt="%.12g", delimiter=" ")


def find_image(seq_dir: Path, idx: int) -> Path:
    """The image `idx` (1..6) of a sequence: ``idx.ppm`` (or another common extension)."""
    for ext in (".ppm", ".png", ".jpg", ".jpeg"):
        p = seq_dir / f"{idx}{ext}"
        if p.exists():
            return p
    raise FileNotFoundError(f"no image {idx} in {seq_dir}")


def list_sequences(
    root: str | os.PathLike,
    exclude: Iterable[str] = (),
    max_seqs: int | None = None,
) -> list[Path]:
    """Sorted ``i_*`` / ``v_*`` sequence folders under `root`.

    Args:
        root: the ``hpatches-sequences-release`` folder.
        exclude: sequence names to leave out (e.g. :data:`D2NET_EXCLUDED`).
        max_seqs: keep at most this many of each kind (i_ and v_), for quick runs.
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise FileNotFoundError(f"HPatches root {rootp} is not a folder")
    skip = set(exclude)
    seqs = sorted(
        p
        for p in rootp.iterdir()
        if p.is_dir() and p.name[:2] in ("i_", "v_") and p.name not in skip
    )
    if max_seqs is not None:
        seqs = [p for p in seqs if p.name.startswith("i_")][:max_seqs] + [
            p for p in seqs if p.name.startswith("v_")
        ][:max_seqs]
    return seqs


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------
@dataclass
class PairResult:
    """Metrics of one pair (image 1 vs image k of a sequence)."""

    seq: str
    k: int
    n_matches: int
    mma: list[float]
    corner_error: float
    n_inliers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """'illumination' or 'viewpoint'."""
        return "illumination" if self.seq.startswith("i_") else "viewpoint"


def evaluate_pair(
    matches: np.ndarray,
    H_gt: np.ndarray,
    width: int,
    height: int,
    thresholds: Sequence[float] = MMA_THRESHOLDS,
    ransac_thres: float = 2.0,
    solver: str = "ransac",
) -> tuple[list[float], float, int]:
    """Metrics of one pair.

    Args:
        matches: (N, 4) matches in original pixels (image 1 -> image k).
        H_gt: (3, 3) true homography from image 1 to image k.
        width, height: size of image 1.
        thresholds: MMA thresholds (px).
        ransac_thres, solver: homography estimation settings (see estimate_homography).

    Returns:
        (MMA per threshold, corner error, number of RANSAC inliers).
    """
    m = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    mma = mma_curve(reprojection_errors(m, H_gt), thresholds)
    H_est, inl = estimate_homography(m, ransac_thres, solver)
    return mma.tolist(), corner_error(H_est, H_gt, width, height), int(inl.sum())


def summarize(
    pairs: Sequence[PairResult],
    thresholds: Sequence[float] = MMA_THRESHOLDS,
    homography_thresholds: Sequence[float] = HOMOGRAPHY_THRESHOLDS,
) -> dict[str, dict[str, Any]]:
    """Aggregate pair results for 'illumination', 'viewpoint' and 'all'.

    Returns:
        {subset: {'n_pairs', 'n_seqs', 'mean_matches', 'mma' {thr: value},
        'homography_correct' {thr: value}, 'homography_auc' {thr: value},
        'mean_corner_error_finite', 'homography_failures'}} (thresholds as string keys).
    """
    out: dict[str, dict[str, Any]] = {}
    subsets = {
        "illumination": [p for p in pairs if p.kind == "illumination"],
        "viewpoint": [p for p in pairs if p.kind == "viewpoint"],
        "all": list(pairs),
    }
    for name, ps in subsets.items():
        n = len(ps)
        if n:
            mma = np.mean(np.asarray([p.mma for p in ps], dtype=np.float64), axis=0)
        else:
            mma = np.zeros(len(thresholds))
        ce = np.asarray([p.corner_error for p in ps], dtype=np.float64)
        finite = ce[np.isfinite(ce)]
        out[name] = {
            "n_pairs": n,
            "n_seqs": len({p.seq for p in ps}),
            "mean_matches": float(np.mean([p.n_matches for p in ps])) if n else 0.0,
            "mma": {f"{t:g}": float(v) for t, v in zip(thresholds, mma)},
            "homography_correct": {
                f"{t:g}": float(np.mean(ce <= t)) if n else 0.0 for t in homography_thresholds
            },
            "homography_auc": {
                f"{t:g}": v
                for t, v in zip(homography_thresholds, error_auc(ce, homography_thresholds))
            },
            "mean_corner_error_finite": float(finite.mean()) if finite.size else None,
            "homography_failures": int(np.sum(~np.isfinite(ce))),
        }
    return out


def evaluate_hpatches(
    root: str | os.PathLike,
    matcher: Matcher,
    thresholds: Sequence[float] = MMA_THRESHOLDS,
    homography_thresholds: Sequence[float] = HOMOGRAPHY_THRESHOLDS,
    ransac_thres: float = 2.0,
    solver: str = "ransac",
    exclude: Iterable[str] = (),
    max_seqs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Match every pair (1, k), k = 2..6, of every sequence and compute the metrics.

    Args:
        root: the HPatches sequences folder.
        matcher: (im1_path, im2_path) -> matches in original pixels (``utils.eval.runner``).
        thresholds: MMA thresholds (px).
        homography_thresholds: corner-error thresholds for correctness / AUC (px).
        ransac_thres, solver: homography estimation settings.
        exclude: sequence names to skip.
        max_seqs: at most this many sequences of each kind.
        progress: show a tqdm progress bar.

    Returns:
        {'summary': summarize(...), 'pairs': [per-pair dicts], 'n_seqs': int, 'time_s': float}.
    Raises:
        HomographyFileError (one line in the CLI) for a sequence without all of H_1_2 ..
        H_1_6 (no pair is dropped silently) and for a homography file that is not a
        finite, non-singular 3x3 matrix.
    """
    seqs = list_sequences(root, exclude, max_seqs)
    if not seqs:
        raise FileNotFoundError(f"no i_*/v_* sequences under {root}")
    for s in seqs:  # a pair left out silently would change the averages: refuse instead
        missing = [f"H_1_{k}" for k in range(2, 7) if not (s / f"H_1_{k}").is_file()]
        if missing:
            raise HomographyFileError(
                f"sequence {s} has no {', '.join(missing)} (an HPatches sequence has "
                "H_1_2 .. H_1_6; leave the sequence out with --exclude)"
            )
    jobs = [(s, k) for s in seqs for k in range(2, 7)]

    def evaluate(job: tuple[Path, int]) -> PairResult:
        seq, k = job
        im1, imk = find_image(seq, 1), find_image(seq, k)
        H_gt = read_homography(seq / f"H_1_{k}")
        w, h = image_size(im1)
        matches = as_matches(matcher(str(im1), str(imk)))
        mma, ce, n_inl = evaluate_pair(matches, H_gt, w, h, thresholds, ransac_thres, solver)
        return PairResult(seq.name, k, len(matches), mma, ce, n_inl)

    def postfix(done: list[PairResult]) -> dict[str, Any]:
        mma3 = np.mean([r.mma[min(2, len(r.mma) - 1)] for r in done])
        return {"seq": done[-1].seq, "matches": done[-1].n_matches, "mma3": f"{mma3:.3f}"}

    results, seconds = run_pairs(jobs, evaluate, "HPatches", progress, postfix)
    pairs = []
    for r in results:
        d = asdict(r)
        d.pop("extra")
        d["corner_error"] = r.corner_error if np.isfinite(r.corner_error) else None
        pairs.append(d)
    return {
        "summary": summarize(results, thresholds, homography_thresholds),
        "pairs": pairs,
        "n_seqs": len(seqs),
        "time_s": seconds,
    }


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of a summary: MMA@1..10, matches, homography correctness / AUC."""
    lines = []
    for name, s in summary.items():
        mma = " ".join(f"{v:.3f}" for v in s["mma"].values())
        lines.append(f"{name:>12}: pairs {s['n_pairs']:4d}  matches/pair {s['mean_matches']:.1f}")
        lines.append(f"{'':>12}  MMA@{','.join(s['mma'])}px: {mma}")
        hc = " ".join(f"@{t}px {v:.3f}" for t, v in s["homography_correct"].items())
        ha = " ".join(f"@{t}px {v:.3f}" for t, v in s["homography_auc"].items())
        lines.append(f"{'':>12}  H correct {hc}")
        lines.append(f"{'':>12}  H AUC     {ha}")
    return "\n".join(lines)


def oracle_matcher(step: int = 16, margin: int = 0) -> Matcher:
    """A matcher that returns ground-truth matches (for testing the evaluation itself).

    Reads ``H_1_k`` next to the images (paths ``<seq>/1.ppm`` and ``<seq>/k.ppm``), takes a
    grid of image-1 pixels with spacing `step` and maps them with the true homography,
    keeping those that land inside image k (minus `margin` px). Gives MMA 1 at every
    threshold and (near-)zero corner error.
    """

    def match(im1_path: str, im2_path: str) -> np.ndarray:
        p1, p2 = Path(im1_path), Path(im2_path)
        H = read_homography(p1.parent / f"H_1_{p2.stem}")
        w1, h1 = image_size(p1)
        w2, h2 = image_size(p2)
        xs, ys = np.meshgrid(np.arange(0, w1, step), np.arange(0, h1, step))
        pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        q = warp_points(pts, H)
        ok = (
            np.isfinite(q).all(1)
            & (q[:, 0] >= margin)
            & (q[:, 0] <= w2 - 1 - margin)
            & (q[:, 1] >= margin)
            & (q[:, 1] <= h2 - 1 - margin)
        )
        return np.concatenate([pts[ok], q[ok]], axis=1)

    return match
