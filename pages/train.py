"""Train: choose a dataset and settings, launch a background training job, follow it live."""
from __future__ import annotations

import os

import streamlit as st

from dssm_core import jobs
from dssm_core.config import (MONITOR_LABELS, OBJECTIVES, PRESETS, TrainConfig,
                               describe_objective, watched_metric)
from pages import widgets

widgets.route_through_app()

PROTOCOLS = {
    "A": "Audience — learn from the past 80 % of events, find who interacts in the future "
         "among users who already exist",
    "T": "Time split — train on the first 80 % of events, test on the last 20 %",
    "L": "Leave last out — each user's last event is the test",
}
PRECISIONS = {"auto": "Auto", "float32": "float32", "bfloat16": "bfloat16"}
BATCH_SIZES = [64, 128, 256, 512, 1024, 2048, 4096]
EMBED_DIMS = [4, 8, 16, 32, 64]


def parse_layers(text: str, what: str) -> tuple[int, ...]:
    """``"128, 64"`` -> ``(128, 64)``; ``ValueError`` naming the field when it is not that."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what}: write layer sizes as whole numbers separated by commas, "
                         f"e.g. 128, 64 (got {text!r})") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"{what}: give at least one layer size, each 1 or more (got {text!r})")
    return sizes


st.title("Train a model")
store = widgets.get_store()
ds_id = widgets.dataset_picker(store, key="train_dataset", label="Dataset")
if ds_id is None:
    widgets.empty_state("There is no dataset to train on yet. Upload one first.",
                        page="data", link_label="Upload data")
    st.stop()
dataset = store.get_dataset(ds_id)
implicit = dataset.rating_scale is None

PRESET_LABELS = {
    "audience": "audience — who will interact with an item: best for building audiences",
    "default": "default — who will like an item (rating above the threshold)",
    "article": "article — the original article's model, for comparison",
}
preset_names = sorted(PRESETS, key=lambda p: list(PRESET_LABELS).index(p)
                      if p in PRESET_LABELS else len(PRESET_LABELS))
preset_name = st.selectbox(
    "Starting point (preset)", preset_names, key="train_preset",
    format_func=lambda p: PRESET_LABELS.get(p, p),
    help="See BENCHMARKS.md: 'audience' finds about 4x more of an item's future audience than "
         "popularity on MovieLens 100K; 'default' has the best AUC on rated pairs.")
base: TrainConfig = PRESETS[preset_name]

with st.form(f"train_form_{preset_name}"):
    c1, c2 = st.columns(2)
    # each option says what its labels really are with this preset and data (the audience
    # preset's threshold 0 makes every rating a positive: "interacted or not", not "like")
    scale = dataset.get("rating_scale")
    objective = c1.radio("Objective", list(OBJECTIVES),
                         format_func=lambda o: describe_objective(base.with_(objective=o), scale),
                         index=list(OBJECTIVES).index(base.objective),
                         help="Worded for this preset's like threshold; the message after "
                              "*Start training* words it for the threshold you set.")
    protocol = c2.radio("Evaluation protocol", list(PROTOCOLS), format_func=PROTOCOLS.get,
                        index=list(PROTOCOLS).index(base.protocol))
    c = st.columns(4)
    watched = MONITOR_LABELS[watched_metric(base, scale)]
    epochs = c[0].number_input(
        "Epochs (max)", 1, 500, base.epochs, step=1,
        help=f"Training stops earlier when {watched.lower()} has not improved for "
             f"{base.early_stopping_patience} epoch(s), and keeps the epoch where it was best.")
    batch_size = c[1].selectbox("Batch size (rows)", BATCH_SIZES,
                                index=BATCH_SIZES.index(base.batch_size)
                                if base.batch_size in BATCH_SIZES else 0,
                                help="Training rows per step, sampled negatives included: with "
                                     "4 + 4 negatives per event, 1024 rows hold 113 events.")
    embedding_dim = c[2].selectbox("Embedding size per feature", EMBED_DIMS,
                                   index=EMBED_DIMS.index(base.embedding_dim)
                                   if base.embedding_dim in EMBED_DIMS else 0)
    threshold = c[3].number_input(
        "Like threshold (rating >)", value=float(base.label_threshold), step=0.5,
        disabled=implicit,
        help="A rating strictly above this counts as a like (a positive). Below the lowest "
             "rating (the audience preset's 0) every rating is a positive, and sampled unseen "
             "items are the negatives. Not used for implicit data.")
    c = st.columns(2)
    user_hidden = c[0].text_input("User tower layers", ", ".join(map(str, base.user_hidden)),
                                  help="Sizes of the user tower's layers, e.g. 128, 64")
    item_hidden = c[1].text_input("Item tower layers", ", ".join(map(str, base.item_hidden)),
                                  help="Both towers must end in the same size")
    with st.expander("Advanced"):
        a = st.columns(6)
        lr = a[0].number_input("Learning rate", 1e-5, 1.0, float(base.learning_rate),
                               format="%.4f", step=1e-4)
        patience = a[1].number_input("Early-stop patience (epochs)", 1, 100,
                                     base.early_stopping_patience)
        history_len = a[2].number_input("History length (items)", 1, 500, base.history_len)
        seed = a[3].number_input("Random seed", 0, 2**31 - 1, base.seed)
        precision = a[4].selectbox(
            "Arithmetic", list(PRECISIONS), index=list(PRECISIONS).index(base.precision),
            format_func=PRECISIONS.get,
            help="The towers' matrix products while training. Auto uses bfloat16 where this "
                 "CPU multiplies it natively (AVX512-BF16 or AMX), else float32. bfloat16 "
                 "trains 1.3-1.9x faster at the same accuracy; weights and the stored "
                 "embeddings are float32 either way.")
        workers = a[5].number_input(
            "Local workers", 1, max(1, os.cpu_count() or 1), 1,
            help="Training processes on this machine (torch.distributed data parallel: each "
                 "takes its share of every batch). 1 trains in one process; more only helps "
                 "with a free core per worker.")
    launch = st.form_submit_button("Start training", type="primary")

if launch:
    try:
        cfg = base.with_(
            objective=objective, protocol=protocol, epochs=int(epochs),
            batch_size=int(batch_size), embedding_dim=int(embedding_dim),
            label_threshold=float(threshold),
            user_hidden=parse_layers(user_hidden, "User tower layers"),
            item_hidden=parse_layers(item_hidden, "Item tower layers"),
            learning_rate=float(lr), early_stopping_patience=int(patience),
            history_len=int(history_len), seed=int(seed), precision=str(precision),
        )
        run_id = jobs.start_training(widgets.db_url(), ds_id, cfg, workers=int(workers))
    except widgets.CORE_ERRORS as exc:
        widgets.show_error(exc, what="Cannot start training")
    else:
        watch = st.session_state.setdefault("train_watch", [])
        watch.append(run_id)
        st.success(f"Run {run_id} started in the background. You can leave this page; it keeps "
                   f"training.\n\n{describe_objective(cfg, scale)}.",
                   icon=":material/rocket_launch:")

st.subheader("Training jobs")
st.caption("Updates every few seconds. Jobs run in their own processes: reloading the page or "
           "closing the browser does not stop them.")
widgets.live_progress(st.session_state.get("train_watch", []), key="train")

ended = [r for r in store.list_runs() if not r.active]
if ended:
    st.subheader("Recently finished")
    for r in ended[:5]:
        line = (f"{widgets.status_label(r.status)} · Run {r.id} on "
                f"{widgets.md(r.dataset_name)} ({r.preset}/{r.objective}/{r.protocol})")
        if r.succeeded:
            s = widgets.summary_of(r)
            st.markdown(f"{line} · test AUC **{widgets.fmt_metric(s.get('test_auc'))}** · "
                        f"{widgets.fmt_duration(r.duration_s)}")
        else:
            st.markdown(line)
            if r.error:
                with st.expander(f"Why run {r.id} {r.status}"):
                    st.code(r.error, language=None)
    st.page_link(widgets.PAGES["runs"], label="Compare runs on the Runs page",
                 icon=":material/arrow_forward:")
