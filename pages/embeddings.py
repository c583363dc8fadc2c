"""Embedding maps: a run's users or items on a 2-D UMAP map of the model's vector space.

Maps are computed in the background right after training and stored per run, so this page
only reads them. For an older run without maps, a button starts ``python -m dssm_core project``
in its own process and the page polls for it. A box or lasso selection of users on the map
can be saved as an audience or sent to the Audience page as lookalike seeds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from dssm_core import audience, jobs
from pages import widgets

widgets.route_through_app()

#: Above this many points the map is drawn with WebGL (Scattergl).
WEBGL_ABOVE = 3_000
#: Categorical colourings keep this many most common values; the rest is "(other)".
MAX_COLOURS = 12
#: A text attribute with more distinct values than this (e.g. zip codes) is not offered.
MAX_TEXT_VALUES = 50
#: Legend labels longer than this are cut (the hover shows the whole value).
LEGEND_CHARS = 40
NONE = "(no colour)"
FIRST_GENRE = audience.FIRST_GENRE
HAS_GENRE = "one genre vs the rest"
OTHER, MISSING = "(other)", "(missing)"
GREY = "#c7cdd6"
HOVER = "%{text}<extra></extra>"


# --------------------------------------------------------------------------- background job
@st.cache_resource(show_spinner=False)
def _jobs() -> dict[tuple[str, int], dict[str, Any]]:
    """Projection processes started by this server: (db url, run id) -> {proc, log, started}."""
    return {}


class _NoMap(LookupError):
    """No map stored yet for (run, kind): raised, not returned, so that it is not cached."""


@st.cache_data(show_spinner=False, max_entries=8)
def _stored_map(url: str, run_id: int, kind: str) -> Any:
    """A stored map (ids, xy, params), read once per (store, run, kind). A missing one raises
    ``_NoMap`` (st.cache_data keeps no exceptions), so a map stored later by the training job
    is picked up on the next rerun."""
    found = widgets.get_store().load_projection(int(run_id), kind)
    if found is None:
        raise _NoMap(kind)
    return found


def _load_map(url: str, run_id: int, kind: str) -> Any:
    try:
        return _stored_map(url, int(run_id), kind)
    except _NoMap:
        return None


def _start_projection(url: str, run_id: int) -> dict[str, Any]:
    """Start ``python -m dssm_core project`` for the run in its own process session."""
    proc, log_file = jobs.start_projection(url, int(run_id))
    job = {"proc": proc, "log": log_file, "started": time.time()}
    _jobs()[(url, int(run_id))] = job
    return job


def _reap_finished_jobs() -> None:
    """Forget projection processes that ended well (polling also reaps the OS zombie);
    failed ones stay listed so the page can show their log."""
    jobs_ = _jobs()
    for key, job in list(jobs_.items()):
        if job["proc"].poll() == 0:
            jobs_.pop(key, None)


def _job_stages(log_file: Path) -> list[dict[str, Any]]:
    stages = []
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return stages
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                stages.append(json.loads(line))
            except ValueError:
                continue
    return stages


@st.fragment(run_every=2.0)
def _projection_progress(store: Any, url: str, run_id: int, kind: str) -> None:
    """Polls the background projection; reruns the page once the map is stored."""
    job = _jobs().get((url, int(run_id)))
    if _load_map(url, run_id, kind) is not None:
        st.rerun(scope="app")
    if job is None:  # the training job computes it (started elsewhere)
        st.progress(0.1, text="The training job is computing the maps…")
        return
    stages = _job_stages(job["log"])
    done = [s["kind"] for s in stages if s.get("stage") == "stored"]
    elapsed = widgets.fmt_duration(time.time() - job["started"])
    rc = job["proc"].poll()
    if rc not in (None, 0):
        tail = "\n".join(job["log"].read_text(errors="replace").splitlines()[-8:])
        st.error(f"Computing the maps failed (exit code {rc}).\n\n```\n{tail}\n```", icon=":material/error:")
        if st.button("Try again", key="emb_retry"):
            _jobs().pop((url, int(run_id)), None)
            st.rerun(scope="app")
        return
    value = 0.05 + 0.45 * len(done)
    text = (f"Computing the UMAP maps in the background ({elapsed}; the first map in a fresh "
            "process also compiles UMAP, about 30 s)…")
    if done:
        text = f"Stored the {' and '.join(done)} map ({elapsed})…"
    st.progress(min(value, 1.0), text=text)


# --------------------------------------------------------------------------- colouring
def _categorical(values: pd.Series) -> pd.Series:
    """Text labels with the MAX_COLOURS - 1 most common kept and the rest pooled as (other)."""
    lab = values.astype(object).where(values.notna(), MISSING).map(str)
    counts = lab.value_counts()
    if len(counts) > MAX_COLOURS:
        keep = set(counts.index[:MAX_COLOURS - 1])
        lab = lab.where(lab.isin(keep), OTHER)
    return lab


def _short(label: str, width: int = LEGEND_CHARS) -> str:
    """A legend label cut to ``width`` characters (a long value would squeeze the map)."""
    return label if len(label) <= width else label[:width - 1] + "…"


def _is_continuous(values: pd.Series) -> bool:
    return (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            and values.nunique(dropna=True) > MAX_COLOURS)


def _colour_options(frame: pd.DataFrame, kind: str) -> list[str]:
    opts = []
    if kind == "item" and FIRST_GENRE in frame.columns:
        opts += [FIRST_GENRE, HAS_GENRE]
    for c in frame.columns:
        if c in ("title", "genres", FIRST_GENRE):
            continue
        col = frame[c]
        if pd.api.types.is_numeric_dtype(col) or col.astype(object).nunique() <= MAX_TEXT_VALUES:
            opts.append(str(c))
    if kind == "user" and audience.FAVOURITE_GENRE in opts:  # most telling first
        opts.remove(audience.FAVOURITE_GENRE)
        opts.insert(0, audience.FAVOURITE_GENRE)
    return opts + [NONE]


def _hover(frame: pd.DataFrame, ids: np.ndarray, kind: str) -> np.ndarray:
    """One hover text per point: the id and the title (items) or the attributes (users).

    One string per point rather than a many-column customdata: plotly deep-copies text arrays
    element by element, so 7 columns of 50k points cost ~0.4 s where one costs ~0.06 s."""
    ids = pd.Series(ids.astype(str), index=frame.index)
    if kind == "item":
        genres = (frame["genres"].map(lambda g: ", ".join(g)) if "genres" in frame
                  else pd.Series("", index=frame.index))
        # user text is escaped: plotly reads <a href>, <b>... in hover labels
        text = ("<b>" + frame["title"].astype(str).map(widgets.plot_text) + "</b><br>item " +
                ids.map(widgets.plot_text) + "<br>" + genres.astype(str).map(widgets.plot_text))
        return text.to_numpy(dtype=str)
    text = "<b>user " + ids.map(widgets.plot_text) + "</b>"
    for c in [c for c in frame.columns if c != "zip"][:6]:
        col = frame[c].astype(object).where(frame[c].notna(), "—").map(str)
        text = text + f"<br>{widgets.plot_text(c)}: " + col.map(widgets.plot_text)
    return text.to_numpy(dtype=str)


def build_map(xy: np.ndarray, ids: np.ndarray, frame: pd.DataFrame, kind: str, colour: str,
              genre: str | None, highlight: set[str] | None, title: str
              ) -> tuple[go.Figure, list[np.ndarray]]:
    """The scatter figure and, per trace, the ids of its points (to resolve selections)."""
    n = len(ids)
    trace_cls = go.Scattergl if n > WEBGL_ABOVE else go.Scatter
    size = 7 if n <= 2_000 else 4 if n <= 20_000 else 3
    hover = _hover(frame, ids, kind)                                     # (N,) text
    ids_u = ids.astype(str)                                              # (N,) customdata
    traces: list[Any] = []
    trace_ids: list[np.ndarray] = []
    legend_title = colour
    if colour == NONE:
        traces.append(trace_cls(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"{kind}s",
                                marker=dict(size=size, color="#4c78a8", opacity=0.75),
                                customdata=ids_u, text=hover, hovertemplate=HOVER))
        trace_ids.append(ids)
    elif colour != HAS_GENRE and _is_continuous(frame[colour]):
        vals = frame[colour].astype(float).to_numpy()
        traces.append(trace_cls(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name=widgets.plot_text(colour),
            showlegend=False,
            marker=dict(size=size, color=vals, colorscale="Viridis", opacity=0.8,
                        colorbar=dict(title=dict(text=widgets.plot_text(colour)))),
            customdata=ids_u, text=hover, hovertemplate=HOVER))
        trace_ids.append(ids)
    else:
        if colour == HAS_GENRE:
            labels = pd.Series(np.where(frame["genres"].map(lambda g: genre in g),
                                        genre, "other genres"), index=frame.index)
            legend_title = "genre"
        else:
            labels = _categorical(frame[colour])
        order = labels.value_counts().index.tolist()
        order = [v for v in order if v not in (OTHER, MISSING, "other genres")] + \
                [v for v in order if v in (OTHER, MISSING, "other genres")]
        palette = qualitative.Plotly if len(order) <= 10 else qualitative.Dark24
        lab = labels.to_numpy()
        for k, value in enumerate(order):
            sel = lab == value
            colour_k = GREY if value in (OTHER, MISSING, "other genres") else \
                palette[k % len(palette)]
            traces.append(trace_cls(
                x=xy[sel, 0], y=xy[sel, 1], mode="markers",
                name=f"{widgets.plot_text(_short(value))} ({int(sel.sum()):,})",
                marker=dict(size=size, color=colour_k, opacity=0.8),
                customdata=ids_u[sel], text=hover[sel], hovertemplate=HOVER))
            trace_ids.append(ids[sel])
    if highlight:
        sel = np.isin(ids.astype(str), list(highlight))
        if sel.any():
            traces.append(trace_cls(
                x=xy[sel, 0], y=xy[sel, 1], mode="markers",
                name=f"current audience ({int(sel.sum()):,} shown)",
                marker=dict(size=size + 6, color="#d62728", symbol="circle-open",
                            line=dict(color="#d62728", width=2.5)),
                customdata=ids_u[sel], text=hover[sel], hovertemplate=HOVER))
            trace_ids.append(ids[sel])
    # One Figure(data=...) call: add_trace would deep-copy every trace's arrays once more.
    fig = go.Figure(data=traces)
    fig.update_layout(
        title=title, height=640, xaxis_title="UMAP 1", yaxis_title="UMAP 2",
        legend=dict(title=dict(text=widgets.plot_text(legend_title)), itemsizing="constant"),
        dragmode="lasso", margin=dict(l=10, r=10, t=60, b=10), plot_bgcolor="#fafbfc")
    fig.update_xaxes(showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, showgrid=False,
                     scaleanchor="x", scaleratio=1)
    return fig, trace_ids


def _selection_actions(store: Any, run: Any, run_id: int, kind: str, chosen: list[str],
                       frame: pd.DataFrame, ids: np.ndarray) -> None:
    if kind == "item":
        titles = frame.set_index(pd.Index(ids.astype(str)))["title"].reindex(chosen)
        st.markdown(f"**{len(chosen):,} items selected:** " +
                    ", ".join(widgets.md(t or i) for i, t in list(zip(chosen, titles))[:12]) +
                    (" …" if len(chosen) > 12 else ""))
        if st.button("Audience for these items →", key="emb_items_to_audience"):
            st.session_state[widgets.AUDIENCE_HANDOFF_KEY] = {"run_id": run_id,
                                                              "items": chosen[:50]}
            st.switch_page("pages/audience.py")
        return
    st.markdown(f"**{len(chosen):,} users selected on the map.**")
    cols = st.columns([3, 1.3, 1.7])
    name = cols[0].text_input("Save the selection as", value=f"Map selection ({len(chosen)} "
                              f"users, run {run_id})", key="emb_sel_name")
    if cols[1].button("Save as audience", key="emb_save_sel"):
        try:
            members = audience.selection_audience(run, chosen)
            aud_id = store.save_audience(run_id, name, {"kind": "map selection",
                                                        "run_id": run_id, "size": len(members)},
                                         members)
            st.success(f"Saved as audience {aud_id}: “{widgets.md(name.strip())}”.",
                       icon=":material/check_circle:")
        except widgets.CORE_ERRORS as exc:
            widgets.show_error(exc, what="Could not save")
    if cols[2].button("Find lookalikes of them →", key="emb_to_lookalike"):
        st.session_state[widgets.AUDIENCE_HANDOFF_KEY] = {"run_id": run_id, "seed_users": chosen}
        st.switch_page("pages/audience.py")


# --------------------------------------------------------------------------- page
st.title("Embedding maps")
st.caption("Each point is a user or an item placed by the model's vectors (UMAP, cosine "
           "metric): points close together have similar taste. Box- or lasso-select users to "
           "save them as an audience or find more like them.")

store = widgets.get_store()
run_id = widgets.run_picker(store, key="emb_run")
if run_id is None:
    widgets.empty_state("No trained model yet. Train one; its maps are drawn right after "
                        "training.", page="train", link_label="Train a model")
    st.stop()
run_id = int(run_id)
url = widgets.db_url()
kind_label = st.radio("Map of", ["Users", "Items"], key="emb_kind", horizontal=True)
kind = "user" if kind_label == "Users" else "item"

_reap_finished_jobs()
found = _load_map(url, run_id, kind)
if found is None:
    job = _jobs().get((url, run_id))
    run_info = store.get_run(run_id)
    trainer_busy = jobs.run_alive(run_info) and job is None
    if job is None and not trainer_busy:
        st.info("This run has no stored map yet (runs trained before maps existed, or the map "
                "step failed). Computing it takes about a minute, in the background: you can "
                "keep working meanwhile.", icon=":material/scatter_plot:")
        if st.button("Compute the maps", key="emb_compute", type="primary"):
            _start_projection(url, run_id)
            st.rerun()
        st.stop()
    _projection_progress(store, url, run_id, kind)
    st.stop()

ids, xy, params = found
ids = np.asarray(ids).astype(str)
try:
    run = widgets.loaded_run(run_id)
except widgets.CORE_ERRORS as exc:
    widgets.show_error(exc, what=f"Cannot load run {run_id}")
    st.stop()
frame = audience.map_frame(run, ids, kind)

if params.get("sampled"):
    st.info(f"This map shows a random sample of **{widgets.fmt_count(params['n_projected'])}** "
            f"of {widgets.fmt_count(params['n_total'])} {kind}s (seed {params.get('seed', 0)}); "
            f"above {widgets.fmt_count(params.get('max_points'))} points only a sample is "
            "projected.", icon=":material/casino:")

c1, c2, c3 = st.columns([2, 2, 2])
options = _colour_options(frame, kind)
colour = c1.selectbox("Colour by", options, key=f"emb_colour_{kind}")
genre = None
if colour == HAS_GENRE:
    all_genres = sorted({g for gs in frame["genres"] for g in gs})
    genre = c2.selectbox("Genre", all_genres, key="emb_genre")
highlight: set[str] | None = None
current = st.session_state.get(widgets.CURRENT_AUDIENCE_KEY)
if kind == "user" and current and int(current.get("run_id", -1)) == run_id:
    if c3.checkbox(f"Highlight the current audience "
                   f"({widgets.fmt_count(len(current['user_ids']))} users)", value=True,
                   key="emb_highlight",
                   help="The audience last built on the Audience page: "
                        f"{widgets.md(current.get('label'))}"):
        highlight = set(current["user_ids"])

noun = "users" if kind == "user" else "items"
title = (f"{widgets.fmt_count(len(ids))} {noun} of run {run_id}"
         + (f", coloured by {widgets.plot_text(genre if colour == HAS_GENRE else colour)}"
            if colour != NONE else ""))
fig, trace_ids = build_map(xy, ids, frame, kind, colour, genre, highlight, title)
event = st.plotly_chart(fig, key=f"emb_map_{run_id}_{kind}", on_select="rerun",
                        selection_mode=("box", "lasso"))
st.caption(f"UMAP of the {kind} tower's vectors: cosine metric, n_neighbors "
           f"{params.get('n_neighbors')}, min_dist {params.get('min_dist')}, seed "
           f"{params.get('seed')}. Neighbourhoods are meaningful; distances between far-apart "
           "clusters and the axes themselves are not.")
chosen = widgets.selected_ids(event, trace_ids)
if chosen:
    _selection_actions(store, run, run_id, kind, chosen, frame, ids)
else:
    st.caption("Tip: drag a box or lasso around points to select them.")
