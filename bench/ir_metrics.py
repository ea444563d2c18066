"""Retrieval metrics as BEIR reports them (pytrec_eval's ``ndcg_cut`` and ``recall``), without dependencies.

- ``ndcg_at_k``: DCG of the first ``k`` retrieved ids (gain = the qrel's relevance, discount
  ``log2(rank + 1)``, rank from 1) over the DCG of the ideal ordering of the query's qrels, cut at ``k``.
- ``recall_at_k``: relevant ids among the first ``k`` retrieved, over the query's relevant ids
  (relevance > 0).
- ``mean_over``: the mean over every query that has qrels; a query with nothing retrieved counts 0.

Chunk hits become document rankings with ``rank_documents``: each document scored by its best chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]
"""query id -> {doc id: relevance}."""


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    if idcg == 0:
        return 0.0
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    wanted = {doc for doc, r in relevant.items() if r > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def rank_documents(hits: Iterable[tuple[str, float]]) -> list[str]:
    """(doc id, score) pairs of chunk hits -> doc ids by their best score, best first (ties: first seen)."""
    best: dict[str, float] = {}
    for doc, score in hits:
        if doc not in best or score > best[doc]:
            best[doc] = score
    order = {doc: i for i, doc in enumerate(best)}
    return sorted(best, key=lambda doc: (-best[doc], order[doc]))


def mean_over(qrels: Qrels, runs: Mapping[str, Sequence[str]], metric: str, k: int) -> float:
    """``metric`` (``ndcg`` or ``recall``) at ``k``, averaged over the queries of ``qrels``."""
    fn = ndcg_at_k if metric == "ndcg" else recall_at_k
    if not qrels:
        return 0.0
    return sum(fn(runs.get(q, ()), rel, k) for q, rel in qrels.items()) / len(qrels)
