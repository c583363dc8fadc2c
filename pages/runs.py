"""Runs: every training run with its key metrics, learning curves to compare, delete."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dssm_core.records import RunInfo
from dssm_core.pipeline import peer_table
from pages import widgets

widgets.route_through_app()

COLORS = ["#2f6fde", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#5d6d7e", "#c0392b",
          "#27ae60"]
CURVES = {
    "auc": ("AUC (0.5 = guessing, 1 = perfect)", "train_auc", "val_auc"),
    "logloss": ("Log loss (nats per event, lower is better)", "train_logloss", "val_logloss"),
}


def curve_figure(curves: dict[int, pd.DataFrame], labels: dict[int, str], metric: str) -> go.Figure:
    """One metric per epoch for several runs: training dashed, validation solid."""
    y_title, train_col, val_col = CURVES[metric]
    fig = go.Figure()
    for n, (run_id, ep) in enumerate(curves.items()):
        color = COLORS[n % len(COLORS)]
        for col, dash, symbol, part in ((val_col, "solid", "circle", "validation"),
                                        (train_col, "dash", "circle-open", "training")):
            if col not in ep or ep[col].isna().all():
                continue
            fig.add_trace(go.Scatter(
                x=ep["epoch"].tolist(), y=ep[col].tolist(), mode="lines+markers",
                name=f"{labels[run_id]} · {part}",
                line={"color": color, "dash": dash}, marker={"size": 7, "symbol": symbol},
                hovertemplate=f"Run {run_id} {part}<br>epoch %{{x}}<br>%{{y:.4f}}<extra></extra>",
            ))
    fig.update_layout(
        height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": y_title.split(" (")[0] + " per epoch"},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2},
        xaxis={"title": {"text": "Epoch (one pass over the training events)"}, "dtick": 1},
        yaxis={"title": {"text": y_title}},
    )
    return fig


st.title("Runs")
store = widgets.get_store()
flash = st.session_state.pop("_runs_flash", None)
if flash:
    st.success(flash, icon=":material/check_circle:")

runs: list[RunInfo] = store.list_runs()
if not runs:
    widgets.empty_state("No training run yet. Train a model and it will appear here.",
                        page="train", link_label="Train a model")
    st.stop()

datasets = {d.id: d.name for d in store.list_datasets()}
choices = [None] + sorted({r.dataset_id for r in runs}, reverse=True)
only = st.selectbox("Show runs of", choices, key="runs_dataset",
                    format_func=lambda i: "all datasets" if i is None else datasets.get(i, str(i)))
shown = [r for r in runs if only is None or r.dataset_id == only]

widgets.show_runs(shown, datasets)
active = [r for r in shown if r.active]
if active:
    st.caption(f"{len(active)} run(s) still training — follow them on the Train page.")

st.subheader("Learning curves")
by_id = {r.id: r for r in shown}
with_epochs = [i for i in sorted(by_id, reverse=True) if by_id[i].epoch > 0]
if not with_epochs:
    st.caption("Curves appear once a run has finished its first epoch.")
else:
    done = [i for i in with_epochs if by_id[i].succeeded]
    default = done[:1] or with_epochs[:1]
    picked = st.multiselect(
        "Runs to overlay", with_epochs, default=default, key="runs_overlay",
        format_func=lambda i: widgets.run_label(by_id[i], datasets))
    if not picked:
        st.caption("Pick one or more runs above to see their curves.")
    else:
        curves = {i: store.epochs(i) for i in picked}
        labels = {i: f"Run {i}" for i in picked}
        c1, c2 = st.columns(2)
        c1.plotly_chart(curve_figure(curves, labels, "auc"), key="fig_auc")
        c2.plotly_chart(curve_figure(curves, labels, "logloss"), key="fig_logloss")
        st.caption("Solid: validation (events the model did not train on). Dashed: training. "
                   "A widening gap means the model is over-fitting.")

st.subheader("Run details")
detail = st.selectbox("Run", sorted(by_id, reverse=True), key="runs_detail",
                      format_func=lambda i: widgets.run_label(by_id[i], datasets))
run = by_id[detail]
c = st.columns(4)
c[0].metric("Status", widgets.status_label(run.status))
c[1].metric("Epochs trained", widgets.fmt_count(run.epoch))
c[2].metric("Duration", widgets.fmt_duration(widgets.run_duration(run)))
c[3].metric("Started (UTC)", widgets.fmt_time(run.started_at)[:10],
            help=widgets.fmt_time(run.started_at))
if run.error:
    widgets.show_run_error(run)
summary = widgets.summary_of(run)
if summary:
    widgets.show_peer_verdict(summary)
    num = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(pd.DataFrame(peer_table(summary)), hide_index=True, placeholder="—",
                 column_config={"Model": num, "Popularity": num, "EASE": num,
                                "Item mean": num,
                                "Best": st.column_config.TextColumn(help="Who is best on "
                                                                     "this figure")})
    st.caption("Peers are fitted on the same split as the model: popularity (most active "
               "users, most popular items), EASE (item-item closed form, its strength chosen "
               "on validation" + (f": λ = {summary['ease_lambda']:g}" if summary.get(
                   "ease_lambda") else "") + ") and each item's average like-rate (AUC, log "
               "loss)." + (f" {summary['ease_note']}." if summary.get("ease_note") else ""))
    facts = []
    if summary.get("n_train") is not None:
        facts.append(f"trained on {widgets.fmt_count(summary.get('n_train'))} events, "
                     f"validated on {widgets.fmt_count(summary.get('n_val'))}, tested on "
                     f"{widgets.fmt_count(summary.get('n_test'))}")
    if summary.get("best_epoch") is not None:
        facts.append(f"best epoch {summary['best_epoch']} ({summary.get('stopped', '?')} stop)")
    if facts:
        st.caption("; ".join(facts).capitalize() + ".")
    if summary.get("protocol_description"):
        st.caption(f"Protocol {summary.get('protocol')}: {summary['protocol_description']}.")
    with st.expander("Every stored number of this run"):
        st.json(summary)
with st.expander("Settings of this run"):
    st.json(run.config)

with st.expander("Delete a run"):
    sure = st.checkbox(f"Yes, delete run {detail} with its model, embeddings, maps and saved "
                       "audiences. This cannot be undone.", key=f"del_run_sure_{detail}")
    busy = run.active
    if busy:
        st.caption("This run is still training: cancel it on the Train page first.")
    if st.button("Delete run", type="primary", disabled=not sure or busy, key="del_run_go"):
        try:
            store.delete_run(detail)
        except widgets.CORE_ERRORS as exc:
            widgets.show_error(exc, what="Could not delete")
        else:
            st.session_state["_runs_flash"] = f"Deleted run {detail}."
            st.rerun()
