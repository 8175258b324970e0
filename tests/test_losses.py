"""The multiscale losses: depth weights, pooled targets, ignored voxels, both model modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.diffusion import losses
from msseg.diffusion import schedule as sch
from msseg.labels import IGNORE, get_protocol

S = sch.make_schedule("cosine", 50)
# the targets with an exact value to regress to (the logits of a one-hot mask are infinite)
REGRESSION_TARGETS = [t for t in sch.Target if t is not sch.Target.LOGITS]


def pool(a, f):
    """Plain NumPy average pooling of [B, X, Y, Z, C] by f."""
    b, x, y, z, c = a.shape
    return a.reshape(b, x // f, f, y // f, f, z // f, f, c).mean(axis=(2, 4, 6))


def one_hot_batch(seed=0, size=8, k=3):
    labels = np.random.default_rng(seed).integers(0, k, (2, size, size, size))
    return np.eye(k, dtype=np.float32)[labels]


def test_depth_weights():
    np.testing.assert_allclose(losses.depth_weights(3), np.array([1, 0.5, 0.25]) / 1.75)
    np.testing.assert_allclose(losses.depth_weights(2, (1.0, 3.0, 9.0)), [0.25, 0.75])
    with pytest.raises(ValueError):
        losses.depth_weights(3, (1.0, -1.0, 1.0))


@pytest.mark.parametrize("target", REGRESSION_TARGETS)
def test_exact_predictions_give_zero_diffusion_loss(target):
    y = one_hot_batch()
    eps = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    t = jnp.array([3, 40])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    exact = [
        sch.target_from(S, 2 * pool(y, 2**i) - 1, pool(eps, 2**i), t, target) for i in range(3)
    ]
    cfg = losses.LossConfig(target=target, ce_weight=1.0, dice_weight=1.0)
    loss, metrics = losses.diffusion_loss(
        S, tuple(exact), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg
    )
    for i in range(3):
        assert float(metrics[f"mse/depth{i}"]) < 1e-8
    assert float(metrics["dice/depth0"]) < 1e-3  # x0 recovered exactly: one-hot
    # one-hot x0 after clipping and renormalising: p(true) = 1 / (1 + 2e-6) → tiny CE
    assert float(metrics["ce/depth0"]) < 1e-4


def test_coarse_depths_compare_with_the_pooled_target():
    y = one_hot_batch(2)
    eps = np.zeros_like(y)
    t = jnp.array([0, 0])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    preds = tuple(jnp.zeros((2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 3)) for i in range(2))
    cfg = losses.LossConfig(target=sch.Target.X0)
    _, metrics = losses.diffusion_loss(S, preds, jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    np.testing.assert_allclose(
        float(metrics["mse/depth1"]), np.mean((2 * pool(y, 2) - 1) ** 2), rtol=1e-5
    )


def test_ignored_voxels_do_not_count():
    y = one_hot_batch(3)
    y[:, :4] = 0.0  # IGNORE rows
    eps = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    t = jnp.array([10, 20])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    cfg = losses.LossConfig(ce_weight=1.0, dice_weight=1.0)
    rng = np.random.default_rng(5)
    preds = [
        rng.standard_normal((2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 3)).astype(np.float32)
        for i in range(2)
    ]
    base, _ = losses.diffusion_loss(S, tuple(preds), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    preds[0][:, :4] += 5.0
    preds[1][:, :2] += 5.0  # pooled cells that are entirely ignored
    moved, _ = losses.diffusion_loss(S, tuple(preds), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    np.testing.assert_allclose(float(moved), float(base), rtol=1e-6)
    seg, _ = losses.segmentation_loss(tuple(map(jnp.asarray, preds)), jnp.asarray(y), cfg)
    preds[0][:, :4] -= 9.0
    seg2, _ = losses.segmentation_loss(tuple(map(jnp.asarray, preds)), jnp.asarray(y), cfg)
    np.testing.assert_allclose(float(seg2), float(seg), rtol=1e-6)


def test_cross_entropy_and_dice_against_numpy():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(3), (2, 4, 4, 4)).astype(np.float32)
    y = one_hot_batch(7, 4)
    ce = -(y * np.log(p)).sum(-1).mean()
    np.testing.assert_allclose(
        float(losses.cross_entropy(jnp.asarray(p), jnp.asarray(y))), ce, rtol=1e-5
    )
    inter = (p * y).sum((1, 2, 3))
    dice = 1 - ((2 * inter + 1e-5) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1e-5)).mean()
    np.testing.assert_allclose(
        float(losses.soft_dice_loss(jnp.asarray(p), jnp.asarray(y))), dice, rtol=1e-5
    )


def test_dice_weights_partly_ignored_cells_by_their_labelled_fraction():
    p = jnp.full((1, 2, 1, 1, 2), 0.5)
    y = jnp.array([[1.0, 0.0], [0.25, 0.25]]).reshape(1, 2, 1, 1, 2)  # second cell half IGNORE
    w = np.array([1.0, 0.5])[:, None]
    pn, yn = np.asarray(p)[0, :, 0, 0], np.asarray(y)[0, :, 0, 0]
    inter, denom = (pn * yn).sum(0), (pn * w).sum(0) + yn.sum(0)
    expected = 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    np.testing.assert_allclose(float(losses.soft_dice_loss(p, y)), expected, rtol=1e-6)


def test_segmentation_loss_prefers_the_truth():
    y = jnp.asarray(one_hot_batch(8))
    good = tuple(losses.pyramid(10 * y, 3))
    bad = tuple(losses.pyramid(10 * y[..., ::-1], 3))
    cfg = losses.LossConfig()
    good_loss, good_terms = losses.segmentation_loss(good, y, cfg)
    bad_loss, _ = losses.segmentation_loss(bad, y, cfg)
    assert float(good_terms["ce/depth0"]) < 1e-3 and float(good_terms["dice/depth0"]) < 1e-3
    assert float(bad_loss) > 5 * float(good_loss)


# ---------------------------------------------------------------------------------------
# Partial labels: a voxel labelled with a tree node or named set ("GM, either side").

MNI = get_protocol("mni-tissue")
SPACE = losses.LabelSpace.from_protocol(MNI)
GM, L_GM, R_GM = MNI.id_of("GM"), MNI.id_of("Left-GM"), MNI.id_of("Right-GM")


def id_batch(seed=0, size=8):
    """[2, size^3] leaf ids of mni-tissue."""
    return np.random.default_rng(seed).integers(0, 7, (2, size, size, size)).astype(np.uint8)


def test_marginal_losses_equal_the_leaf_losses_when_every_voxel_has_a_leaf():
    ids = id_batch(10)
    ids[:, :2] = IGNORE
    f = SPACE.one_hot(jnp.asarray(ids))  # [.., J] over all 13 ids
    y = jnp.asarray(np.eye(8, dtype=np.float32)[np.minimum(ids, 7)][..., :7])  # leaves, IGNORE 0
    assert float(jnp.abs(f[..., 7:]).sum()) == 0 and f.shape[-1] == MNI.num_ids
    rng = np.random.default_rng(11)
    p = jnp.asarray(rng.dirichlet(np.ones(7), ids.shape).astype(np.float32))
    np.testing.assert_allclose(
        float(losses.cross_entropy(p, f, SPACE)), float(losses.cross_entropy(p, y)), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(losses.soft_dice_loss(p, f, SPACE)), float(losses.soft_dice_loss(p, y)), rtol=1e-6
    )
    eps = jnp.asarray(rng.standard_normal((*ids.shape, 7)).astype(np.float32))
    t = jnp.array([5, 30])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    preds = tuple(
        jnp.asarray(rng.standard_normal((2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 7)), jnp.float32)
        for i in range(3)
    )
    cfg = losses.LossConfig(ce_weight=1.0, dice_weight=1.0)
    full, full_terms = losses.diffusion_loss(S, preds, y, x_t, eps, t, cfg)
    marg, marg_terms = losses.diffusion_loss(S, preds, f, x_t, eps, t, cfg, SPACE)
    for k in full_terms:
        np.testing.assert_allclose(float(marg_terms[k]), float(full_terms[k]), rtol=1e-5)
    seg_full, _ = losses.segmentation_loss(preds, y, cfg)
    seg_marg, _ = losses.segmentation_loss(preds, f, cfg, SPACE)
    np.testing.assert_allclose(float(seg_marg), float(seg_full), rtol=1e-5)


def test_marginal_cross_entropy_and_dice_against_numpy():
    ids = id_batch(12, 4)
    ids[0, 0] = GM
    ids[1, :, 0] = MNI.id_of("Left-Hemisphere")
    ids[1, 0, 1] = IGNORE
    rng = np.random.default_rng(13)
    p = rng.dirichlet(np.ones(7), ids.shape).astype(np.float32)
    member = MNI.membership()
    inside, outside = MNI.relations()
    lab = ids.astype(int)
    q = np.where(lab < 255, (p * member[np.minimum(lab, 12)]).sum(-1), 1.0)
    ce = -np.log(q)[lab < 255].mean()
    got = float(losses.cross_entropy(jnp.asarray(p), SPACE.one_hot(jnp.asarray(ids)), SPACE))
    np.testing.assert_allclose(got, ce, rtol=1e-5)
    scores = []
    for b in range(2):
        present = set(np.unique(lab[b]).tolist()) - {255}
        for u in range(MNI.num_ids):
            pu = (p[b] * member[u]).sum(-1)
            decided = inside[u][lab[b]] | outside[u][lab[b]]
            tu = inside[u][lab[b]]
            if u >= 7 and u not in present:
                continue
            if u < 7 and not tu.any() and not decided[lab[b] < 255].all():
                continue  # a leaf whose positives hide in partial labels: no Dice
            scores.append((2 * (pu * tu).sum() + 1e-5) / ((pu * decided).sum() + tu.sum() + 1e-5))
    got = float(losses.soft_dice_loss(jnp.asarray(p), SPACE.one_hot(jnp.asarray(ids)), SPACE))
    np.testing.assert_allclose(got, 1 - np.mean(scores), rtol=1e-5)


def test_a_tissue_only_sample_scores_the_labels_it_defines():
    """Dice of a sample labelled CSF / GM / WM (no sides): the mean over background and the
    three tissues; the six side leaves, whose positives hide in the tissue voxels, are left
    out. A leaf that some voxel carries is scored again."""
    rng = np.random.default_rng(5)
    tissues = [MNI.id_of(n) for n in ("CSF", "GM", "WM")]
    ids = rng.choice([0, *tissues], size=(1, 8, 8, 8)).astype(np.uint8)
    p = rng.dirichlet(np.ones(7), ids.shape).astype(np.float32)
    member, inside = MNI.membership(), MNI.relations()[0]

    def dice(u):  # every voxel decides background and the tissues
        pu, tu = (p[0] * member[u]).sum(-1), inside[u][ids[0]]
        return (2 * (pu * tu).sum() + 1e-5) / (pu.sum() + tu.sum() + 1e-5)

    expect = 1 - np.mean([dice(u) for u in (0, *tissues)])
    got = float(losses.soft_dice_loss(jnp.asarray(p), SPACE.one_hot(jnp.asarray(ids)), SPACE))
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    ids[0, 0, 0, 0] = MNI.id_of("Left-GM")  # now Left-GM has a positive: scored
    p2 = SPACE.one_hot(jnp.asarray(ids))
    with_leaf = float(losses.soft_dice_loss(jnp.asarray(p), p2, SPACE))
    assert abs(with_leaf - got) > 1e-3


@pytest.mark.parametrize("target", [sch.Target.X0, sch.Target.EPS])
def test_a_node_label_does_not_push_its_leaves_against_each_other(target):
    """At a voxel labelled "GM" the gradient toward Left-GM and Right-GM is the same."""
    ids = id_batch(14)
    ids[0, :4] = GM  # half of sample 0: GM without sides
    part = np.zeros(ids.shape, bool)
    part[0, :4] = True
    f = SPACE.one_hot(jnp.asarray(ids))
    rng = np.random.default_rng(15)
    y = SPACE.leaf_spread(f)
    eps = jnp.asarray(rng.standard_normal((*ids.shape, 7)).astype(np.float32))
    t = jnp.array([20, 40])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    # predictions whose x0 estimate stays inside (-1, 1), away from the clip
    x0 = rng.uniform(-0.8, 0.8, (*ids.shape, 7)).astype(np.float32)
    pred0 = sch.target_from(
        S, jnp.asarray(x0), sch.to_x0_eps(S, x_t, t, x0, sch.Target.X0)[1], t, target
    )
    preds = (pred0, jnp.asarray(rng.standard_normal((2, 4, 4, 4, 7)), jnp.float32))
    cfg = losses.LossConfig(target=target, ce_weight=1.0, dice_weight=1.0)

    def loss(p0):
        return losses.diffusion_loss(S, (p0, preds[1]), f, x_t, eps, t, cfg, SPACE)[0]

    g = np.asarray(jax.grad(loss)(pred0))
    assert np.abs(g[part][:, [L_GM, R_GM]]).max() > 1e-7  # the node is taught
    np.testing.assert_allclose(g[part][:, L_GM], g[part][:, R_GM], rtol=1e-4, atol=1e-9)
    # leaf-labelled voxels do separate the two sides
    assert np.abs(g[~part][:, L_GM] - g[~part][:, R_GM]).max() > 1e-6
    # the same for the probabilities, for CE and Dice separately
    p = jnp.asarray(rng.dirichlet(np.ones(7), ids.shape).astype(np.float32))
    for fn in (losses.cross_entropy, losses.soft_dice_loss):
        gp = np.asarray(jax.grad(lambda q, fn=fn: fn(q, f, SPACE))(p))
        np.testing.assert_allclose(gp[part][:, L_GM], gp[part][:, R_GM], rtol=1e-5, atol=1e-10)


def test_mixed_label_sets_batch_together():
    """One sample with leaves, one with tissue only: one loss, and the tissue-only sample
    cannot tell left from right (swapping the sides of its prediction changes nothing)."""
    ids = id_batch(16)
    coarse = np.array([0, 8, 9, 10, 8, 9, 10], np.uint8)  # leaf → CSF / GM / WM node
    ids[1] = coarse[ids[1]]
    f = SPACE.one_hot(jnp.asarray(ids))
    rng = np.random.default_rng(17)
    logits = [rng.standard_normal((2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 7)) for i in range(2)]
    cfg = losses.LossConfig()
    base, terms = losses.segmentation_loss(tuple(map(jnp.asarray, logits)), f, cfg, SPACE)
    assert np.isfinite(float(base)) and float(terms["ce/depth1"]) > 0
    swap = [0, 4, 5, 6, 1, 2, 3]
    for lg in logits:
        lg[1] = lg[1][..., swap]
    swapped, _ = losses.segmentation_loss(tuple(map(jnp.asarray, logits)), f, cfg, SPACE)
    np.testing.assert_allclose(float(swapped), float(base), rtol=1e-6)
    for lg in logits:
        lg[0] = lg[0][..., swap]  # the fully labelled sample does notice
    both, _ = losses.segmentation_loss(tuple(map(jnp.asarray, logits)), f, cfg, SPACE)
    assert abs(float(both) - float(base)) > 1e-3


@pytest.mark.parametrize("target", REGRESSION_TARGETS)
def test_a_node_label_regresses_the_marginal_mask(target):
    """A "GM" voxel: any left/right split of a GM prediction costs nothing in the diffusion
    regression; mass outside GM does. With leaf labels it is the plain squared error."""
    ids = np.zeros((1, 4, 4, 4), np.uint8)
    ids[0, :2] = GM
    ids[0, 2:] = L_GM
    f = SPACE.one_hot(jnp.asarray(ids))
    t = jnp.array([30])
    eps = jnp.zeros((*ids.shape, 7))
    x_t = sch.q_sample(S, 2 * SPACE.leaf_spread(f) - 1, t, eps)
    cfg = losses.LossConfig(target=target)

    def mse(x0):
        x0 = jnp.asarray(x0, jnp.float32)
        pred = sch.target_from(S, x0, sch.to_x0_eps(S, x_t, t, x0, sch.Target.X0)[1], t, target)
        return float(losses.diffusion_loss(S, (pred,), f, x_t, eps, t, cfg, SPACE)[1]["mse/depth0"])

    x0 = -np.ones((*ids.shape, 7), np.float32)
    x0[0, 2:, ..., L_GM] = 1.0  # the leaf voxels exact
    split = np.random.default_rng(18).uniform(0, 1, (2, 4, 4))
    x0[0, :2, ..., L_GM], x0[0, :2, ..., R_GM] = 2 * split - 1, 1 - 2 * split  # sums to 1
    assert mse(x0) < 1e-8
    off = x0.copy()
    off[0, :2, ..., 0] = 0.0  # some background mass at the GM voxels
    assert mse(off) > 1e-3
    # a leaf-labelled voxel still pays for a wrong side
    wrong = x0.copy()
    wrong[0, 2:, ..., L_GM], wrong[0, 2:, ..., R_GM] = -1.0, 1.0
    assert mse(wrong) > 1e-2


def test_a_space_of_the_used_ids_gives_the_same_losses():
    """Only leaves (and GM) in the data: the space of those ids trains exactly like the space
    of every id, and a fully labelled set trains in the plain leaf space."""
    ids = id_batch(19)
    ids[0, :3] = GM
    ids[1, 0] = IGNORE
    small = losses.LabelSpace.from_protocol(MNI, [GM])
    assert small.num_ids == 8 and not small.flat
    assert losses.LabelSpace.from_protocol(MNI, []).flat
    rng = np.random.default_rng(20)
    p = jnp.asarray(rng.dirichlet(np.ones(7), ids.shape).astype(np.float32))
    fa, fb = SPACE.one_hot(jnp.asarray(ids)), small.one_hot(jnp.asarray(ids))
    for fn in (losses.cross_entropy, losses.soft_dice_loss):
        np.testing.assert_allclose(float(fn(p, fa, SPACE)), float(fn(p, fb, small)), rtol=1e-6)
    x0 = jnp.asarray(rng.uniform(-1, 1, (*ids.shape, 7)), jnp.float32)
    ea, wa = losses.marginal_sq_error(x0, fa, SPACE)
    eb, wb = losses.marginal_sq_error(x0, fb, small)
    np.testing.assert_allclose(np.asarray(ea), np.asarray(eb), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(wa), np.asarray(wb))
    # an id outside the space is unlabelled there
    assert float(small.one_hot(jnp.asarray(np.uint8(MNI.id_of("WM")))).sum()) == 0


def test_drawn_noising_input_keeps_leaves_and_gives_each_partial_cell_one_leaf_of_its_node():
    ids = id_batch(15)
    ids[0, :3] = GM
    ids[1, :, :2] = MNI.id_of("Left-Hemisphere")
    f = SPACE.one_hot(jnp.asarray(ids))
    drawn = np.asarray(SPACE.leaf_draw(f, jax.random.key(0)))
    spread = np.asarray(SPACE.leaf_spread(f))
    leaf = ids < 7
    np.testing.assert_array_equal(drawn[leaf], spread[leaf])  # leaf cells: their one-hot
    assert set(np.unique(drawn)) <= {0.0, 1.0} and np.allclose(drawn.sum(-1), 1.0)
    member = MNI.membership()
    k = drawn.argmax(-1)
    assert (member[ids[~leaf], k[~leaf]] == 1).all()  # the drawn leaf lies in the node
    gm = k[ids == GM]  # both sides drawn, about evenly
    assert 0.3 < np.mean(gm == L_GM) < 0.7 and np.all((gm == L_GM) | (gm == R_GM))
    # pooled cells keep their mean: the average of many draws is the spread
    pooled = losses.pyramid(f, 2)[1]
    draws = np.mean(
        [np.asarray(SPACE.leaf_draw(pooled, jax.random.key(i))) for i in range(200)], axis=0
    )
    np.testing.assert_allclose(draws, np.asarray(SPACE.leaf_spread(pooled)), atol=0.12)
    only_leaves = SPACE.one_hot(jnp.asarray(id_batch(16)))  # nothing to draw: the same input
    np.testing.assert_array_equal(
        SPACE.leaf_draw(only_leaves, jax.random.key(1)), SPACE.leaf_spread(only_leaves)
    )
    with pytest.raises(ValueError, match="partial_noise"):
        losses.LossConfig(partial_noise="uniform")
