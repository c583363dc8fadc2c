"""metrics: hand-worked values (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dssm_core import metrics

# 3 users (queries) x 5 items (candidates), shared by the retrieval tests below.
SCORES = np.array([
    [0.9, 0.8, 0.1, 0.5, 0.3],   # u0: ranking 0, 1, 3, 4, 2
    [0.2, 0.7, 0.6, 0.1, 0.9],   # u1: ranking 4, 1, 2, 0, 3 (item 4 already seen)
    [0.5, 0.4, 0.3, 0.2, 0.1],   # u2: ranking 0, 1, 2, 3, 4
])
RELEVANT = [[2, 3], [1], [4]]
EXCLUDE = [[], [4], []]


def test_auc_four_samples() -> None:
    # positives score 0.9 and 0.4, negatives 0.3 and 0.6.
    # pairs (pos, neg): (0.9, 0.3) win, (0.9, 0.6) win, (0.4, 0.3) win, (0.4, 0.6) loss -> 3/4
    assert metrics.auc([1, 0, 1, 0], [0.9, 0.3, 0.4, 0.6]) == pytest.approx(0.75)


def test_auc_counts_ties_as_half() -> None:
    # positives 0.5 and 0.8, negatives 0.5 and 0.2.
    # (0.5, 0.5) tie = 0.5, (0.5, 0.2) = 1, (0.8, 0.5) = 1, (0.8, 0.2) = 1 -> 3.5 / 4 = 0.875
    assert metrics.auc([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2]) == pytest.approx(0.875)
    # all scores equal: every pair a tie -> 0.5
    assert metrics.auc([1, 0, 0, 1, 0], [0.3] * 5) == pytest.approx(0.5)


def test_auc_rejects_one_class_and_bad_input() -> None:
    with pytest.raises(ValueError, match="both"):
        metrics.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        metrics.auc([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([1, 0], [0.1, float("nan")])


def _mean_rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """The textbook formula: average ranks of tie groups, positives' rank sum."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_pos = int((y > 0.5).sum())
    return float((ranks[y > 0.5].sum() - n_pos * (n_pos + 1) / 2.0)
                 / (n_pos * (len(y) - n_pos)))


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_logloss_in_chunks_equal_the_whole_array_formulas(monkeypatch, ties) -> None:
    """The counted U equals the mean-rank formula bit for bit (with and without ties, float32
    or float64 scores), and chunks of 7 give the same AUC and logloss as one chunk."""
    rng = np.random.default_rng(3)
    y = (rng.random(5000) < 0.3).astype(np.float32)
    s = (rng.random(5000) + 0.2 * y).astype(np.float32) / 1.2
    if ties:
        s = np.round(s * 20).astype(np.float32) / 20
    whole = (metrics.auc(y, s), metrics.logloss(y, s))
    assert whole[0] == _mean_rank_auc(y.astype(np.float64), s.astype(np.float64))
    assert whole[1] == float(-np.mean(y * np.log(np.clip(s.astype(np.float64), 1e-7, 1 - 1e-7))
                                      + (1.0 - y) * np.log(1.0 - np.clip(
                                          s.astype(np.float64), 1e-7, 1 - 1e-7))))
    assert metrics.auc(y.astype(np.float64), s.astype(np.float64)) == whole[0]
    monkeypatch.setattr(metrics, "METRIC_CHUNK", 7)
    assert (metrics.auc(y, s), metrics.logloss(y, s)) == whole


def test_logloss_hand_worked_and_clipped() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2 = (0.223144 + 0.510826) / 2 = 0.366985
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(0.366985, abs=1e-6)
    # p = 1 for a negative is clipped to 1 - 1e-7: -ln(1e-7) = 16.1181
    assert metrics.logloss([0], [1.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert math.isfinite(metrics.logloss([1, 0], [0.0, 1.0]))
    with pytest.raises(ValueError):
        metrics.logloss([], [])
    with pytest.raises(ValueError):
        metrics.logloss([1], [0.5], eps=0.0)


def test_recall_at_k_three_users() -> None:
    # @2: u0 top {0, 1} has neither 2 nor 3 -> 0/2; u1 (4 removed) top {1, 2} has 1 -> 1/1;
    #     u2 top {0, 1} lacks 4 -> 0/1.  mean = (0 + 1 + 0) / 3 = 1/3
    assert metrics.recall_at_k(SCORES, RELEVANT, 2, EXCLUDE) == pytest.approx(1 / 3)
    # @3: u0 top {0, 1, 3} -> 1/2; u1 -> 1; u2 top {0, 1, 2} -> 0.  mean = 1.5 / 3 = 0.5
    assert metrics.recall_at_k(SCORES, RELEVANT, 3, EXCLUDE) == pytest.approx(0.5)
    # pooled over pairs at @2: hits 0 + 1 + 0 = 1 of 2 + 1 + 1 = 4 relevant -> 0.25
    assert metrics.recall_at_k(SCORES, RELEVANT, 2, EXCLUDE, average="relevant") == \
        pytest.approx(0.25)


def test_already_seen_filtering_changes_the_ranking() -> None:
    # @1 with item 4 removed for u1: u1's top is item 1 (relevant) -> (0 + 1 + 0) / 3
    assert metrics.recall_at_k(SCORES, RELEVANT, 1, EXCLUDE) == pytest.approx(1 / 3)
    # without the filter u1's top is the seen item 4 -> nobody hits
    assert metrics.recall_at_k(SCORES, RELEVANT, 1) == pytest.approx(0.0)


def test_hit_rate_and_ndcg() -> None:
    # hit rate @3: u0 yes (item 3), u1 yes, u2 no -> 2/3
    assert metrics.hit_rate_at_k(SCORES, RELEVANT, 3, EXCLUDE) == pytest.approx(2 / 3)
    # ndcg @3: u0 hit at rank 3: DCG = 1/log2(4) = 0.5, IDCG (2 relevant) = 1 + 1/log2(3)
    #   = 1.630930 -> 0.306574; u1 hit at rank 1 -> 1; u2 -> 0.  mean = 1.306574 / 3
    expected = (0.5 / (1 + 1 / math.log2(3)) + 1.0 + 0.0) / 3
    assert metrics.ndcg_at_k(SCORES, RELEVANT, 3, EXCLUDE) == pytest.approx(expected)
    assert expected == pytest.approx(0.435525, abs=1e-6)


def test_ranking_counts_per_query_and_boolean_masks() -> None:
    rel = np.zeros_like(SCORES, dtype=bool)
    for q, idx in enumerate(RELEVANT):
        rel[q, idx] = True
    ex = np.zeros_like(rel)
    ex[1, 4] = True
    c = metrics.ranking_counts(SCORES, rel, [2, 3], ex)
    np.testing.assert_array_equal(c["n_relevant"], [2, 1, 1])
    np.testing.assert_array_equal(c["hits@2"], [0, 1, 0])
    np.testing.assert_array_equal(c["hits@3"], [1, 1, 0])
    # chunked evaluation: the two halves summarised together give the same numbers
    a = metrics.ranking_counts(SCORES[:1], RELEVANT[:1], [3], EXCLUDE[:1])
    b = metrics.ranking_counts(SCORES[1:], RELEVANT[1:], [3], EXCLUDE[1:])
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    assert metrics.summarize(both, [3])["recall@3"] == pytest.approx(0.5)


def test_top_k_ties_and_exclusions() -> None:
    # equal scores: the lower index wins, so item 2 is not in the top 2
    assert metrics.recall_at_k(np.array([[1.0, 1.0, 1.0]]), [[2]], 2) == 0.0
    assert metrics.recall_at_k(np.array([[1.0, 1.0, 1.0]]), [[0]], 1) == 1.0
    np.testing.assert_array_equal(metrics.top_k(np.array([[3.0, 2.0, 1.0]]), 3, [[0, 1]]),
                                  [[2, -1, -1]])
    # k larger than the catalogue is capped
    assert metrics.top_k(SCORES, 10).shape == (3, 5)
    with pytest.raises(ValueError):
        metrics.top_k(SCORES, 0)
    with pytest.raises(ValueError):
        metrics.recall_at_k(SCORES, [[0]], 1)          # one entry for 3 queries
    with pytest.raises(ValueError):
        metrics.recall_at_k(SCORES, [[9], [0], [0]], 1)  # index out of range


def test_queries_without_relevant_items_are_skipped() -> None:
    # u2's only relevant item is also excluded -> it does not count; u0 @1 misses, u1 hits
    rel = [[2], [1], [4]]
    ex = [[], [4], [4]]
    assert metrics.recall_at_k(SCORES, rel, 1, ex) == pytest.approx(0.5)
    assert metrics.metric_name("recall", 50) == "recall@50"


# --------------------------------------------------------------------------- retrieval.top_k_rows
@pytest.mark.parametrize("sort_all_max", [0, 8_192])   # per-query partition / block sort
def test_top_k_rows_hand_worked_exclusions_mask_and_ties(sort_all_max, monkeypatch) -> None:
    from scipy import sparse

    from dssm_core import retrieval

    monkeypatch.setattr(retrieval, "SORT_ALL_MAX", sort_all_max)

    s = np.array([[0.5, 0.9, 0.5, 0.1, 0.5],     # q0: 1, then the 0.5 tie in row order 0, 2, 4
                  [0.3, 0.3, 0.3, 0.3, 0.3]], dtype=np.float32)
    top_s, top_r = retrieval.top_k_rows(s, 3)
    np.testing.assert_array_equal(top_r, [[1, 0, 2], [0, 1, 2]])
    np.testing.assert_allclose(top_s, [[0.9, 0.5, 0.5], [0.3, 0.3, 0.3]])
    # q0 excludes row 1 and 0; row 2 is not allowed: q0 keeps 4 then 3; q1 keeps 0, 1, 3
    ex = sparse.csr_matrix(([1, 1], ([0, 0], [1, 0])), shape=(2, 5))
    allowed = np.array([True, True, False, True, True])
    _, top_r = retrieval.top_k_rows(s, 3, exclude=ex, allowed=allowed)
    np.testing.assert_array_equal(top_r, [[4, 3, -1], [0, 1, 3]])    # q0: 2 candidates left
    # k above N is clamped; float64 stays float64 (1 + 1e-12 beats 1.0)
    s64 = np.array([[1.0, 1.0 + 1e-12]])
    top_s, top_r = retrieval.top_k_rows(s64, 9)
    assert top_s.dtype == np.float64 and top_r.tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="NaN"):
        retrieval.top_k_rows(np.array([[0.1, np.nan, 0.2]], dtype=np.float32), 1)
    with pytest.raises(ValueError):
        retrieval.top_k_rows(s, 0)
    with pytest.raises(ValueError):
        retrieval.top_k_rows(s, 1, allowed=np.ones(4, dtype=bool))
    assert retrieval.chunk_rows(1_000_000) == 67          # 256 MiB / 4,000,000 B a query
    assert retrieval.chunk_rows(10, block_bytes=4) == 1


@pytest.mark.parametrize("sort_all_max", [0, 8_192])
def test_top_k_rows_equals_a_full_stable_sort_on_ties(sort_all_max, monkeypatch) -> None:
    from scipy import sparse

    from dssm_core import retrieval

    monkeypatch.setattr(retrieval, "SORT_ALL_MAX", sort_all_max)
    monkeypatch.setattr(retrieval, "SORT_ALL_CELLS", 1_000)      # several blocks of queries

    rng = np.random.default_rng(7)
    s = rng.integers(-3, 3, size=(40, 300)).astype(np.float32)   # many ties, signs, -0.0
    s[0, :10] = -0.0
    ex = sparse.random(40, 300, density=0.2, random_state=3, format="csr")
    allowed = rng.random(300) > 0.1
    masked = np.where(ex.toarray() != 0, -np.inf, s)
    masked[:, ~allowed] = -np.inf
    for k in (1, 7, 50, 300):
        _, top = retrieval.top_k_rows(s, k, exclude=ex, allowed=allowed)
        full = np.argsort(-masked, axis=1, kind="stable")[:, :k]
        want = np.where(np.take_along_axis(masked, full, axis=1) == -np.inf, -1, full)
        np.testing.assert_array_equal(top, want)


# ------------------------------------------------- retrieval.rank_cutoffs / SharedRanking
def test_rank_cutoffs_hand_worked_ties_exclusions_and_mask() -> None:
    from scipy import sparse

    from dssm_core import retrieval

    s = np.array([[0.5, 0.9, 0.5, 0.1, 0.5],     # ranking 1, 0, 2, 4, 3 (0.5 tie by row)
                  [0.3, 0.3, 0.3, 0.3, 0.3]], dtype=np.float32)
    # targets: q0 rows 2 and 4 (ranks 2 and 3), q1 rows 1 and 3 (ranks 1 and 3)
    targets = sparse.csr_matrix(([1, 1, 1, 1], ([0, 0, 1, 1], [4, 2, 3, 1])), shape=(2, 5))
    ranks, within = retrieval.rank_cutoffs(s, targets, (1, 3, 4, 9), exact=3)
    np.testing.assert_array_equal(ranks, [2, -1, 1, -1])      # CSR order; rank 3 >= exact
    np.testing.assert_array_equal(within[1], [False, False, False, False])
    np.testing.assert_array_equal(within[3], [True, False, True, False])   # 0.5 tie: row 2 in
    np.testing.assert_array_equal(within[4], [True, True, True, True])
    np.testing.assert_array_equal(within[9], [True, True, True, True])     # k above N
    # q0 excludes rows 1 and 0, row 2 not allowed: q0's ranking 4, 3; q1's 0, 1, 3
    ex = sparse.csr_matrix(([1, 1], ([0, 0], [1, 0])), shape=(2, 5))
    allowed = np.array([True, True, False, True, True])
    ranks, within = retrieval.rank_cutoffs(s, targets, (1, 2), exact=5, exclude=ex,
                                           allowed=allowed)
    np.testing.assert_array_equal(ranks, [-1, 0, 1, 2])       # q0 row 2 is no candidate
    np.testing.assert_array_equal(within[1], [False, True, False, False])
    np.testing.assert_array_equal(within[2], [False, True, True, False])
    # popularity-style scores: q0's row for every query, ranked once: 1, 0, 4, 3 (2 not
    # allowed); q0 without rows 1 and 0: 4, 3
    once = retrieval.SharedRanking(s[0], allowed)
    np.testing.assert_array_equal(once.ranks(targets, exclude=ex), [-1, 0, 0, 3])
    np.testing.assert_array_equal(once.ranks(targets), [-1, 2, 0, 3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval.rank_cutoffs(np.array([[0.1, np.nan]], dtype=np.float32),
                               sparse.csr_matrix(np.ones((1, 2))), (1,), 1)
    with pytest.raises(ValueError, match="targets"):
        retrieval.rank_cutoffs(s, sparse.csr_matrix((3, 5)), (1,), 1)


@pytest.mark.parametrize("group_cells,threads", [(4_000_000, 1), (7, 1), (7, 2)])
def test_cutoff_counts_equal_ranked_list_counts(group_cells, threads, monkeypatch) -> None:
    """evaluation's counts (cut-off tests, popularity ranked once) equal what ranked lists of
    every query give (top_k_rows + ranked_counts), on scores full of ties, with exclusions,
    candidate masks and cut-offs beyond the candidates; one query per group ranked in one
    thread or two side by side."""
    from scipy import sparse

    from dssm_core import evaluation, peers, retrieval

    monkeypatch.setattr(retrieval, "RANK_GROUP_CELLS", group_cells)
    rng = np.random.default_rng(11)
    for trial in range(40):
        nu, ni = int(rng.integers(3, 120)), int(rng.integers(3, 80))
        u = rng.integers(0, 3, (nu, 2)).astype(np.float32)
        v = rng.integers(0, 3, (ni, 2)).astype(np.float32)
        if trial % 2:
            u = rng.normal(size=(nu, 2)).astype(np.float32)
        past = sparse.random(nu, ni, density=0.3, format="csr", random_state=trial)
        past.data[:] = 1
        rel = sparse.random(nu, ni, density=0.2, format="csr", random_state=100 + trial)
        rel.data[:] = 1
        rel = (rel - rel.multiply(past)).tocsr()
        rel.eliminate_zeros()
        user_ok = rng.random(nu) > 0.3 if trial % 3 else None
        q = evaluation.Question(past, rel, user_ok, None)
        for name, scorer in (("model", evaluation.VectorScorer(u, v)),
                             ("popularity", peers.Popularity(past))):
            for direction in evaluation.DIRECTIONS:
                r = q.relevant if direction == "u2i" else q.relevant.T.tocsr()
                seen = q.past if direction == "u2i" else q.past.T.tocsr()
                ok = q.user_ok if direction == "i2u" else q.item_ok
                queries = np.flatnonzero(np.diff(r.indptr) > 0)
                if not len(queries):
                    continue
                n = r.shape[1]
                ks, hit_ks = (1, 3, n + 2), (int(rng.integers(1, n + 1)),)
                got = evaluation._counts(scorer, direction, queries, r, seen, ok, ks, hit_ks,
                                         threads=threads)
                ex = seen[queries]
                _, top = retrieval.top_k_rows(scorer.scores(direction, queries), n, exclude=ex,
                                              allowed=ok)
                want_rel = r[queries] - r[queries].multiply(ex)
                if ok is not None:
                    want_rel = want_rel.multiply(ok[None, :].astype(np.float32))
                want = metrics.ranked_counts(top, sparse.csr_matrix(want_rel),
                                             sorted(set(ks) | set(hit_ks)))
                for key, val in got.items():
                    np.testing.assert_allclose(val, want[key], err_msg=f"{name} {key}")
