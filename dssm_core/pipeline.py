"""One training run, data to stored model: the one code path the CLI and the app share.

``split`` -> ``FeatureEncoder.fit`` on the training rows -> ``DSSM`` -> ``training.fit`` ->
honest evaluation on the held-out rows (with the baselines, in the same run) -> every user and
item embedded -> (``run_training``) stored in one transaction.

Protocols (every summary carries its name and description):

- **T** (the article's): label rating > threshold; all interactions sorted by time; the first
  80 % are training rows (their last eighth is validation, for early stopping), the last 20 %
  the test. Test AUC and logloss; then the audience question on the same split: for each
  positive test interaction (u, i) whose item occurs in the training rows, rank every user for
  item i (user and item vectors as of the split time), users who interacted with i in the
  training rows removed; item->user recall@K pools every such interaction (micro average). The
  user->item direction is measured the same way (items the user had in training removed).
- **L** (leave-last-out, as torch-rechub and retrieval libraries report): for every user with
  at least two interactions, the last one (by time) is the test; the rest are training rows
  (the last eighth of them by time is validation). History and statistics come from the
  training rows only. Every held-out interaction is relevant whatever its rating; user->item and
  item->user recall@K with already-seen candidates removed, exact search over all items/users.

Labels: rating > ``cfg.label_threshold`` (implicit data: every observed event). Where the run
samples negatives (implicit data: ``cfg.negatives``; rated data: ``cfg.explicit_negatives``),
training, validation and test rows all get them (seeded; an item the user interacted with
in the known rows - anywhere, for the test - is never drawn), so test AUC/logloss measure the
same mixture the model learned.

Baselines on the same split, in the same run: popularity (items ranked by training count,
users by training activity) for both retrieval directions, and the per-item mean label rate
(smoothed towards the global rate) for test AUC and logloss.
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from .config import TrainConfig
from .dataset import Dataset
from .encoding import FeatureEncoder, as_str_array
from . import metrics

log = logging.getLogger(__name__)

#: Cut-offs of every retrieval metric in a summary.
KS = (10, 50, 100)
#: Score-matrix rows evaluated at once (bounds memory on large catalogues).
EVAL_CHUNK = 512
#: Pseudo-count of the item-mean baseline (pulls rarely seen items to the global like-rate).
BASELINE_SMOOTHING = 5.0
#: How often (seconds) ``run_training`` asks the store whether a cancel was requested.
CANCEL_POLL_S = 0.5

PROTOCOL_DESCRIPTIONS = {
    "T": ("time split: label rating > {thr:g}; interactions sorted by time, first 80% train "
          "(its last eighth validation), last 20% test; retrieval queries = positive test "
          "interactions whose item occurs in training, vectors as of the split time, "
          "candidates already seen in training removed, exact search, micro-averaged"),
    "L": ("leave-last-out: per user with >= 2 interactions the last one is the test, the rest "
          "train (last eighth by time validation); features from training rows only; every "
          "held-out interaction is relevant; already-seen removed, exact search"),
}


class TrainingCancelled(Exception):
    """Raised when a training is cancelled (``should_stop`` answered True)."""


@dataclass(frozen=True)
class Split:
    """Row positions (into ``dataset.interactions``) of one evaluation protocol.

    train: rows the model is fitted on (encoders too). val: rows for early stopping.
    test: held-out rows. split_time: T: the first test timestamp; L: None.
    pool: rows history and statistics may come from (None = every interaction).
    """

    protocol: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    split_time: int | None
    pool: np.ndarray | None
    description: str

    @property
    def known(self) -> np.ndarray:
        """Every row the model may know of: train and validation."""
        return np.sort(np.concatenate([self.train, self.val]))


@dataclass
class TrainResult:
    """Everything one in-memory training produced.

    user_ids/user_vectors, item_ids/item_vectors: every user/item of the dataset embedded with
    its features as of the end of the data (what the audience pages search), (N, D) float32.
    """

    model: Any
    encoder: FeatureEncoder
    cfg: TrainConfig
    split: Split
    history: list[dict[str, Any]]
    fit: Any
    summary: dict[str, Any]
    user_ids: np.ndarray
    user_vectors: np.ndarray
    item_ids: np.ndarray
    item_vectors: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def describe_protocol(protocol: str, cfg: TrainConfig | None = None) -> str:
    """The one-line description stored with every summary of ``protocol``."""
    if protocol not in PROTOCOL_DESCRIPTIONS:
        known = ", ".join(PROTOCOL_DESCRIPTIONS)
        raise ValueError(f"unknown protocol {protocol!r}; known: {known}")
    thr = cfg.label_threshold if cfg is not None else 3.0
    return PROTOCOL_DESCRIPTIONS[protocol].format(thr=thr)


# ------------------------------------------------------------------------------------ split
def split(dataset: Dataset, cfg: TrainConfig) -> Split:
    """Train/validation/test rows of ``cfg.protocol`` (see the module docstring)."""
    inter = dataset.interactions
    n = len(inter)
    if n < 10:
        raise ValueError(f"too few interactions to split ({n}); need at least 10")
    ts = inter["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(n), ts))          # by time, then by row: deterministic
    desc = describe_protocol(cfg.protocol, cfg)
    if cfg.protocol == "T":
        n_test = int(round(n * cfg.test_fraction))
        n_known = n - n_test
        n_val = int(round(n_known * cfg.val_fraction))
        if n_test < 1 or n_val < 1 or n_known - n_val < 1:
            raise ValueError(f"split leaves an empty part (n={n}, test={n_test}, val={n_val})")
        train, val, test = order[:n_known - n_val], order[n_known - n_val:n_known], order[n_known:]
        return Split("T", np.sort(train), np.sort(val), np.sort(test), int(ts[test].min()),
                     None, desc)
    # L: the last interaction of every user with at least two
    users = as_str_array(inter["user_id"])
    codes = pd.factorize(users)[0]
    by_user = order[np.argsort(codes[order], kind="stable")]   # users, each in time order
    cu = codes[by_user]
    last = np.r_[cu[1:] != cu[:-1], True]
    count = np.bincount(codes)
    is_test = last & (count[cu] >= 2)
    test = by_user[is_test]
    rest = np.setdiff1d(order, test)
    rest = rest[np.lexsort((rest, ts[rest]))]
    n_val = int(round(len(rest) * cfg.val_fraction))
    if len(test) < 1 or n_val < 1 or len(rest) - n_val < 1:
        raise ValueError("leave-last-out needs users with at least two interactions")
    train, val = rest[:len(rest) - n_val], rest[len(rest) - n_val:]
    pool = np.sort(rest)
    return Split("L", np.sort(train), np.sort(val), np.sort(test), None, pool, desc)


# ------------------------------------------------------------------------------------ train
def make_encoder(cfg: TrainConfig) -> FeatureEncoder:
    """The (unfitted) feature encoder a config asks for."""
    return FeatureEncoder(history_len=cfg.history_len, label_threshold=cfg.label_threshold,
                          embedding_dim=cfg.embedding_dim)


def train(
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Split, encode, train, evaluate (with baselines) and embed, all in memory.

    Raises ``TrainingCancelled`` when ``should_stop`` stops the training, ``ValueError`` for
    data that cannot be trained on.
    """
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.num_threads))
    try:
        return _train(dataset, cfg, on_epoch_end, should_stop)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    dataset: Dataset,
    cfg: TrainConfig,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    should_stop: Callable[[], bool] | None,
) -> TrainResult:
    from . import training
    from .model import DSSM

    t0 = time.perf_counter()
    sp = split(dataset, cfg)
    enc = make_encoder(cfg).fit(dataset, sp.train, pool=sp.pool)
    # implicit data: sampled negatives (else there is no class 0); rated data: optional
    # negatives. The test gets them exactly as training does (none by default: rated pairs).
    neg = int(cfg.negatives) if dataset.implicit else int(cfg.explicit_negatives)
    known = sp.known
    x_train = enc.transform_events(dataset, sp.train, pool=sp.pool, negatives=neg,
                                   seed=cfg.seed, known=known)
    x_val = enc.transform_events(dataset, sp.val, pool=sp.pool, negatives=neg,
                                 seed=cfg.seed + 1, known=known)
    x_test = enc.transform_events(dataset, sp.test, pool=sp.pool, negatives=neg,
                                  seed=cfg.seed + 2)
    t_features = time.perf_counter() - t0
    if x_train["label"].min() == x_train["label"].max():
        raise ValueError("the training rows hold a single class: change label_threshold")

    model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
    fr = training.fit(model, x_train, x_val, cfg, on_epoch_end=on_epoch_end,
                      should_stop=should_stop)
    if fr.stopped == "cancelled":
        raise TrainingCancelled("training cancelled")
    t1 = time.perf_counter()
    summary = evaluate(model, enc, dataset, sp, cfg, x_train=x_train, x_val=x_val,
                       x_test=x_test)
    t_eval = time.perf_counter() - t1

    # what the audience pages search: everyone as of the end of the data
    user_ids, u_table = enc.user_table(dataset, None)
    item_ids, i_table = enc.item_table(dataset, None)
    user_vectors = training.embed(model, "user", u_table)                  # (n_users, D)
    item_vectors = training.embed(model, "item", i_table)                  # (n_items, D)

    seconds = [h["seconds"] for h in fr.history if h.get("seconds") is not None]
    summary.update({
        "dataset": dataset.name or dataset.format,
        "preset": cfg.preset,
        "objective": cfg.objective,
        "n_users": int(len(user_ids)),
        "n_items": int(len(item_ids)),
        "n_train": int(len(sp.train)),
        "n_val": int(len(sp.val)),
        "n_test": int(len(sp.test)),
        "epochs_run": len(fr.history),
        "best_epoch": int(fr.best_epoch),
        "stopped": fr.stopped,
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "train_samples_per_second": float(fr.samples_per_second),
        "precision": fr.precision,
        "feature_seconds": round(t_features, 3),
        "eval_seconds": round(t_eval, 3),
    })
    return TrainResult(model=model, encoder=enc, cfg=cfg, split=sp, history=list(fr.history),
                       fit=fr, summary=summary, user_ids=user_ids, user_vectors=user_vectors,
                       item_ids=item_ids, item_vectors=item_vectors,
                       timings={"features": t_features, "eval": t_eval,
                                "total": time.perf_counter() - t0})


# ------------------------------------------------------------------------------- evaluation
def evaluate(
    model: Any,
    enc: FeatureEncoder,
    dataset: Dataset,
    sp: Split,
    cfg: TrainConfig,
    *,
    x_train: dict[str, np.ndarray],
    x_val: dict[str, np.ndarray],
    x_test: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Test AUC/logloss and both retrieval directions for the model and the baselines."""
    from . import training

    out: dict[str, Any] = {"protocol": sp.protocol, "protocol_description": sp.description}
    y = x_test["label"]
    p = training.predict(model, x_test)
    out.update(_auc_logloss("test", y, p))
    out["test_positive_rate"] = float(y.mean()) if len(y) else None
    out["test_rows"] = int(len(y))                 # rated/observed test rows + sampled negatives
    # item-mean like-rate baseline, fitted on train + validation labels
    # (with sampled negatives where the run samples them: the same mixture as the test)
    known_item = np.concatenate([x_train["item_id"], x_val["item_id"]])
    known_label = np.concatenate([x_train["label"], x_val["label"]]).astype(np.float64)
    p_base = item_mean_baseline(known_item, known_label, x_test["item_id"])
    out.update(_auc_logloss("baseline_item_mean_test", y, p_base))

    # retrieval
    inter = dataset.interactions
    users = as_str_array(inter["user_id"])
    items = as_str_array(inter["item_id"])
    user_index = pd.Index(as_str_array(dataset.users["user_id"]))
    item_index = pd.Index(as_str_array(dataset.items["item_id"]))
    ucode = user_index.get_indexer(users)
    icode = item_index.get_indexer(items)
    listed = (ucode >= 0) & (icode >= 0)        # (the Dataset contract lists everyone)
    known = sp.known[listed[sp.known]]
    if sp.protocol == "T":
        as_of: int | None = sp.split_time
        if dataset.implicit:
            test = sp.test
        else:
            test = sp.test[inter["rating"].to_numpy()[sp.test] > cfg.label_threshold]
        pool = None
    else:
        as_of = None
        test = sp.test
        pool = sp.pool
    _, u_table = enc.user_table(dataset, as_of, pool=pool)
    _, i_table = enc.item_table(dataset, as_of, pool=pool)
    U = training.embed(model, "user", u_table)                             # (n_users, D)
    V = training.embed(model, "item", i_table)                             # (n_items, D)
    n_users, n_items = len(user_index), len(item_index)
    user_pop = np.bincount(ucode[known], minlength=n_users).astype(np.float64)
    item_pop = np.bincount(icode[known], minlength=n_items).astype(np.float64)
    seen = pd.DataFrame({"u": ucode[known], "i": icode[known]})
    test = test[listed[test]]
    tq = pd.DataFrame({"u": ucode[test], "i": icode[test]})
    if sp.protocol == "T":      # the audience question: items seen in training only
        tq = tq[item_pop[tq["i"].to_numpy()] > 0]
    out["i2u_queries"] = int(len(tq))
    out["u2i_queries"] = int(len(tq))
    for direction, q_col, c_col, Q, C, pop in (
        ("i2u", "i", "u", V, U, user_pop),
        ("u2i", "u", "i", U, V, item_pop),
    ):
        model_counts, pop_counts = [], []
        for qids, rel, exc in _grouped(tq, seen, q_col, c_col, C.shape[0]):
            s = Q[qids] @ C.T                                              # (q, N)
            model_counts.append(metrics.ranking_counts(s, rel, KS, exc))
            s_pop = np.broadcast_to(pop, (len(qids), len(pop)))
            pop_counts.append(metrics.ranking_counts(s_pop, rel, KS, exc))
        for prefix, counts in ((direction, model_counts),
                               (f"baseline_popularity_{direction}", pop_counts)):
            res = metrics.summarize(_concat(counts), KS, average="relevant") if counts else {}
            for k in KS:
                for m in ("recall", "ndcg"):
                    name = metrics.metric_name(m, k)
                    out[f"{prefix}_{name}"] = _finite(res.get(name))
    return out


def item_mean_baseline(train_items: np.ndarray, train_labels: np.ndarray,
                       test_items: np.ndarray, smoothing: float = BASELINE_SMOOTHING
                       ) -> np.ndarray:
    """Per-item like-rate from training labels, smoothed towards the global rate with
    ``smoothing`` pseudo-counts; index 0 (unknown item) gets the global rate. -> (N,)"""
    train_items = np.asarray(train_items, dtype=np.int64)
    test_items = np.asarray(test_items, dtype=np.int64)
    size = int(max(train_items.max(initial=0), test_items.max(initial=0))) + 1
    g = float(np.mean(train_labels)) if len(train_labels) else 0.5
    n = np.bincount(train_items, minlength=size).astype(np.float64)
    pos = np.bincount(train_items, weights=train_labels, minlength=size)
    rate = (pos + smoothing * g) / np.maximum(n + smoothing, 1e-12)
    rate[0] = g
    return rate[test_items]


def _auc_logloss(prefix: str, y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    both = len(y) > 0 and 0 < float(y.sum()) < len(y)
    return {f"{prefix}_auc": metrics.auc(y, p) if both else None,
            f"{prefix}_logloss": metrics.logloss(y, p) if len(y) else None}


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _unique_per(df: pd.DataFrame, by: str, col: str) -> pd.Series:
    """The sorted distinct ``col`` values of each ``by`` group, as one array per group.

    (Not ``.agg(lambda s: np.unique(...))``: pandas 2.2 refuses an aggregate that is an array.)
    """
    g = df.groupby(by)[col].unique()
    return pd.Series([np.unique(v) for v in g.to_numpy()], index=g.index, dtype=object)


def _grouped(tq: pd.DataFrame, seen: pd.DataFrame, q_col: str, c_col: str, n_cand: int
             ) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
    """Chunks of (query codes, relevant candidate codes, excluded candidate codes)."""
    if len(tq) == 0:
        return
    rel = _unique_per(tq, q_col, c_col)
    qids = rel.index.to_numpy()
    seen_q = seen[seen[q_col].isin(qids)]
    exc = _unique_per(seen_q, q_col, c_col)
    empty = np.zeros(0, dtype=np.int64)
    for start in range(0, len(qids), EVAL_CHUNK):
        chunk = qids[start:start + EVAL_CHUNK]
        yield (chunk, [rel.loc[q] for q in chunk],
               [exc.loc[q] if q in exc.index else empty for q in chunk])


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------------ store
def report(summary: dict[str, Any], run_id: int | None = None) -> dict[str, Any]:
    """The nested JSON report of one run (the CLI's ``--report``) from its flat summary."""
    def block(prefix: str) -> dict[str, Any]:
        return {f"recall@{k}": summary.get(f"{prefix}_recall@{k}") for k in KS}

    return {
        "run_id": run_id,
        "protocol": summary.get("protocol"),
        "protocol_description": summary.get("protocol_description"),
        "dataset": summary.get("dataset"),
        "preset": summary.get("preset"),
        "objective": summary.get("objective"),
        "test": {"auc": summary.get("test_auc"), "logloss": summary.get("test_logloss")},
        "retrieval": {"item_to_user": block("i2u"), "user_to_item": block("u2i")},
        "baseline_popularity": {"retrieval": {
            "item_to_user": block("baseline_popularity_i2u"),
            "user_to_item": block("baseline_popularity_u2i")}},
        "baseline_item_mean": {"test": {
            "auc": summary.get("baseline_item_mean_test_auc"),
            "logloss": summary.get("baseline_item_mean_test_logloss")}},
        "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "train_samples_per_second": summary.get("train_samples_per_second"),
        "best_epoch": summary.get("best_epoch"),
        "epochs_run": summary.get("epochs_run"),
        "summary": summary,
    }


def _weights_bytes(model: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def run_training(
    store: Any,
    dataset_id: int,
    cfg: TrainConfig,
    *,
    run_id: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    project: bool = True,
) -> int:
    """Train dataset ``dataset_id`` of ``store`` and store the run; returns its id.

    Creates the run (or takes the queued ``run_id``), marks it running, records every epoch,
    stops when ``store.cancel_requested(run_id)`` or ``should_stop()`` says so, and writes
    summary, weights, encoders and embeddings with ``store.finish_run`` (one transaction).
    A failure calls ``store.fail_run(run_id, text)`` and re-raises; a cancel marks the run
    "cancelled" and raises ``TrainingCancelled``. Then, if ``project``, the UMAP maps are
    computed, by the store's warm projection worker when one is up (``projector.project``),
    else in this process (a failure there is logged and never fails the run).
    """
    if run_id is None:
        run_id = int(store.create_run(int(dataset_id), cfg.to_dict(), preset=cfg.preset,
                                      objective=cfg.objective, protocol=cfg.protocol))
    run_id = int(run_id)
    # a run that cannot start (unknown, or already ended) is left as it is
    store.mark_running(run_id, os.getpid())
    try:
        dataset = store.load_dataset(int(dataset_id))

        def epoch_cb(record: dict[str, Any]) -> None:
            store.add_epoch(run_id, record)
            if on_epoch_end is not None:
                on_epoch_end(record)

        last_poll = [0.0, False]   # per-run closure state: time of the last poll, its answer

        def stop_cb() -> bool:
            if should_stop is not None and should_stop():
                return True
            now = time.monotonic()
            if now - last_poll[0] >= CANCEL_POLL_S:
                last_poll[0] = now
                last_poll[1] = bool(store.cancel_requested(run_id))
            return bool(last_poll[1])

        result = train(dataset, cfg, on_epoch_end=epoch_cb, should_stop=stop_cb)
        store.finish_run(
            run_id, summary=result.summary, weights=_weights_bytes(result.model),
            encoders=result.encoder.to_json(), user_ids=result.user_ids,
            user_vectors=result.user_vectors, item_ids=result.item_ids,
            item_vectors=result.item_vectors)
    except (TrainingCancelled, KeyboardInterrupt):
        log.info("run %d cancelled", run_id)
        _safe_fail(store, run_id, "cancelled by request", "cancelled")
        raise
    except BaseException as exc:
        _safe_fail(store, run_id, f"{type(exc).__name__}: {exc}", "failed")
        raise
    if project:
        try:
            from . import projector

            # by the store's warm worker when one is up, else in this process
            projector.project(store, run_id)
        except Exception:  # noqa: BLE001 - maps are optional, the run stands
            log.exception("run %d: computing the embedding maps failed", run_id)
    return run_id


def _safe_fail(store: Any, run_id: int, text: str, status: str) -> None:
    try:
        store.fail_run(run_id, text, status=status)
    except Exception:  # noqa: BLE001 - never hide the original error
        log.exception("run %d: could not record the failure", run_id)


def load_model(store: Any, run_id: int) -> tuple[Any, FeatureEncoder, TrainConfig]:
    """Rebuild a stored run's model (eval mode), encoder and config; weights are read with
    ``torch.load(..., weights_only=True)``."""
    import torch

    from .model import DSSM

    run = store.get_run(int(run_id))
    cfg = TrainConfig.from_dict(run["config"])
    enc = FeatureEncoder.from_json(store.load_encoders(int(run_id)))
    model = DSSM(enc.user_specs_, enc.item_specs_, cfg)
    state = torch.load(io.BytesIO(store.load_weights(int(run_id))), weights_only=True,
                       map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model, enc, cfg
