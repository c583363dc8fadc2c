"""Home: what is in the store, the newest runs with their key metrics, and where to go next.

On the very first start (empty store) it adds the synthetic demo dataset and trains it in the
background, so a newcomer sees a trained model within minutes.
"""
from __future__ import annotations

import streamlit as st

from dssm_core import jobs
from pages import widgets

widgets.route_through_app()


@st.cache_resource(show_spinner=False)
def _first_start(url: str) -> tuple[int, int] | None:
    """Once per server and store: create and start training the demo if the store is empty."""
    return jobs.ensure_demo(widgets.get_store())


st.title("Audience explorer")
st.markdown(
    "Train a **two-tower (DSSM) model** on who-watched-what data, then pick the users most "
    "likely to respond to an item — your **ad audience** — see who they are and download them."
)

store = widgets.get_store()
if widgets.demo_enabled():
    try:
        with st.spinner("First start: preparing the demo dataset…"):
            started = _first_start(widgets.db_url())
    except (*widgets.CORE_ERRORS, *widgets.STORE_ERRORS) as exc:  # never a traceback here
        widgets.show_error(exc, what="Could not prepare the demo")
        started = None
    demo_run = None
    if started:
        try:
            demo_run = store.get_run(started[1])
        except ValueError:  # deleted since
            demo_run = None
    if demo_run is not None and demo_run.active:
        st.info(
            "**Welcome!** This is the first start, so we created a demo dataset (synthetic "
            "MovieLens-style data with planted taste groups) and started training a model on "
            "it. Progress is shown below; it takes a minute or two. Meanwhile you can upload "
            "your own data on the Data page.", icon=":material/waving_hand:")

datasets = store.list_datasets()
runs = store.list_runs()
active = [r for r in runs if r.active]
succeeded = [r for r in runs if r.succeeded]
aucs = [widgets.summary_of(r).get("test_auc") for r in succeeded]
aucs = [a for a in aucs if a is not None]

c = st.columns(4)
c[0].metric("Datasets", widgets.fmt_count(len(datasets)))
c[1].metric("Trained models", widgets.fmt_count(len(succeeded)))
c[2].metric("Training now", widgets.fmt_count(len(active)))
c[3].metric("Best test AUC", widgets.fmt_metric(max(aucs) if aucs else None),
            help="Area under the ROC curve on the held-out test period (0.5 = guessing).")

if active or st.session_state.get("_live_seen_home"):
    st.subheader("Training in progress" if active else "Training")
    widgets.live_progress(key="home")

st.subheader("Datasets")
if datasets:
    widgets.show_datasets(datasets)
else:
    widgets.empty_state("No data yet. Upload a MovieLens-style file or zip to get started.",
                        page="data", link_label="Upload data")

st.subheader("Newest runs")
HOME_RUN_COLUMNS = ("Run", "Status", "Dataset", "Preset", "Test AUC", "Item→user recall@50",
                    "Duration", "Started (UTC)")


def _newest_runs(polling: bool) -> None:
    """The five newest runs; redrawn every few seconds while one trains (``polling``), so its
    Duration is the time it has trained so far. When the last one ends the whole page is
    drawn again (the counts above change) and the polling stops."""
    all_runs = store.list_runs()
    if polling and not any(r.get("status") in jobs.ACTIVE_STATUSES for r in all_runs):
        st.rerun(scope="app")
    names = {int(d["id"]): str(d.get("name")) for d in store.list_datasets()}
    newest = sorted(all_runs, key=lambda r: -int(r["id"]))[:5]
    # the settings (objective, protocol) and log loss are on the Runs page; here every
    # column, Started included, fits the page's width
    widgets.show_runs(newest, names, columns=HOME_RUN_COLUMNS)


if runs:
    st.fragment(_newest_runs, run_every=widgets.POLL_SECONDS if active else None)(bool(active))
elif datasets:
    widgets.empty_state("No model trained yet. Pick a dataset and train one.",
                        page="train", link_label="Train a model")
else:
    st.caption("Runs appear here once you train a model.")

st.subheader("Where to go next")
links = [
    ("data", "Data", "upload MovieLens-style files (100K, 1M, latest, any CSV) and save them."),
    ("train", "Train", "train a model on a dataset; it runs in the background."),
    ("runs", "Runs", "compare runs: test AUC, log loss, audience recall, learning curves."),
    ("embeddings", "Embedding maps", "see users and items on a 2-D map of the model's space."),
    ("audience", "Audience", "pick an item, get the users most likely to like it, download CSV."),
]
for page, label, text in links:
    cols = st.columns([1, 4])
    with cols[0]:
        st.page_link(widgets.PAGES[page], label=label, icon=":material/arrow_forward:")
    cols[1].markdown(text)
