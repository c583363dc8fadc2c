"""Audience: pick an item (or a campaign of several, or a list of seed users), get the users
most similar to it, see who they are, download them, save them, compare saved audiences.

Thin page: the run is loaded once per server (``widgets.loaded_run``) and every action is one
``audience.build_audience`` call, drawn here.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dssm_core import audience
from pages import widgets

widgets.route_through_app()

MODE_ITEMS = "Users for items"
MODE_LOOKALIKE = "Lookalike of a user list"
SIZE_N = "Number of users"
SIZE_PCT = "% of all users"
#: Attributes with at most this many values get a filter box.
MAX_FILTER_VALUES = 30
#: Above this many items the picker lists only the titles matching a search.
MAX_ITEM_OPTIONS = 3_000
AUDIENCE_COLOUR = "#1f77b4"
POPULATION_COLOUR = "#b0b7c3"


@st.cache_resource(show_spinner=False, max_entries=32)
def _build(url: str, run_id: int, request_key: str, _request: audience.AudienceRequest
           ) -> audience.AudienceResult:
    """One audience per (run, request); reruns of the page (any click) reuse it. Read-only."""
    return audience.build_audience(widgets.loaded_run(run_id), _request)


@st.cache_resource(show_spinner=False, max_entries=4)
def _item_catalogue(url: str, run_id: int) -> pd.DataFrame:
    """The run's items: id, title, genres, interactions; most interacted first."""
    run = widgets.loaded_run(run_id)
    ids = pd.Index(run.item_ids)
    counts = run.seen["item_id"].value_counts().reindex(ids).fillna(0).astype(np.int64)
    titles = (run.items["title"].reindex(ids).fillna("").astype(str)
              if "title" in run.items.columns else pd.Series("", index=ids))
    genres = (run.items["genres"].reindex(ids) if "genres" in run.items.columns
              else pd.Series([[]] * len(ids), index=ids))
    cat = pd.DataFrame({"item_id": ids.astype(str), "title": titles.to_numpy(),
                        "genres": [", ".join(g) if isinstance(g, (list, tuple, np.ndarray))
                                   else "" for g in genres],
                        "interactions": counts.to_numpy()})
    return cat.sort_values(["interactions", "item_id"], ascending=[False, True],
                           kind="stable").reset_index(drop=True)


def _item_label(cat: pd.DataFrame) -> dict[str, str]:
    return {i: (f"{t} · id {i}" if t else f"id {i}")
            for i, t in zip(cat["item_id"], cat["title"])}


def _apply_handoff(run_ids: list[int]) -> None:
    """Seeds or items sent from the Embedding maps page: switch mode and fill them in."""
    hand = st.session_state.pop(widgets.AUDIENCE_HANDOFF_KEY, None)
    if not hand:
        return
    if int(hand.get("run_id", -1)) in run_ids:
        st.session_state["aud_run"] = int(hand["run_id"])
    if hand.get("items"):
        st.session_state["aud_mode"] = MODE_ITEMS
        st.session_state["aud_items"] = [str(i) for i in hand["items"]]
        return
    st.session_state["aud_mode"] = MODE_LOOKALIKE
    st.session_state["aud_seeds_text"] = "\n".join(str(u) for u in hand.get("seed_users", []))
    st.session_state["aud_seeds_note"] = (f"{len(hand.get('seed_users', []))} seed users "
                                          "selected on the embedding map.")


def _size_controls(population: int) -> dict[str, Any]:
    c1, c2 = st.columns([1, 2])
    by = c1.radio("Audience size", [SIZE_N, SIZE_PCT], key="aud_size_by", horizontal=False)
    if by == SIZE_N:
        default = min(population, 1_000, max(10, round(population * 0.1)))
        n = c2.number_input("Users", min_value=1, max_value=max(1, population),
                            value=default, step=10 if population < 5_000 else 100,
                            key="aud_top_n",
                            help=f"The run has {widgets.fmt_count(population)} users.")
        return {"top_n": int(n)}
    pct = c2.slider("Share of all users (%)", min_value=0.5, max_value=100.0, value=10.0,
                    step=0.5, key="aud_percent")
    c2.caption(f"≈ {widgets.fmt_count(max(1, round(pct / 100 * population)))} users")
    return {"percent": float(pct)}


@st.cache_data(show_spinner=False, max_entries=16)
def _filter_options(url: str, run_id: int
                    ) -> tuple[dict[str, list[str]], dict[str, tuple[float, float]]]:
    """What the filters offer for a run, computed once per (store, run) rather than on every
    rerun (a scan of every user's attributes): the values of each attribute with at most
    ``MAX_FILTER_VALUES`` of them (and the favourite genre), and ``(lo, hi)`` of the other
    numeric attributes (whole numbers when all values are)."""
    run = widgets.loaded_run(run_id)
    cols = [c for c in run.users.columns
            if run.users[c].astype(object).nunique(dropna=True) <= MAX_FILTER_VALUES]
    filters = {c: run.users[c] for c in cols}
    filters[audience.FAVOURITE_GENRE] = pd.Series(run.favourite_genre)
    values_of = {attr: sorted({str(v) for v in col.dropna().tolist()})
                 for attr, col in filters.items()}
    ranges: dict[str, tuple[float, float]] = {}
    for attr in run.users.columns:
        col = run.users[attr]
        if attr in filters or not pd.api.types.is_numeric_dtype(col) or \
                pd.api.types.is_bool_dtype(col) or col.notna().sum() == 0:
            continue
        lo, hi = float(col.min()), float(col.max())
        if bool(np.all(np.mod(col.dropna(), 1) == 0)):
            lo, hi = int(lo), int(hi)
        if lo != hi:
            ranges[attr] = (lo, hi)
    return values_of, ranges


def _filter_controls(run: Any, items_mode: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"exclude_seen": False, "exclude_users": (), "where": {}}
    with st.expander("Exclusions and filters", expanded=False):
        if items_mode:
            out["exclude_seen"] = st.checkbox(
                "Exclude users who already interacted with the item(s)", value=True,
                key="aud_exclude_seen",
                help="They have seen it already: usually not worth paying to reach again.")
        up = st.file_uploader("Exclude a list of users (CSV with a user_id column, or one id "
                              "per line)", type=["csv", "txt"], key="aud_exclude_file")
        if up is not None:
            out["exclude_users"] = tuple(widgets.parse_id_list(up.getvalue()))
            st.caption(f"{widgets.fmt_count(len(out['exclude_users']))} ids in the list")
        values_of, ranges = _filter_options(widgets.db_url(), int(run.run_id))
        st.markdown("**Only users with** (leave empty for everyone)")
        grid = st.columns(min(3, len(values_of)) or 1)
        for k, (attr, values) in enumerate(values_of.items()):
            chosen = grid[k % len(grid)].multiselect(attr, values, key=f"aud_where_{attr}")
            if chosen:
                out["where"][attr] = tuple(chosen)
        # Numeric attributes with many values (e.g. age in years): a range.
        for attr, (lo, hi) in ranges.items():
            col = run.users[attr]
            picked = st.slider(f"{attr} between", lo, hi, (lo, hi), key=f"aud_range_{attr}")
            if tuple(picked) != (lo, hi):
                inside = col[(col >= picked[0]) & (col <= picked[1])].dropna()
                # the filter compares values as text, as audience.build_audience does
                allowed = tuple(sorted(set(inside.astype(object).map(str))))
                out["where"][attr] = allowed or ("(none)",)
    return out


def _members_table(res: audience.AudienceResult) -> pd.DataFrame:
    """The members as shown: score 3 decimals, percentile 1 decimal."""
    df = res.members.copy()
    df["score"] = df["score"].round(3)
    df["percentile"] = df["percentile"].round(1)
    return df


def _share_chart(ins: pd.DataFrame, attr: str) -> go.Figure:
    d = ins[ins["attribute"] == attr]
    fig = go.Figure()
    fig.add_bar(name="Audience", x=d["value"], y=d["audience_share"], marker_color=AUDIENCE_COLOUR,
                hovertemplate="%{x}: %{y:.1f}% of the audience<extra></extra>")
    fig.add_bar(name="All users", x=d["value"], y=d["population_share"],
                marker_color=POPULATION_COLOUR,
                hovertemplate="%{x}: %{y:.1f}% of all users<extra></extra>")
    fig.update_layout(title=f"Share by {attr}", barmode="group", height=360,
                      xaxis_title=attr, yaxis_title="Share of users (%)",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
                      margin=dict(l=10, r=10, t=60, b=10))
    fig.update_yaxes(ticksuffix="%", rangemode="tozero")
    return fig


def _index_chart(ins: pd.DataFrame, attr: str) -> go.Figure:
    d = ins[ins["attribute"] == attr].sort_values("index")
    colours = np.where(d["index"] >= 100, "#2a9d8f", "#e76f51")
    fig = go.Figure(go.Bar(
        x=d["index"], y=d["value"], orientation="h", marker_color=colours,
        text=d["index"].round(0).astype(int).astype(str), textposition="outside",
        customdata=np.c_[d["audience_share"], d["population_share"]],
        hovertemplate=("%{y}: index %{x:.0f}<br>%{customdata[0]:.1f}% of the audience vs "
                       "%{customdata[1]:.1f}% of all users<extra></extra>"),
        showlegend=False))
    fig.add_vline(x=100, line_dash="dash", line_color="#555",
                  annotation_text="100 = as common as among all users",
                  annotation_position="top")
    fig.update_layout(title=f"Index by {attr} (over 100: over-represented)",
                      height=max(300, 28 * len(d) + 120), xaxis_title="Index",
                      yaxis_title=attr, margin=dict(l=10, r=30, t=60, b=10))
    fig.update_xaxes(rangemode="tozero")
    return fig


def _reach_chart(res: audience.AudienceResult) -> go.Figure:
    r = res.reach
    fig = go.Figure(go.Scatter(
        x=r["size"], y=r["threshold"], mode="lines+markers", name="Eligible users",
        marker=dict(size=5, color=AUDIENCE_COLOUR),
        customdata=r["percent_of_population"],
        hovertemplate=("%{x:,} users score ≥ %{y:.3f}<br>(%{customdata:.1f}% of all users)"
                       "<extra></extra>")))
    fig.add_scatter(x=[res.size], y=[res.threshold], mode="markers", name="This audience",
                    marker=dict(size=13, color="#e63946", symbol="diamond"),
                    hovertemplate=f"This audience: {res.size:,} users, cut-off "
                                  f"{res.threshold:.3f}<extra></extra>")
    fig.update_layout(title="Similarity–reach curve: how many users pass each similarity cut-off",
                      xaxis_title="Audience size (users, log scale)",
                      yaxis_title="Similarity cut-off (cosine)", height=420,
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
                      margin=dict(l=10, r=10, t=70, b=10))
    top = max(int(r["size"].max()) if len(r) else 1, res.size, 1)
    ticks = [m * 10 ** e for e in range(len(str(top)) + 1) for m in (1, 2, 5)
             if m * 10 ** e <= top]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:,}" for t in ticks])
    return fig


def _file_stub(res: audience.AudienceResult) -> str:
    what = "-".join(res.item_ids[:3]) if res.item_ids else "lookalike"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"audience_run{res.run_id}_{what}")[:80]


def _show_result(store: Any, run_id: int, res: audience.AudienceResult) -> None:
    if res.item_titles:
        named = [f"**{t or i}**" for t, i in zip(res.item_titles, res.item_ids)]
        # a campaign of many items: name the first two, count the rest
        names = ", ".join(named) if len(named) <= 3 else (
            f"{', '.join(named[:2])} and {len(named) - 2} more items")
        st.subheader(f"{widgets.fmt_count(res.size)} users for {names}")
    else:
        st.subheader(f"{widgets.fmt_count(res.size)} lookalikes of "
                     f"{widgets.fmt_count(len(res.request.seed_users))} seed users")
    c = st.columns(4)
    c[0].metric("Audience", widgets.fmt_count(res.size),
                help=f"{res.size / max(res.population, 1) * 100:.1f}% of all users")
    c[1].metric("Eligible users", widgets.fmt_count(res.eligible),
                help="Users left after exclusions and filters.")
    c[2].metric("Similarity cut-off", f"{res.threshold:.3f}",
                help="The lowest cosine similarity in the audience (1 = identical taste).")
    c[3].metric("All users", widgets.fmt_count(res.population))
    for w in res.warnings:
        st.warning(w, icon=":material/warning:")
    dropped = {k: v for k, v in res.excluded.items() if v}
    if dropped:
        st.caption("Excluded: " + "; ".join(f"{k}: {widgets.fmt_count(v)}"
                                             for k, v in dropped.items()))

    tab_members, tab_insights, tab_reach = st.tabs(["Members", "Insights", "Reach curve"])
    with tab_members:
        st.dataframe(
            _members_table(res), hide_index=True, key="aud_table",
            column_config={
                "rank": st.column_config.NumberColumn("Rank", format="%d"),
                "user_id": st.column_config.TextColumn("User"),
                "score": st.column_config.NumberColumn(
                    "Score", format="%.3f", help="Cosine similarity to the query (−1 to 1)"),
                "percentile": st.column_config.NumberColumn(
                    "Percentile", format="%.1f",
                    help="Share of all users scoring at most this (100 = best match)"),
            })
        st.download_button(
            "⬇️ Download CSV", data=res.to_csv_bytes(), file_name=f"{_file_stub(res)}.csv",
            mime="text/csv", key="aud_download", type="primary",
            help="rank, user_id, score, percentile, user attributes, run and item ids.")
    with tab_insights:
        ins = res.insights
        if ins.empty:
            st.info("No attributes to describe this audience with.")
        else:
            attrs = list(dict.fromkeys(ins["attribute"]))
            attr = st.selectbox("Attribute", attrs, key="aud_insight_attr")
            left, right = st.columns(2)
            left.plotly_chart(_share_chart(ins, attr), key="aud_share_chart")
            right.plotly_chart(_index_chart(ins, attr), key="aud_index_chart")
            with st.expander("All attributes as a table"):
                t = ins.copy()
                for col in ("audience_share", "population_share"):
                    t[col] = t[col].round(1)
                t["index"] = t["index"].round(0).astype(int)
                st.dataframe(t, hide_index=True, column_config={
                    "audience_share": st.column_config.NumberColumn("Audience %", format="%.1f"),
                    "population_share": st.column_config.NumberColumn("All users %",
                                                                      format="%.1f"),
                    "index": st.column_config.NumberColumn("Index", format="%d")})
    with tab_reach:
        st.plotly_chart(_reach_chart(res), key="aud_reach_chart")
        st.caption("Each point: how many eligible users score at least that similarity. A lower "
                   "cut-off reaches more people who are less alike the query.")

    with st.form("aud_save_form", clear_on_submit=False, border=False):
        cols = st.columns([3, 1])
        default = (f"{res.item_titles[0] or res.item_ids[0]} – top {res.size}"
                   if res.item_ids else f"Lookalike – top {res.size}")
        name = cols[0].text_input("Save this audience as", value=default, key="aud_save_name")
        if cols[1].form_submit_button("Save audience"):
            try:
                aud_id = store.save_audience(run_id, name, res.definition(),
                                             res.members[["rank", "user_id", "score"]])
                st.success(f"Saved as audience {aud_id}: “{name.strip()}”.", icon=":material/check_circle:")
            except ValueError as exc:
                widgets.show_error(exc, what="Could not save")


def _compare_saved(store: Any) -> None:
    st.subheader("Compare saved audiences")
    saved = store.list_audiences()
    if len(saved) < 2:
        st.caption("Save two audiences to compare them here.")
        return
    by_id = {int(a["id"]): a for a in saved}
    ids = list(by_id)

    def label(i: int) -> str:
        a = by_id[i]
        return f"{a['name']} · {widgets.fmt_count(a['size'])} users · run {a['run_id']}"

    c = st.columns(2)
    a = c[0].selectbox("Audience A", ids, index=0, key="aud_cmp_a", format_func=label)
    b = c[1].selectbox("Audience B", ids, index=1, key="aud_cmp_b", format_func=label)
    if a == b:
        st.caption("Pick two different audiences.")
        return
    ov = audience.overlap_saved(store, a, b)
    m = st.columns(4)
    m[0].metric("In both", widgets.fmt_count(ov["common"]))
    m[1].metric("Only in A", widgets.fmt_count(ov["only_a"]))
    m[2].metric("Only in B", widgets.fmt_count(ov["only_b"]))
    m[3].metric("Jaccard overlap", f"{ov['jaccard'] * 100:.1f}%",
                help="Users in both ÷ users in either.")
    if by_id[a]["run_id"] != by_id[b]["run_id"]:
        st.caption("The two audiences come from different runs; overlap compares user ids.")


# --------------------------------------------------------------------------- page
st.title("Audience")
st.caption("Pick what you advertise; get the users whose taste is closest to it, see who they "
           "are and download them for your ad platform.")

store = widgets.get_store()
run_ids = [int(r["id"]) for r in store.list_runs() if r.get("status") == "succeeded"]
_apply_handoff(run_ids)
run_id = widgets.run_picker(store, key="aud_run")
if run_id is None:
    widgets.empty_state("No trained model yet. Train one first; audiences come from its "
                        "user and item vectors.", page="train", link_label="Train a model")
    st.stop()

try:
    run = widgets.loaded_run(int(run_id))
except Exception as exc:  # a run whose data is gone or unreadable: say so, keep the page up
    widgets.show_error(exc, what=f"Cannot load run {run_id}")
    st.stop()
population = run.index.size
url = widgets.db_url()

mode = st.radio("Find", [MODE_ITEMS, MODE_LOOKALIKE], key="aud_mode", horizontal=True)
request_args: dict[str, Any] = {}
if mode == MODE_ITEMS:
    cat = _item_catalogue(url, int(run_id))
    labels = _item_label(cat)
    options = cat["item_id"].tolist()
    if len(options) > MAX_ITEM_OPTIONS:
        q = st.text_input("Search titles or ids", key="aud_item_search",
                          placeholder="e.g. Star Wars, or 50")
        hit = (cat["title"].str.contains(q, case=False, regex=False) | (cat["item_id"] == q)
               if q else pd.Series(True, index=cat.index))
        chosen = [i for i in st.session_state.get("aud_items", []) if i in labels]
        options = list(dict.fromkeys(chosen + cat.loc[hit, "item_id"].head(MAX_ITEM_OPTIONS)
                                     .tolist()))
    items = st.multiselect(
        "Items (one, or several for a campaign)", options, key="aud_items",
        format_func=lambda i: labels.get(i, i),
        placeholder="Type a title or an id…",
        help="Most watched first. Several items: users close to all of them on average.")
    request_args["items"] = tuple(items)
else:
    note = st.session_state.pop("aud_seeds_note", None)
    if note:
        st.info(note, icon=":material/scatter_plot:")
    text = st.text_area("Seed users: paste user ids (comma, space or one per line)",
                        key="aud_seeds_text", height=100)
    up = st.file_uploader("…or upload them (CSV with a user_id column, or one id per line)",
                          type=["csv", "txt"], key="aud_seeds_file")
    seeds = widgets.parse_id_list(text) + (widgets.parse_id_list(up.getvalue()) if up else [])
    seeds = list(dict.fromkeys(seeds))
    if seeds:
        st.caption(f"{widgets.fmt_count(len(seeds))} seed users")
    request_args["seed_users"] = tuple(seeds)

request_args.update(_size_controls(population))
request_args.update(_filter_controls(run, mode == MODE_ITEMS))
if not request_args.get("items") and not request_args.get("seed_users"):
    if mode == MODE_ITEMS:
        st.info("Pick one or more items to see their audience.", icon=":material/touch_app:")
    else:
        st.info("Give the ids of users you already know respond well (e.g. past buyers); we "
                "find the users most like them. The seeds themselves are left out.", icon=":material/touch_app:")
    _compare_saved(store)
    st.stop()

try:
    request = audience.AudienceRequest(**request_args)
    result = _build(url, int(run_id), repr(sorted(request.to_dict().items())), request)
except ValueError as exc:
    widgets.show_error(exc, what="Cannot build this audience")
    _compare_saved(store)
    st.stop()

st.session_state[widgets.CURRENT_AUDIENCE_KEY] = {
    "run_id": int(run_id), "user_ids": result.members["user_id"].astype(str).tolist(),
    "label": (", ".join(t or i for t, i in zip(result.item_titles, result.item_ids))
              if result.item_ids else f"lookalike of {len(result.request.seed_users)} users"),
}
_show_result(store, int(run_id), result)
st.divider()
_compare_saved(store)
