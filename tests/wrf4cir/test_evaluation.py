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


# ------------------------------------------------------------------ FashionIQ and CIRR rules


def fiq(queries, gallery, split="val"):
    return Toy(queries, gallery, split=split, protocol="fashioniq")


def cirr(queries, gallery):
    return Toy(queries, gallery, protocol="cirr")


def test_fashioniq_keeps_the_reference_in_the_ranking():
    gallery = [f"g{i}" for i in range(60)]
    # the reference g0 scores highest; the target g1 is second
    scores = torch.zeros(1, 60)
    scores[0, 0], scores[0, 1] = 2.0, 1.0
    scores[0, 2:12] = 1.5  # ten more ahead of the target: rank 11 with the reference
    m = evaluate(fiq([Query("g0", "g1", "t")], gallery), scores)
    assert m["R@10"] == 0.0 and m["R@50"] == 100.0 and m["headline"] == 50.0
    assert set(m) == {"R@10", "R@50", "headline"}


def test_cirr_removes_the_reference_and_scores_the_subset():
    gallery = [f"g{i}" for i in range(8)]
    members = ("g0", "g1", "g2", "g3", "g4", "g5")
    q = Query("g0", "g1", "t", pair_id=7, members=members)
    # full ranking: g0 (reference) > g6 > g2 > g1 > g3 > ...
    scores = torch.tensor([[9.0, 5.0, 6.0, 4.0, 3.0, 2.0, 7.0, 1.0]])
    m = evaluate(cirr([q], gallery), scores)
    # reference removed: g6, g2, g1 -> target at rank 2 (0-based): R@1 0, R@5 100
    assert (m["R@1"], m["R@5"]) == (0.0, 100.0)
    # subset (members minus reference): g2, g1, g3, g4, g5 -> rank 1: Rsubset@1 0, @2 100
    assert (m["Rsubset@1"], m["Rsubset@2"], m["Rsubset@3"]) == (0.0, 100.0, 100.0)
    assert m["headline"] == (100.0 + 0.0) / 2


def test_oracle_gives_100_on_every_cirr_metric():
    gallery = [f"g{i}" for i in range(12)]
    queries = [Query(f"g{i}", f"g{i + 6}", "t", pair_id=i,
                     members=tuple(f"g{j}" for j in (i, i + 6, (i + 1) % 6, (i + 2) % 6,
                                                      (i + 3) % 6, (i + 4) % 6)))
               for i in range(6)]
    scores = torch.zeros(6, 12)
    for i in range(6):
        scores[i, i + 6] = 1.0
    assert all(v == 100.0 for v in evaluate(cirr(queries, gallery), scores).values())


def test_parts_are_scored_against_their_own_gallery_and_averaged():
    from wrf4cir.data import PartsView

    dress = fiq([Query("d0", "d1", "a"), Query("d2", "d3", "b")], [f"d{i}" for i in range(4)])
    shirt = fiq([Query("s0", "s1", "c")], [f"s{i}" for i in range(60)])
    joint = PartsView({"dress": dress, "shirt": shirt}, split="val")
    assert [q.text for q in joint.queries] == ["a", "b", "c"]
    scores = torch.zeros(3, len(joint.gallery))
    col = {g: j for j, g in enumerate(joint.gallery)}
    scores[0, col["d1"]] = 1  # dress queries: top 1
    scores[1, col["d3"]] = 1
    scores[2, col["s1"]] = -1  # shirt query: last of 60 -> misses R@50 and R@10
    scores[2, col["d0"]] = 5  # a dress image must not count against the shirt query
    m = evaluate(joint, scores)
    assert m["dress/R@10"] == 100.0 and m["shirt/R@10"] == 0.0 and m["shirt/R@50"] == 0.0
    assert m["R@10"] == 50.0 and m["R@50"] == 50.0 and m["headline"] == 50.0


def test_features_in_chunks_equal_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    gallery = [f"g{i}" for i in range(40)]
    queries = []
    for i in range(25):
        ref, target = f"g{i}", f"g{(i * 7 + 1) % 40}"
        others = [f"g{(i + j) % 40}" for j in range(2, 10)]
        members = tuple(dict.fromkeys((ref, target, *others)))[:6]
        queries.append(Query(ref, target, "t", pair_id=i, members=members))
    qf = torch.nn.functional.normalize(torch.randn(25, 8, generator=g), dim=-1)
    gf = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    from wrf4cir.evaluation import evaluate_features

    ds = cirr(queries, gallery)
    assert evaluate_features(ds, qf, gf, chunk=4) == evaluate(ds, qf @ gf.T)


def test_cirr_submission_files(tmp_path):
    import json

    from wrf4cir.evaluation import write_cirr_submission

    gallery = [f"g{i}" for i in range(60)]
    members = ("g0", "g1", "g2", "g3", "g4", "g5")
    q = Query("g0", None, "t", pair_id=42, members=members)
    scores = torch.arange(60, 0, -1, dtype=torch.float).unsqueeze(0)  # g0 best ... g59 worst
    recall, subset = write_cirr_submission(Toy([q], gallery, split="test1", protocol="cirr"),
                                           scores, tmp_path)
    r = json.loads(recall.read_text())
    s = json.loads(subset.read_text())
    assert r["version"] == "rc2" and r["metric"] == "recall"
    assert r["42"] == [f"g{i}" for i in range(1, 51)]  # the reference g0 removed, top 50
    assert s["version"] == "rc2" and s["metric"] == "recall_subset"
    assert s["42"] == ["g1", "g2", "g3"]


def test_gap_of_part_metrics():
    gap = generalization_gap({"dress/R@10": 50.0, "dress/loss": 1.0, "queries": 3.0},
                             {"dress/R@10": 20.0, "dress/loss": 2.0, "queries": 3.0})
    assert gap == {"dress/R@10": 30.0, "dress/loss": 1.0}


def test_train_probe_per_part():
    from wrf4cir.data import PartsView

    def part(prefix, n):
        images = [f"{prefix}{i}" for i in range(2 * n)]
        return Toy([Query(images[2 * i], images[2 * i + 1], "t") for i in range(n)], images,
                   split="train", protocol="fashioniq")

    train = PartsView({"dress": part("td", 30), "shirt": part("ts", 30)}, split="train")
    val = PartsView({"dress": fiq([Query("vd0", "vd1", "t")] * 5, [f"vd{i}" for i in range(20)]),
                     "shirt": fiq([Query("vs0", "vs1", "t")] * 8, [f"vs{i}" for i in range(10)])},
                    split="val")
    probe = train_probe(train, val, seed=0)
    assert set(probe.parts) == {"dress", "shirt"}
    assert len(probe.parts["dress"].queries) == 5 and len(probe.parts["dress"].gallery) == 20
    assert len(probe.parts["shirt"].queries) == 5 and len(probe.parts["shirt"].gallery) == 10
    assert all(g.startswith("ts") for g in probe.parts["shirt"].gallery)


def test_same_ranking_reference_first_cirr_removes_it_fashioniq_does_not():
    gallery = [f"g{i}" for i in range(60)]
    members = ("g0", "g1", "g2", "g3", "g4", "g5")
    q = Query("g0", "g1", "t", pair_id=1, members=members)
    scores = torch.zeros(1, 60)
    scores[0, 0], scores[0, 1] = 2.0, 1.0  # the reference first, the target second
    assert evaluate(cirr([q], gallery), scores)["R@1"] == 100.0  # reference removed
    assert evaluate(fiq([q], gallery), scores)["R@10"] == 100.0
    one = torch.zeros(1, 60)
    one[0, 0], one[0, 1] = 2.0, 1.0
    one[0, 2:11] = 1.5  # nine more between: with the reference kept the target is 11th
    assert evaluate(fiq([q], gallery), one)["R@10"] == 0.0
    assert evaluate(cirr([q], gallery), one)["R@10"] == 100.0  # 10th once it is removed


def test_oracle_gives_100_on_every_fashioniq_metric():
    gallery = [f"g{i}" for i in range(30)]
    queries = [Query(f"g{i}", f"g{i + 15}", "t") for i in range(15)]
    scores = torch.zeros(15, 30)
    for i in range(15):
        scores[i, i + 15] = 1.0
    assert all(v == 100.0 for v in evaluate(fiq(queries, gallery), scores).values())
