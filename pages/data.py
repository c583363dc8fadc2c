"""Data: upload MovieLens-style data, preview it, save it as a named dataset; list and delete."""
from __future__ import annotations

from pathlib import PurePath
from typing import Any

import pandas as pd
import streamlit as st

from pages import widgets

widgets.route_through_app()

NONE = "— none —"

st.title("Data")
limit_mb = int(st.get_option("server.maxUploadSize"))
st.markdown(
    "Upload who-rated-what data: a **MovieLens** folder zipped the way GroupLens ships it "
    "(100K, 1M, 10M, latest, latest-small, 20M, 25M), one of its files, the article's merged "
    "CSV, or **any CSV/TSV/Parquet** of interactions (you then say which column is which)."
)
st.caption(f"Upload limit: **{limit_mb} MB** per file (set by `server.maxUploadSize` in "
           "`.streamlit/config.toml`). Larger data: use `python -m dssm_core` from a terminal.")

store = widgets.get_store()
flash = st.session_state.pop("_data_flash", None)
if flash:
    st.success(flash, icon=":material/check_circle:")


def _preview(ds: Any) -> None:
    """Detected format, counts, warnings and the first rows of each table."""
    s = ds.summary()
    c = st.columns(4)
    c[0].metric("Detected format", s["format"])
    c[1].metric("Users", widgets.fmt_count(s["n_users"]))
    c[2].metric("Items", widgets.fmt_count(s["n_items"]))
    c[3].metric("Interactions", widgets.fmt_count(s["n_interactions"]))
    scale = ("implicit feedback (every row is a positive)" if ds.rating_scale is None
             else f"ratings {s['rating_scale'][0]:g} to {s['rating_scale'][1]:g}")
    span = s.get("time_span")
    when = ""
    if span:
        when = f"; from {widgets.fmt_time(span[0])} to {widgets.fmt_time(span[1])} (UTC)"
    st.caption(f"{scale}{when}. User attributes: "
               f"{widgets.md(', '.join(s['user_columns']) or 'none')}. Item attributes: "
               f"{widgets.md(', '.join(s['item_columns']) or 'none')}.")
    unrated = int(s.get("n_items_without_interactions") or 0)
    if unrated:
        st.caption(f"Items counts the {widgets.fmt_count(s['n_items'])} items with at least one "
                   f"interaction. The items table lists {widgets.fmt_count(unrated)} more with "
                   "none: a run gives them vectors too (from their attributes), so its item "
                   f"count is {widgets.fmt_count(s['n_items'] + unrated)}.")
    for w in ds.warnings:
        st.warning(widgets.md(w), icon=":material/warning:")
    tabs = st.tabs(["Interactions", "Users", "Items"])
    for tab, frame in zip(tabs, (ds.interactions, ds.users, ds.items)):
        with tab:
            head = frame.head(10).copy()
            if "timestamp" in head:  # unix seconds read better as dates
                head.insert(list(head.columns).index("timestamp"), "time (UTC)",
                            pd.to_datetime(head["timestamp"], unit="s", utc=True)
                            .dt.strftime("%Y-%m-%d %H:%M"))
            for col in head.columns:  # lists (genres) read better joined
                if head[col].map(lambda v: isinstance(v, list)).any():
                    head[col] = head[col].map(lambda v: ", ".join(v) if isinstance(v, list) else v)
            st.dataframe(head, hide_index=True)


def _mapping_form(source: Any, upload_key: str, files: list[str]) -> Any | None:
    """Ask which file and column holds what; a ColumnMapping once submitted, else None."""
    from dssm_core import movielens

    st.info("This looks like a generic table. Tell us which column is which.",
            icon=":material/table_view:")
    files_chosen: dict[str, str | None] = {"interactions_file": None, "users_file": None,
                                           "items_file": None}
    if len(files) > 1:  # several uploads: which is which (outside the form: columns follow)
        c = st.columns(3)
        inter = c[0].selectbox("Interactions file", files, key="map_inter_file")
        rest = [NONE] + [f for f in files if f != inter]
        users = c[1].selectbox("Users table (optional)", rest, key="map_users_file")
        items = c[2].selectbox("Items table (optional)", rest, key="map_items_file")
        files_chosen = {"interactions_file": inter,
                        "users_file": None if users == NONE else users,
                        "items_file": None if items == NONE else items}
    columns = list(movielens.peek_columns(source, file=files_chosen["interactions_file"]))
    # titles and genres come from the items table when there is one
    item_columns = (list(movielens.peek_columns(source, file=files_chosen["items_file"]))
                    if files_chosen["items_file"] else columns)

    def guess(*hints: str, among: list[str] | None = None) -> int | None:
        """Index of the first column whose name contains one of the hints."""
        low = [c.lower() for c in (columns if among is None else among)]
        for hint in hints:
            for i, name in enumerate(low):
                if hint in name:
                    return i
        return None

    with st.form("mapping"):
        c = st.columns(4)
        user = c[0].selectbox("User id column", columns,
                              index=guess("user", "customer", "client", "visitor") or 0)
        item = c[1].selectbox("Item id column", columns,
                              index=guess("item", "movie", "product", "film", "sku") or 0)
        opt = [NONE] + columns
        r = guess("rating", "score", "star", "grade")
        rating = c[2].selectbox("Rating column", opt, index=0 if r is None else r + 1,
                                help="None: implicit feedback, every row is a positive")
        t = guess("timestamp", "time", "date", "when", "ts")
        ts = c[3].selectbox("Timestamp column", opt, index=0 if t is None else t + 1,
                            help="Unix seconds or date text. None: the row order is the time")
        c = st.columns(4)
        item_opt = [NONE] + item_columns
        where = (f" (in {widgets.md(files_chosen['items_file'])})" if files_chosen["items_file"]
                 else "")
        ti = guess("title", among=item_columns)
        title = c[0].selectbox("Item title column" + where, item_opt,
                               index=0 if ti is None else ti + 1,
                               help="Shown in the audience search and the exported CSV")
        g = guess("genre", among=item_columns)
        genres = c[1].selectbox("Genres column" + where, item_opt,
                                index=0 if g is None else g + 1,
                                help="Several genres in one cell, split on the separator; "
                                     "they feed the item tower and the audience insights")
        genre_sep = c[2].text_input("Genre separator", "|", max_chars=3)
        user_attrs: list[str] = []
        item_attrs: list[str] = []
        if not files_chosen["users_file"]:
            user_attrs = st.multiselect(
                "User attribute columns (optional)", columns,
                help="Columns describing the user (age, gender, region...): features of the "
                     "user tower, filters and insights for audiences")
        if not files_chosen["items_file"]:
            item_attrs = st.multiselect(
                "Item attribute columns (optional)", columns,
                help="Further columns describing the item (brand, category...)")
        submitted = st.form_submit_button("Preview with this mapping")
    if submitted:
        st.session_state["_mapping"] = (upload_key, dict(
            user=user, item=item, rating=None if rating == NONE else rating,
            timestamp=None if ts == NONE else ts, title=None if title == NONE else title,
            genres=None if genres == NONE else genres, genre_sep=genre_sep or "|",
            user_attributes=tuple(user_attrs), item_attributes=tuple(item_attrs),
            **files_chosen))
    chosen = st.session_state.get("_mapping")
    if not chosen or chosen[0] != upload_key:
        return None
    return movielens.ColumnMapping(**chosen[1])


def _save(ds: Any, name: str, *, copy: bool = False) -> None:
    """Store the previewed dataset under ``name``; reruns with a message (or shows the error)."""
    try:
        with st.spinner("Saving…"):
            new_id = store.add_dataset(ds, name=name)
    except widgets.CORE_ERRORS as exc:
        widgets.show_error(exc, what="Could not save the dataset")
        return
    _done(f"Saved dataset “{widgets.md(name)}” (id {new_id})"
          f"{' as another copy' if copy else ''}. Train a model on it on the Train page.")


def _done(message: str) -> None:
    """Forget the upload's preview and question, rerun with ``message`` (Markdown) on top."""
    st.session_state["_data_flash"] = message
    st.session_state.pop("_preview", None)
    st.session_state.pop("_data_dup", None)
    st.rerun()


def _confirm_duplicate(ds: Any, dup: dict[str, Any]) -> None:
    """The upload equals a stored dataset: use that one, or store a copy on purpose."""
    try:
        same = store.get_dataset(int(dup["id"]))
    except widgets.CORE_ERRORS:  # deleted meanwhile: nothing to confirm
        st.session_state.pop("_data_dup", None)
        return
    st.warning(f"This data is already stored as “{widgets.md(same.name)}” (id {same.id}, added "
               f"{widgets.fmt_time(same.created_at)} UTC). Saving it again would store a second, "
               "identical copy.", icon=":material/content_copy:")
    c = st.columns(2)
    if c[0].button("Use the stored dataset", key="data_dup_use", type="primary"):
        _done(f"Nothing new stored: “{widgets.md(same.name)}” (id {same.id}) already holds "
              "this data. Train a model on it on the Train page.")
    if c[1].button("Save another copy anyway", key="data_dup_copy"):
        _save(ds, str(dup["name"]), copy=True)


st.subheader("Upload")
ups = st.file_uploader(
    "A file or a .zip (or several files of one dataset)", key="upload",
    accept_multiple_files=True,
    help="MovieLens zips, u.data / ratings.dat / ratings.csv (+ movies/users files), CSV, TSV, "
         "Parquet")
if not ups:
    st.session_state.pop("_preview", None)
    st.session_state.pop("_mapping", None)
else:
    from dssm_core import movielens

    names = [u.name for u in ups]
    shown_name = names[0] if len(ups) == 1 else f"{len(ups)} files"
    source: Any = (ups[0].name, ups[0].getvalue()) if len(ups) == 1 else [
        (u.name, u.getvalue()) for u in ups]
    upload_key = "|".join(u.file_id for u in ups)
    default_name = PurePath(names[0]).stem
    ds = None
    try:
        fmt = movielens.sniff(source)
        mapping = None
        if fmt == "generic":
            mapping = _mapping_form(source, upload_key, names)
        if fmt != "generic" or mapping is not None:
            key = (upload_key, repr(mapping))
            cached = st.session_state.get("_preview")
            if cached and cached[0] == key:
                ds = cached[1]
            else:
                with st.spinner(f"Reading {shown_name}…"):
                    ds = movielens.load(source, mapping=mapping, name=default_name)
                st.session_state["_preview"] = (key, ds)
    except widgets.CORE_ERRORS as exc:
        st.session_state.pop("_preview", None)
        widgets.show_error(exc, what=f"Could not read {widgets.md(shown_name)}")
    if ds is not None:
        st.subheader("Preview")
        _preview(ds)
        with st.form("save"):
            name = st.text_input("Dataset name", value=default_name, max_chars=120)
            save = st.form_submit_button("Save dataset", type="primary")
        if save:
            if not name.strip():
                st.error("Give the dataset a name.", icon=":material/error:")
            else:
                try:
                    same = store.find_same_dataset(ds)
                except widgets.CORE_ERRORS as exc:
                    widgets.show_error(exc, what="Could not save the dataset")
                else:
                    if same is None:
                        _save(ds, name.strip())
                    else:  # the same data is stored already: ask before a second copy
                        st.session_state["_data_dup"] = {"upload": upload_key, "id": same.id,
                                                         "name": name.strip()}
        dup = st.session_state.get("_data_dup")
        if dup and dup["upload"] == upload_key:
            _confirm_duplicate(ds, dup)

st.subheader("Saved datasets")
datasets = store.list_datasets()
if not datasets:
    widgets.empty_state("No dataset saved yet: upload one above.")
else:
    widgets.show_datasets(datasets)
    st.page_link(widgets.PAGES["train"], label="Train a model on a dataset",
                 icon=":material/arrow_forward:")
    with st.expander("Delete a dataset"):
        by_id = {d.id: d for d in datasets}
        pick = st.selectbox("Dataset to delete", sorted(by_id, reverse=True), key="del_ds",
                            format_func=lambda i: f"{by_id[i].name} (id {i})")
        its_runs = store.list_runs(dataset_id=pick)
        busy = [r.id for r in its_runs if r.active]
        if busy:
            st.warning(f"Run(s) {', '.join(map(str, busy))} are training on this dataset. "
                       "Cancel them on the Train page first.", icon=":material/hourglass_top:")
        sure = st.checkbox(
            f"Yes, delete “{widgets.md(by_id[pick].name)}” and its {len(its_runs)} run(s), "
            "with their models, embeddings and audiences. This cannot be undone.",
            key=f"del_ds_sure_{pick}")
        if st.button("Delete dataset", type="primary", disabled=not sure or bool(busy),
                     key="del_ds_go"):
            try:
                store.delete_dataset(pick)
            except widgets.CORE_ERRORS as exc:
                widgets.show_error(exc, what="Could not delete")
            else:
                gone = by_id[pick].name
                st.session_state["_data_flash"] = f"Deleted dataset “{widgets.md(gone)}”."
                st.rerun()
