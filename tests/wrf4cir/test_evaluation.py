from __future__ import annotations

import pytest
import torch

from wrf4cir.data import DataError, Query
from wrf4cir.evaluation import (
    contrastive_eval_loss,
    evaluate,
    generalization_gap,
    target_ranks,
    train_probe,
)


class Toy:
    """A minimal in-memory dataset satisfying the CIRDataset contract."""

    def __init__(self, queries, gallery, split="val", protocol="synthetic"):
        self.name, self.split, self.protocol = "toy", split, protocol
        self.queries, self.gallery = queries, gallery

    def image(self, name):  # pragma: no cover - not used here
        raise NotImplementedError


def test_ranks_hand_computed():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    assert target_ranks(scores, torch.tensor([2, 0])).tolist() == [1, 1]


def test_ties_do_not_make_a_collapsed_model_perfect():
    scores = torch.zeros(4, 4)  # every candidate equally similar
    ranks = target_ranks(scores, torch.tensor([0, 1, 2, 3]))
    # ties are broken by gallery order, not in the target's favour
    assert ranks.tolist() == [0, 1, 2, 3]


def test_excluded_index_is_removed_from_the_ranking():
    scores = torch.tensor([[0.9, 0.8, 0.1]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [1]
    assert target_ranks(scores, torch.tensor([1]), exclude=torch.tensor([0])).tolist() == [0]


def test_evaluate_synthetic_protocol_by_hand():
    gallery = [f"g{i}" for i in range(60)]
    queries = [Query(reference="g0", target=f"g{i}", text="t") for i in (1, 2, 3, 4)]
    scores = torch.zeros(4, 60)
    # target ranks: 0, 3, 7, 59
    scores[0, 1] = 1.0
    scores[1, 2] = 1.0
    scores[1, 10:13] = 2.0
    scores[2, 3] = 1.0
    scores[2, 20:27] = 2.0
    scores[3, 4] = -1.0  # below all 59 zero-scored images
    m = evaluate(Toy(queries, gallery), scores)
    assert m["R@1"] == 25.0
    assert m["R@5"] == 50.0
    assert m["R@10"] == 75.0
    assert m["R@50"] == 75.0
    assert m["headline"] == pytest.approx((25 + 50 + 75) / 3)


def test_oracle_scores_give_100():
    gallery = [f"g{i}" for i in range(20)]
    queries = [Query(reference=f"g{i}", target=f"g{(i + 1) % 20}", text="t") for i in range(20)]
    scores = torch.zeros(20, 20)
    for i in range(20):
        scores[i, (i + 1) % 20] = 1
    m = evaluate(Toy(queries, gallery), scores)
    assert all(v == 100.0 for v in m.values())


def test_evaluate_rejects_wrong_shapes_and_missing_targets():
    ds = Toy([Query("a", "b", "t")], ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        evaluate(ds, torch.zeros(2, 2))
    with pytest.raises(DataError, match="not in the gallery"):
        evaluate(Toy([Query("a", "zzz", "t")], ["a", "b"]), torch.zeros(1, 2))
    with pytest.raises(DataError, match="no targets"):
        evaluate(Toy([Query("a", None, "t")], ["a", "b"]), torch.zeros(1, 2))


def test_gap_is_probe_minus_val_and_val_minus_probe_for_loss():
    probe = {"R@1": 60.0, "R@5": 90.0, "headline": 75.0, "loss": 0.5, "queries": 10.0}
    val = {"R@1": 20.0, "R@5": 50.0, "headline": 35.0, "loss": 2.0, "queries": 10.0}
    assert generalization_gap(probe, val) == {"R@1": 40.0, "R@5": 40.0, "headline": 40.0,
                                              "loss": 1.5}


def make_train(n_queries: int, n_images: int) -> Toy:
    images = [f"t{i:03d}" for i in range(n_images)]
    queries = [Query(images[(2 * i) % n_images], images[(2 * i + 1) % n_images], f"q{i}")
               for i in range(n_queries)]
    return Toy(queries, images, split="train")


def test_train_probe_matches_the_val_sizes_and_holds_its_targets():
    train = make_train(300, 400)
    val = Toy([Query("v0", "v1", "x")] * 50, [f"v{i}" for i in range(120)])
    probe = train_probe(train, val, seed=0)
    assert len(probe.queries) == 50
    assert len(probe.gallery) == 120
    names = set(probe.gallery)
    assert all(q.reference in names and q.target in names for q in probe.queries)
    assert probe.protocol == "synthetic" and probe.split == "train-probe"
    again = train_probe(train, val, seed=0)
    assert again.queries == probe.queries and again.gallery == probe.gallery
    other = train_probe(train, val, seed=1)
    assert other.queries != probe.queries


def test_train_probe_never_has_a_larger_gallery_than_val():
    # 200 queries over 200 distinct images each, val gallery of 60: fewer queries, same gallery
    train = make_train(200, 400)
    val = Toy([Query("v0", "v1", "x")] * 100, [f"v{i}" for i in range(60)])
    probe = train_probe(train, val, seed=0)
    assert len(probe.gallery) == 60
    assert 0 < len(probe.queries) <= 30


def test_contrastive_eval_loss_matches_the_training_loss():
    from wrf4cir.losses import cir_contrastive_loss

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=-1)
    expected = (float(cir_contrastive_loss(q[:4], t[:4], torch.tensor(10.0))["loss"])
                + float(cir_contrastive_loss(q[4:], t[4:], torch.tensor(10.0))["loss"])) / 2
    assert contrastive_eval_loss(q, t, 10.0, batch_size=4) == pytest.approx(expected)
