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
#: The item picker lists at most this many items matching the search (and those picked).
MAX_ITEM_OPTIONS = 3_000
AUDIENCE_COLOUR = "#1f77b4"
POPULATION_COLOUR = "#b0b7c3"
SMALL_COLOUR = "#c9ced6"


@st.cache_data(show_spinner=False, max_entries=32)
def _build(url: str, run_id: int, request_key: str, min_group: int,
           _request: audience.AudienceRequest) -> audience.AudienceResult:
    """One audience per (run, request, minimum group); reruns of the page reuse it."""
    return audience.build_audience(widgets.loaded_run(run_id), _request, min_group=min_group)


@st.cache_data(show_spinner=False, max_entries=4)
def _catalogue(url: str, run_id: int) -> pd.DataFrame:
    """The run's items with their genres, year and users so far (``audience.item_catalogue``)."""
    return audience.item_catalogue(widgets.loaded_run(run_id))


@st.cache_data(show_spinner=False, max_entries=64)
def _seen_count(url: str, run_id: int, items: tuple[str, ...]) -> int:
    return audience.seen_count(widgets.loaded_run(run_id), items)


@st.cache_data(show_spinner=False, max_entries=16)
def _filter_options(url: str, run_id: int) -> audience.FilterOptions:
    """What the filters offer for a run, computed once per (store, run)."""
    return audience.filter_options(widgets.loaded_run(run_id), MAX_FILTER_VALUES)


@st.cache_data(show_spinner=False, max_entries=4)
def _item_labels(url: str, run_id: int) -> dict[str, str]:
    """Picker labels (plain text): ``"Star Wars (1977) · id 50 · 583 users"``."""
    cat = _catalogue(url, run_id)
    return {i: (f"{t} · id {i}" if t else f"id {i}") + f" · {n:,} users"
            for i, t, n in zip(cat["item_id"], cat["title"], cat["users"])}


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


def _item_picker(url: str, run_id: int) -> tuple[str, ...]:
    """Search by title/id, genre and year, then pick; each option says how many users it has."""
    cat = _catalogue(url, run_id)
    labels = _item_labels(url, run_id)
    c = st.columns([3, 2, 2])
    q = c[0].text_input("Search titles or ids", key="aud_item_search",
                        placeholder="e.g. Star Wars, or 50")
    genres = c[1].multiselect("Genres (all of)", audience.catalogue_genres(cat),
                              key="aud_item_genres")
    span = audience.catalogue_years(cat)
    years = None
    if span and span[0] < span[1]:
        picked = c[2].slider("Year", span[0], span[1], span, key="aud_item_years")
        years = None if tuple(picked) == tuple(span) else (int(picked[0]), int(picked[1]))
    hits = audience.search_items(cat, q, genres=genres, years=years)
    chosen = [i for i in st.session_state.get("aud_items", []) if i in labels]
    options = list(dict.fromkeys(chosen + hits["item_id"].head(MAX_ITEM_OPTIONS).tolist()))
    if q or genres or years:
        st.caption(f"{widgets.fmt_count(len(hits))} of {widgets.fmt_count(len(cat))} items "
                   "match" + (f"; the {MAX_ITEM_OPTIONS:,} with most users are listed"
                              if len(hits) > MAX_ITEM_OPTIONS else ""))
    items = st.multiselect(
        "Items (one, or several for a campaign)", options, key="aud_items",
        format_func=lambda i: labels.get(i, i), select_all=False,
        placeholder="Type a title or an id…",
        help="Most users first; each item says how many users already interacted with it. "
             "Several items: users close to all of them on average.")
    return tuple(items)


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


def _exclusion_controls(url: str, run_id: int, items: tuple[str, ...], population: int
                        ) -> dict[str, Any]:
    """The two choices that change who can be in the audience, in view, each with its count."""
    out: dict[str, Any] = {"exclude_seen": False, "min_score": None}
    c1, c2 = st.columns(2)
    if items is not None:
        out["exclude_seen"] = c1.checkbox(
            "Leave out users who already interacted with the item(s)",
            value=audience.DEFAULT_EXCLUDE_SEEN, key="aud_exclude_seen",
            help="They found it already: usually not worth paying to reach again.")
        if items:
            n_seen = _seen_count(url, run_id, items)
            c1.caption(f"{widgets.fmt_count(n_seen)} of {widgets.fmt_count(population)} users "
                       f"already interacted: {'left out' if out['exclude_seen'] else 'kept'}.")
    floor = c2.checkbox("Only users whose taste leans towards it (similarity above 0)",
                        value=False, key="aud_floor",
                        help="Without it, a small pool is filled up with users scoring below "
                             "0, who are less alike than unrelated users; a warning counts "
                             "them.")
    out["min_score"] = 0.0 if floor else None
    return out


def _filter_controls(url: str, run_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {"exclude_users": (), "where": {}, "ranges": {}}
    with st.expander("More exclusions and filters", expanded=False):
        up = st.file_uploader("Exclude a list of users (CSV with a user_id column, or one id "
                              "per line)", type=["csv", "txt"], key="aud_exclude_file")
        if up is not None:
            out["exclude_users"] = tuple(widgets.parse_id_list(up.getvalue()))
            st.caption(f"{widgets.fmt_count(len(out['exclude_users']))} ids in the list")
        opts = _filter_options(url, run_id)
        st.markdown("**Only users with** (leave empty for everyone)")
        grid = st.columns(min(3, len(opts.values)) or 1)
        for k, (attr, values) in enumerate(opts.values.items()):
            chosen = grid[k % len(grid)].multiselect(widgets.md(attr), values,
                                                     key=f"aud_where_{attr}")
            if chosen:
                out["where"][attr] = tuple(chosen)
        # Numeric attributes with many values (e.g. age in years): a range.
        for attr, (lo, hi) in opts.ranges.items():
            picked = st.slider(f"{widgets.md(attr)} between", lo, hi, (lo, hi),
                               key=f"aud_range_{attr}")
            if tuple(picked) != (lo, hi):
                out["ranges"][attr] = (float(picked[0]), float(picked[1]))
    return out


def _members_table(res: audience.AudienceResult) -> pd.DataFrame:
    """The members as shown: score 3 decimals, percentile 1 decimal."""
    df = res.members.copy()
    df["score"] = df["score"].round(3)
    df["percentile"] = df["percentile"].round(1)
    return df


def _share_chart(ins: pd.DataFrame, attr: str) -> go.Figure:
    d = ins[ins["attribute"] == attr]
    values = [widgets.plot_text(v) for v in d["value"]]
    fig = go.Figure()
    fig.add_bar(name="Audience", x=values, y=d["audience_share"], marker_color=AUDIENCE_COLOUR,
                hovertemplate="%{x}: %{y:.1f}% of the audience<extra></extra>")
    fig.add_bar(name="All users", x=values, y=d["population_share"],
                marker_color=POPULATION_COLOUR,
                hovertemplate="%{x}: %{y:.1f}% of all users<extra></extra>")
    name = widgets.plot_text(attr)
    fig.update_layout(title=f"Share by {name}", barmode="group", height=380,
                      xaxis_title=name, yaxis_title="Share of users (%)",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
                      margin=dict(l=10, r=10, t=60, b=10))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(ticksuffix="%", rangemode="tozero")
    return fig


def _index_chart(ins: pd.DataFrame, attr: str, min_group: int) -> go.Figure:
    """Index per value, horizontal bars. Values held by fewer than ``min_group`` members are
    hatched and grey (their index rests on few people) and every bar carries its 95 % interval.
    Labels sit outside the bars, with room kept for them (no clipping)."""
    d = ins[ins["attribute"] == attr].sort_values("index")
    small = d["small"].to_numpy(dtype=bool)
    colours = np.where(small, SMALL_COLOUR, np.where(d["index"] >= 100, "#2a9d8f", "#e76f51"))
    labels = [f"{i:.0f}" + (f" (n={n})" if s else "")
              for i, n, s in zip(d["index"], d["audience_count"], small)]
    values = [widgets.plot_text(v) for v in d["value"]]
    fig = go.Figure(go.Bar(
        x=d["index"], y=values, orientation="h",
        marker=dict(color=colours, pattern=dict(shape=np.where(small, "/", ""),
                                                fgcolor="#6b7280", size=6)),
        error_x=dict(type="data", symmetric=False,
                     array=(d["index_high"] - d["index"]).to_numpy(),
                     arrayminus=(d["index"] - d["index_low"]).to_numpy(),
                     color="#9ca3af", thickness=1, width=3),
        text=labels, textposition="outside", cliponaxis=False,
        customdata=np.c_[d["audience_share"], d["population_share"], d["audience_count"],
                         d["index_low"], d["index_high"]],
        hovertemplate=("%{y}: index %{x:.0f} (95 % interval %{customdata[3]:.0f}–"
                       "%{customdata[4]:.0f})<br>%{customdata[2]} members: "
                       "%{customdata[0]:.1f}% of the audience vs %{customdata[1]:.1f}% of all "
                       "users<extra></extra>"),
        showlegend=False))
    fig.add_vline(x=100, line_dash="dash", line_color="#555")
    # the axis follows the bars (and 100), not the intervals: a small group's interval can
    # reach 1,000 and would squash every bar; it runs off the edge instead (hover: its ends)
    top = float(np.nanmax(np.r_[d["index"].to_numpy(), 100.0]))
    name = widgets.plot_text(attr)
    fig.update_layout(
        title=dict(text=f"Index by {name}<br><sup>100 (dashed) = as common as among all "
                        f"users · hatched: fewer than {min_group} members</sup>"),
        height=max(320, 30 * len(d) + 140), xaxis_title="Index (with 95 % interval)",
        yaxis_title=None, margin=dict(l=10, r=40, t=80, b=10))
    # room on the right for the outside labels of the longest bar
    fig.update_xaxes(range=[0, top * 1.35])
    fig.update_yaxes(automargin=True)
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


def _heading(res: audience.AudienceResult) -> str:
    """The result's heading (Markdown; titles shown as text)."""
    if res.item_titles:
        named = [f"**{widgets.md(t or i)}**" for t, i in zip(res.item_titles, res.item_ids)]
        # a campaign of many items: name the first two, count the rest
        names = ", ".join(named) if len(named) <= 3 else (
            f"{', '.join(named[:2])} and {len(named) - 2} more items")
        return f"{widgets.fmt_count(res.size)} users for {names}"
    return (f"{widgets.fmt_count(res.size)} lookalikes of "
            f"{widgets.fmt_count(len(res.request.seed_users))} seed users")


def _pool_line(res: audience.AudienceResult) -> str:
    """``"Eligible pool: 1,606 of 2,000 users (left out: already interacted 394)."``"""
    dropped = {k: v for k, v in res.excluded.items() if v}
    why = ("; left out: " + ", ".join(f"{k} {widgets.fmt_count(v)}" for k, v in dropped.items())
           if dropped else "")
    return (f"Eligible pool: {widgets.fmt_count(res.eligible)} of "
            f"{widgets.fmt_count(res.population)} users{why}. Members and their percentiles "
            "come from this pool.")


def _save_form(store: Any, run_id: int, res: audience.AudienceResult) -> None:
    """Save under a name that follows the audience (its actual size), unless the user typed
    their own."""
    default = res.default_name()
    offered = st.session_state.get("_aud_save_offered")
    if st.session_state.get("aud_save_name") in (None, "", offered):
        st.session_state["aud_save_name"] = default
    st.session_state["_aud_save_offered"] = default
    # not a form: a typed name is committed at once, so a resize keeps it
    cols = st.columns([3, 1], vertical_alignment="bottom")
    name = cols[0].text_input("Save this audience as", key="aud_save_name")
    if cols[1].button("Save audience", key="aud_save"):
        try:
            aud_id = store.save_audience(run_id, name, res.definition(),
                                         res.members[["rank", "user_id", "score"]])
            st.success(f"Saved as audience {aud_id}: “{widgets.md(name.strip())}” "
                       f"({widgets.fmt_count(res.size)} users).", icon=":material/check_circle:")
        except widgets.CORE_ERRORS as exc:
            widgets.show_error(exc, what="Could not save")


def _show_result(store: Any, run_id: int, res: audience.AudienceResult, min_group: int
                 ) -> None:
    st.subheader(_heading(res))
    c = st.columns(4)
    c[0].metric("Audience", widgets.fmt_count(res.size),
                help=f"{res.size / max(res.population, 1) * 100:.1f}% of all users")
    c[1].metric("Eligible pool", widgets.fmt_count(res.eligible),
                help="Users left after exclusions and filters: the audience is the best of "
                     "them.")
    c[2].metric("Similarity cut-off", f"{res.threshold:.3f}",
                help="The lowest cosine similarity in the audience (1 = identical taste; "
                     "below 0 = leans away).")
    c[3].metric("All users", widgets.fmt_count(res.population))
    st.caption(_pool_line(res))
    for w in res.warnings:
        st.warning(widgets.md(w), icon=":material/warning:")

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
                    "Percentile (eligible)", format="%.1f", help=audience.PERCENTILE_HELP),
            })
        st.download_button(
            "⬇️ Download CSV", data=res.to_csv_bytes(), file_name=f"{_file_stub(res)}.csv",
            mime="text/csv", key="aud_download", type="primary",
            help="rank, user_id, score, percentile (within the eligible pool), user "
                 "attributes, run and item ids.")
    with tab_insights:
        ins = res.insights
        if ins.empty:
            st.info("No attributes to describe this audience with.")
        else:
            attrs = list(dict.fromkeys(ins["attribute"]))
            c1, c2 = st.columns([3, 1])
            attr = c1.selectbox("Attribute", attrs, key="aud_insight_attr")
            c2.number_input("Minimum group size", min_value=1, max_value=10_000,
                            value=audience.MIN_GROUP_SIZE, step=5, key="aud_min_group",
                            help="Values held by fewer members are marked: an index over a "
                                 "handful of people swings widely (one user in a small "
                                 "audience can read 200).")
            left, right = st.columns(2)
            left.plotly_chart(_share_chart(ins, attr), key="aud_share_chart")
            right.plotly_chart(_index_chart(ins, attr, min_group), key="aud_index_chart")
            n_small = int(ins.loc[ins["attribute"] == attr, "small"].sum())
            st.caption(f"Minimum group size: {min_group} members. "
                       + (f"{n_small} value(s) of {widgets.md(attr)} have fewer: their index "
                          "is hatched, with its 95 % interval; do not act on it alone."
                          if n_small else "Every value shown has at least that many."))
            with st.expander("All attributes as a table"):
                t = ins.copy()
                for col in ("audience_share", "population_share"):
                    t[col] = t[col].round(1)
                for col in ("index", "index_low", "index_high"):
                    t[col] = t[col].round(0).astype(int)
                st.dataframe(t, hide_index=True, column_config={
                    "audience_count": st.column_config.NumberColumn("Members", format="%d"),
                    "audience_share": st.column_config.NumberColumn("Audience %", format="%.1f"),
                    "population_count": st.column_config.NumberColumn("All users",
                                                                      format="%d"),
                    "population_share": st.column_config.NumberColumn("All users %",
                                                                      format="%.1f"),
                    "index": st.column_config.NumberColumn("Index", format="%d"),
                    "index_low": st.column_config.NumberColumn("Index, 95 % low", format="%d"),
                    "index_high": st.column_config.NumberColumn("Index, 95 % high",
                                                                format="%d"),
                    "small": st.column_config.CheckboxColumn(
                        f"Under {min_group} members")})
    with tab_reach:
        st.plotly_chart(_reach_chart(res), key="aud_reach_chart")
        st.caption("Each point: how many eligible users score at least that similarity. A lower "
                   "cut-off reaches more people who are less alike the query.")
    _save_form(store, run_id, res)


def _compare_saved(store: Any) -> None:
    st.subheader("Compare saved audiences")
    saved = store.list_audiences()
    if len(saved) < 2:
        st.caption("Save two audiences to compare them here.")
        return
    by_id = {a.id: a for a in saved}
    ids = list(by_id)

    def label(i: int) -> str:  # option text: shown as typed
        a = by_id[i]
        return f"{a.name} · {widgets.fmt_count(a.size)} users · run {a.run_id}"

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
    if by_id[a].run_id != by_id[b].run_id:
        st.caption("The two audiences come from different runs; overlap compares user ids.")


# --------------------------------------------------------------------------- page
st.title("Audience")
st.caption("Pick what you advertise; get the users whose taste is closest to it, see who they "
           "are and download them for your ad platform.")

store = widgets.get_store()
run_ids = [r.id for r in store.list_runs() if r.succeeded]
_apply_handoff(run_ids)
run_id = widgets.run_picker(store, key="aud_run")
if run_id is None:
    widgets.empty_state("No trained model yet. Train one first; audiences come from its "
                        "user and item vectors.", page="train", link_label="Train a model")
    st.stop()
run_id = int(run_id)

try:
    run = widgets.loaded_run(run_id)
except widgets.CORE_ERRORS as exc:  # a run whose data is gone or unreadable: keep the page up
    widgets.show_error(exc, what=f"Cannot load run {run_id}")
    st.stop()
population = run.index.size
url = widgets.db_url()
widgets.show_peer_verdict(store.get_run(run_id).summary or {})

mode = st.radio("Find", [MODE_ITEMS, MODE_LOOKALIKE], key="aud_mode", horizontal=True)
request_args: dict[str, Any] = {}
items: tuple[str, ...] | None = None
if mode == MODE_ITEMS:
    items = _item_picker(url, run_id)
    request_args["items"] = items
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
request_args.update(_exclusion_controls(url, run_id, items, population))
request_args.update(_filter_controls(url, run_id))
if not request_args.get("items") and not request_args.get("seed_users"):
    if mode == MODE_ITEMS:
        st.info("Pick one or more items to see their audience.", icon=":material/touch_app:")
    else:
        st.info("Give the ids of users you already know respond well (e.g. past buyers); we "
                "find the users most like them. The seeds themselves are left out.",
                icon=":material/touch_app:")
    _compare_saved(store)
    st.stop()

min_group = int(st.session_state.get("aud_min_group", audience.MIN_GROUP_SIZE))
try:
    request = audience.AudienceRequest(**request_args)
    result = _build(url, run_id, request.key(), min_group, request)
except widgets.CORE_ERRORS as exc:
    widgets.show_error(exc, what="Cannot build this audience")
    _compare_saved(store)
    st.stop()

st.session_state[widgets.CURRENT_AUDIENCE_KEY] = {
    "run_id": run_id, "user_ids": result.members["user_id"].astype(str).tolist(),
    "label": (", ".join(t or i for t, i in zip(result.item_titles, result.item_ids))
              if result.item_ids else f"lookalike of {len(result.request.seed_users)} users"),
}
_show_result(store, run_id, result, min_group)
st.divider()
_compare_saved(store)
