"""Coarse match extraction, filtering, anchors and local patch sampling on hand-built cases."""

import pytest
import torch

from networks.ncn.extract_ncmatches import corr_to_matches
from networks.patch2pix import Patch2Pix
from networks.utils import filter_coarse, select_local_patch_feats, shift_to_anchors


def test_corr_to_matches_known_argmax():
    # A: 2x3 cells, B: 3x2 cells. Put a clear maximum at chosen (A, B) cells.
    corr = torch.zeros(1, 1, 2, 3, 3, 2)
    pairs = {
        (0, 0): (1, 2),
        (0, 1): (0, 0),
        (1, 0): (0, 1),
        (1, 1): (1, 1),
        (2, 0): (1, 0),
        (2, 1): (0, 2),
    }
    for (ib, jb), (ia, ja) in pairs.items():
        corr[0, 0, ia, ja, ib, jb] = 5.0
    xA, yA, xB, yB, score = corr_to_matches(corr)
    assert xA.shape == (1, 6)
    for n, (ib, jb) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]):  # row-major B
        assert (yB[0, n].item(), xB[0, n].item()) == (ib, jb)
        assert (yA[0, n].item(), xA[0, n].item()) == pairs[(ib, jb)]
    # softmax over the 6 A cells: e^5 / (e^5 + 5)
    expected = torch.exp(torch.tensor(5.0)) / (torch.exp(torch.tensor(5.0)) + 5)
    assert torch.allclose(score, expected.expand(1, 6))
    # B <- A: each A cell row-major; ties (all-zero rows: A cell (0, 1) has no maximum set
    # except ...) go to the first B cell.
    xA2, yA2, xB2, yB2, _ = corr_to_matches(corr, invert_matching_direction=True)
    assert yA2[0].tolist() == [0, 0, 0, 1, 1, 1] and xA2[0].tolist() == [0, 1, 2, 0, 1, 2]
    inv = {v: k for k, v in pairs.items()}
    for n in range(6):
        a = (yA2[0, n].item(), xA2[0, n].item())
        assert (yB2[0, n].item(), xB2[0, n].item()) == inv[a]


def test_corr_to_matches_relocalisation_offsets():
    corr = torch.zeros(2, 1, 1, 2, 2, 1)
    corr[:, 0, 0, 1, 1, 0] = 3.0  # A (0,1) <-> B (1,0)
    delta = [torch.zeros(2, 1, 1, 2, 2, 1, dtype=torch.long) for _ in range(4)]
    delta[0][1, 0, 0, 1, 1, 0] = 1  # di for batch 1 only
    delta[3][:, 0, 0, 1, 1, 0] = 1  # dl for both
    xA, yA, xB, yB, _ = corr_to_matches(corr, delta, ksize=2)
    # second B cell (1, 0) -> A (0, 1): fine indices i*2+di, j*2+dj, ...
    assert (xA[0, 1], yA[0, 1], xB[0, 1], yB[0, 1]) == (2, 0, 1, 2)
    assert (xA[1, 1], yA[1, 1], xB[1, 1], yB[1, 1]) == (2, 1, 1, 2)


def test_cal_coarse_matches_pixels():
    corr = torch.zeros(1, 1, 1, 2, 1, 2)
    corr[0, 0, 0, 0, 0, 1] = 4.0
    corr[0, 0, 0, 1, 0, 0] = 4.0
    m, s = Patch2Pix.cal_coarse_matches(corr, None, ksize=1, upsample=8, center=True)
    assert m.shape == (1, 4, 4) and s.shape == (1, 4)
    # A<-B: B(0,0) <- A(0,1); B(0,1) <- A(0,0); then B<-A likewise
    assert m[0].tolist() == [[12, 4, 4, 4], [4, 4, 12, 4], [4, 4, 12, 4], [12, 4, 4, 4]]
    m2, _ = Patch2Pix.cal_coarse_matches(corr, None, ksize=1, upsample=8, center=False)
    assert torch.equal(m2, m - 4)


def test_filter_coarse_mutual_order_and_scores():
    matches = torch.tensor(
        [[5, 1, 2, 2], [0, 0, 1, 1], [3, 3, 3, 3], [0, 0, 1, 1], [5, 1, 2, 2], [9, 9, 9, 9]]
    )
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.8])
    m, s = filter_coarse([matches], [scores], 0.0, mutual=True)
    assert m[0].tolist() == [[0, 0, 1, 1], [5, 1, 2, 2]]  # sorted, duplicates collapsed
    assert s[0].tolist() == pytest.approx([0.1, 0.9])  # score of the first occurrence
    m, s = filter_coarse([matches], [scores], 0.0, mutual=False)
    assert m[0].tolist() == [[0, 0, 1, 1], [3, 3, 3, 3], [5, 1, 2, 2], [9, 9, 9, 9]]
    assert s[0].tolist() == pytest.approx([0.1, 0.5, 0.9, 0.8])
    m, s = filter_coarse([matches], [scores], 0.5, mutual=True)
    assert m[0].tolist() == [[5, 1, 2, 2]]


def test_filter_coarse_skips_empty_steps():
    matches = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2]])
    scores = torch.tensor([0.2, 0.3])
    m, s = filter_coarse(matches.unsqueeze(0), scores.unsqueeze(0), 0.9, mutual=True)
    assert torch.equal(m[0], matches) and torch.equal(s[0], scores)  # nothing mutual, none above


def test_filter_coarse_ptmax_cycles():
    torch.manual_seed(0)
    matches = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    m, s = filter_coarse([matches], [torch.rand(5)], 0.0, mutual=True, ptmax=7)
    assert m[0].shape == (7, 4)
    rows = [tuple(r) for r in m[0].tolist()]
    assert rows[:2] == rows[2:4] == rows[4:6] and rows[6] == rows[0]  # cyclic repetition
    assert sorted(rows[:2]) == [(1, 1, 1, 1), (2, 2, 2, 2)]


def test_shift_to_anchors_rows():
    m = torch.tensor([[20, 30, 40, 50]])
    out = shift_to_anchors([m], pshift=8, panc=8)[0]
    assert out.tolist() == [
        [12, 22, 40, 50],
        [28, 22, 40, 50],
        [12, 38, 40, 50],
        [28, 38, 40, 50],
        [20, 30, 32, 42],
        [20, 30, 48, 42],
        [20, 30, 32, 58],
        [20, 30, 48, 58],
    ]
    assert shift_to_anchors([m], 8, 1)[0] is m
    two = shift_to_anchors([torch.cat([m, m + 1])], 8, 8)[0]
    assert two.shape == (16, 4) and torch.equal(two[8:], out + 1)


def coord_maps(h, w, levels):
    """Maps whose channels hold (level, y, x) of each cell, for levels of downsample ds."""
    feats = []
    for lvl, ds in enumerate(levels):
        hh, ww = h // ds, w // ds
        y, x = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
        feats.append(torch.stack([torch.full((hh, ww), lvl), y, x]).float().unsqueeze(0))
    return feats


def test_select_local_patch_feats_indices_and_clamping():
    h, w = 48, 64
    feats = coord_maps(h, w, [1, 2, 4, 8])
    matches = torch.tensor([[0.0, 0.0, 63.0, 47.0], [10.7, 20.2, 30.9, 5.5]])
    f1, f2 = select_local_patch_feats(feats, feats, 0, matches, [0, 1, 2, 3], [1, 2, 2, 2], 16)
    assert f1.shape == (12, 2 * 256)
    f1 = f1.view(4, 3, 2, 16, 16)  # level, (lvl, y, x), match, dy, dx
    f2 = f2.view(4, 3, 2, 16, 16)
    for lvl, ds in enumerate([1, 2, 4, 8]):
        for n, (x1, y1, x2, y2) in enumerate(matches.long().tolist()):  # truncated
            for dyi in (0, 3, 8, 15):
                for dxi in (0, 7, 15):
                    dy, dx = dyi - 8, dxi - 8
                    ey1 = min(max((y1 + dy) // ds, 0), h // ds - 1)
                    ex1 = min(max((x1 + dx) // ds, 0), w // ds - 1)
                    ey2 = min(max((y2 + dy) // ds, 0), h // ds - 1)
                    ex2 = min(max((x2 + dx) // ds, 0), w // ds - 1)
                    assert f1[lvl, :, n, dyi, dxi].tolist() == [lvl, ey1, ex1]
                    assert f2[lvl, :, n, dyi, dxi].tolist() == [lvl, ey2, ex2]


def test_select_local_patch_lt_differs_from_center():
    """Away from the borders 'lt' windows start at the match, 'center' ones psize/2 before it."""
    feats = coord_maps(48, 64, [1, 2, 4, 8])
    match = torch.tensor([[10.7, 20.2, 30.9, 5.5]])  # truncated to (10, 20) and (30, 5)
    out = {}
    for ptype in ("center", "lt"):
        f1, f2 = select_local_patch_feats(feats, feats, 0, match, [0, 1], [1, 2, 2, 2], 4, ptype)
        assert f1.shape == f2.shape == (6, 16)
        # (level 0 / 1, channel lvl / y / x, dy, dx)
        out[ptype] = (f1.view(2, 3, 4, 4), f2.view(2, 3, 4, 4))

    def grid(xs, ys):  # expected (y, x) channels: rows follow dy, columns dx
        return [[y] * 4 for y in ys], [list(xs) for _ in ys]

    expect = {  # (image, level): (xs, ys) for 'center', then for 'lt'
        (0, 0): (([8, 9, 10, 11], [18, 19, 20, 21]), ([10, 11, 12, 13], [20, 21, 22, 23])),
        (0, 1): (([4, 4, 5, 5], [9, 9, 10, 10]), ([5, 5, 6, 6], [10, 10, 11, 11])),
        (1, 0): (([28, 29, 30, 31], [3, 4, 5, 6]), ([30, 31, 32, 33], [5, 6, 7, 8])),
        (1, 1): (([14, 14, 15, 15], [1, 2, 2, 3]), ([15, 15, 16, 16], [2, 3, 3, 4])),
    }
    for (im, lvl), per_type in expect.items():
        for ptype, (xs, ys) in zip(("center", "lt"), per_type):
            f = out[ptype][im][lvl]
            assert f[0].eq(lvl).all()
            ey, ex = grid(xs, ys)
            assert f[1].tolist() == ey and f[2].tolist() == ex, (ptype, im, lvl)
    assert not torch.equal(out["center"][0], out["lt"][0])


def test_ref_corr_to_matches(refvec):
    v = refvec["corr_to_matches"]
    for inv, key in [(False, "a_from_b"), (True, "b_from_a")]:
        out = corr_to_matches(
            v["corr"], tuple(v["delta"]), int(v["ksize"]), invert_matching_direction=inv
        )
        assert torch.equal(torch.stack(out[:4]), v[key])
        assert torch.allclose(out[4], v[key + "_score"], rtol=1e-5, atol=1e-7)


def test_ref_select_local_patch_feats(refvec):
    v = refvec["select_local_patch_feats"]
    f1, f2 = select_local_patch_feats(
        v["feats1"], v["feats2"], 0, v["matches"], [0, 1, 2, 3], [1, 2, 2, 2], 16, "center"
    )
    assert torch.equal(f1, v["f1s"]) and torch.equal(f2, v["f2s"])
