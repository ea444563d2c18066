"""bench/ir_metrics.py: nDCG@k and recall@k against hand-computed examples (the BEIR/pytrec_eval definitions)."""

from __future__ import annotations

import math

import pytest
from bench.ir_metrics import mean_over, ndcg_at_k, rank_documents, recall_at_k


def test_ndcg_hand_example() -> None:
    # Relevant d1 and d4 (relevance 1); retrieved d3, d1, d2, d4: gains at ranks 2 and 4.
    relevant = {"d1": 1, "d4": 1}
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["d3", "d1", "d2", "d4"], relevant, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["d3", "d1", "d2", "d4"], relevant, 10) == pytest.approx(0.6509209)
    # Cut at 3: d4 no longer counts, the ideal still has both (2 <= 3).
    assert ndcg_at_k(["d3", "d1", "d2", "d4"], relevant, 3) == pytest.approx((1 / math.log2(3)) / idcg)


def test_ndcg_perfect_empty_and_graded() -> None:
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k([], {"a": 1}, 10) == 0.0
    assert ndcg_at_k(["x"], {}, 10) == 0.0
    # Graded: relevance 2 at rank 2, 1 at rank 1; ideal puts 2 first.
    got = ndcg_at_k(["a", "b"], {"a": 1, "b": 2}, 10)
    assert got == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    # The ideal DCG is cut at k too: 3 relevant, k = 1, first hit relevant -> 1.0.
    assert ndcg_at_k(["a"], {"a": 1, "b": 1, "c": 1}, 1) == pytest.approx(1.0)


def test_recall() -> None:
    relevant = {"d1": 1, "d4": 1, "d9": 0}
    assert recall_at_k(["d3", "d1", "d2", "d4"], relevant, 100) == pytest.approx(1.0)
    assert recall_at_k(["d3", "d1", "d2", "d4"], relevant, 3) == pytest.approx(0.5)
    assert recall_at_k(["d9"], relevant, 100) == 0.0  # relevance 0 is not relevant
    assert recall_at_k(["d1"], {}, 100) == 0.0


def test_rank_documents_takes_each_documents_best_chunk() -> None:
    hits = [("a", 0.9), ("b", 0.8), ("a", 0.95), ("c", 0.8), ("b", 0.1)]
    assert rank_documents(hits) == ["a", "b", "c"]  # b before c: equal scores, b seen first
    assert rank_documents([]) == []


def test_mean_over_counts_queries_without_results_as_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    runs = {"q1": ["d1"]}
    assert mean_over(qrels, runs, "ndcg", 10) == pytest.approx(0.5)
    assert mean_over(qrels, runs, "recall", 100) == pytest.approx(0.5)
