"""Shared UI pieces of the audience explorer (with the pages, the only code importing streamlit).

Pages stay thin: they get the store with :func:`get_store`, pick a dataset or run with the
pickers here, format numbers with :func:`fmt_metric`, show problems with :func:`show_error`
and follow background training with :func:`live_progress`. Nothing here imports torch or
umap: pages must render fast.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any, Iterable, Sequence

import pandas as pd
import streamlit as st

from dssm_core import jobs
from dssm_core.config import MONITOR_LABELS, kept_epoch
from dssm_core.dataset import DataValidationError

log = logging.getLogger(__name__)

#: How often the live-progress fragment polls the store, in seconds.
POLL_SECONDS = 2.0
#: Env switch: set DSSM_DEMO=off to stop the home page creating and training the demo.
DEMO_ENV = "DSSM_DEMO"

#: Plain-text status marks (emoji fonts are not everywhere; these render in any font).
STATUS_MARKS = {
    "queued": "…", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "■",
}

#: Summary metrics shown in tables: store key -> column label.
KEY_METRICS = {
    "test_auc": "Test AUC",
    "test_logloss": "Test log loss",
    "i2u_recall@50": "Item→user recall@50",
}

# --------------------------------------------------------------------------- router
# The menu (PAGES, MENU, app_navigation) is defined in pages/__init__.py, which imports nothing
# heavy, so that app.py can draw it before this module's imports (pandas, the store) run.
from pages import MENU, PAGES, app_navigation  # noqa: E402,F401  (re-exported for the pages)
from pages import ROUTED_KEY as _ROUTED_KEY  # noqa: E402


def route_through_app() -> None:
    """Give a page the app's menu and sidebar even when Streamlit ran it without ``app.py``.

    Streamlit treats a top-level ``pages/`` folder as its old automatic multipage mode until the
    main script first calls ``st.navigation``. If a server's first request is a deep link such as
    ``/audience``, it runs ``pages/audience.py`` on its own and lists every file of ``pages/``
    (``widgets`` included) as a page. Then this declares the app's navigation (which also ends
    that mode for the server). If the session has never been through ``app.py``'s router, it
    then reruns at once, so that the page is drawn by the router (page config, sidebar, menu):
    a widget gets another id in a routerless run than under the router, so the user's first
    change to a widget drawn by that routerless run (a picked item, say) was silently dropped
    by the next, routed, run. Otherwise (AppTest's ``switch_page`` runs the page routerless on
    every run, after a first run of ``app.py``) it draws the shared sidebar and the page goes
    on: a rerun there would drop the click that the run carries. Every page calls it first;
    under ``app.py``'s router it does nothing.
    """
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None:
        return
    # Under the automatic mode every file of pages/ is a page, widgets.py included.
    pages = ctx.pages_manager.get_pages().values()
    if any(str(p.get("script_path", "")).endswith("widgets.py") for p in pages):
        routed_before = bool(st.session_state.get(_ROUTED_KEY))
        app_navigation()
        if not routed_before:  # e.g. a deep link as the session's first request
            st.rerun()
        sidebar()


# --------------------------------------------------------------------------- store
def db_url() -> str:
    """The store URL: ``$DSSM_DB_URL``, else the store's default (a SQLite file in ./data)."""
    url = os.environ.get("DSSM_DB_URL")
    if url:
        return jobs.absolute_db_url(url)
    from dssm_core.store import Store

    return jobs.absolute_db_url(Store.default_url())


@st.cache_resource(show_spinner=False)
def _store_for(url: str) -> Any:
    from dssm_core.store import Store

    if url.startswith("sqlite:///"):
        jobs.data_dir(url).mkdir(parents=True, exist_ok=True)
    store = Store(url)
    # App start: jobs left "running" by a server that died are marked failed.
    reaped = jobs.reap_orphans(store)
    if reaped:
        log.warning("marked %d orphaned run(s) failed: %s", len(reaped), reaped)
    return store


def get_store() -> Any:
    """The app's one ``Store`` for the current URL (cached across reruns and sessions)."""
    return _store_for(db_url())


def store_location(url: str | None = None) -> str:
    """The store URL for display, password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url or db_url()).render_as_string(hide_password=True)


def demo_enabled() -> bool:
    """False when ``$DSSM_DEMO`` is off/0/false (tests, or analysts who want an empty store)."""
    return os.environ.get(DEMO_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


# --------------------------------------------------------------------------- formatting
def fmt_metric(value: Any, digits: int = 3) -> str:
    """A metric as text: ``0.7531`` -> ``"0.753"``; missing or NaN -> ``"—"``."""
    if value is None:
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:  # NaN
        return "—"
    return f"{v:.{digits}f}"


def fmt_count(value: Any) -> str:
    """An integer count with thousands separators: ``100000`` -> ``"100,000"``."""
    if value is None:
        return "—"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def fmt_duration(seconds: Any) -> str:
    """Seconds as text: ``42.3`` -> ``"42 s"``, ``125`` -> ``"2 min 5 s"``, None -> ``"—"``."""
    if seconds is None:
        return "—"
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "—"
    if s != s or s < 0:
        return "—"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _as_datetime(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def fmt_time(value: Any) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM`` (UTC); missing -> ``"—"``."""
    t = _as_datetime(value)
    return t.strftime("%Y-%m-%d %H:%M") if t else "—"


def run_duration(run: dict[str, Any]) -> float | None:
    """Seconds from a run's start to its end (or to now while it trains); None if not started."""
    if run.get("duration_s") is not None:
        return float(run["duration_s"])
    start = _as_datetime(run.get("started_at"))
    if start is None:
        return None
    end = _as_datetime(run.get("finished_at")) or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (end - start).total_seconds())


def status_label(status: str | None) -> str:
    """``"succeeded"`` -> ``"✓ succeeded"``."""
    s = status or "unknown"
    return f"{STATUS_MARKS.get(s, '•')} {s}"


def summary_of(run: dict[str, Any]) -> dict[str, Any]:
    """A run's summary metrics dict (empty until it succeeds)."""
    summary = run.get("summary") or {}
    return summary if isinstance(summary, dict) else {}


# --------------------------------------------------------------------------- tables
def datasets_frame(datasets: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The datasets as a display table (plain-word column names)."""
    rows = [
        {
            "ID": d.get("id"),
            "Name": d.get("name"),
            "Format": d.get("format"),
            "Users": d.get("n_users"),
            "Items": d.get("n_items"),
            "Interactions": d.get("n_interactions"),
            "Added (UTC)": fmt_time(d.get("created_at")),
        }
        for d in datasets
    ]
    return pd.DataFrame(rows, columns=["ID", "Name", "Format", "Users", "Items",
                                       "Interactions", "Added (UTC)"])


def runs_frame(runs: Sequence[dict[str, Any]],
               dataset_names: dict[int, str] | None = None) -> pd.DataFrame:
    """The runs as a display table: status, dataset, settings, key metrics, duration."""
    rows = []
    for r in runs:
        s = summary_of(r)
        row = {
            "Run": r.get("id"),
            "Status": status_label(r.get("status")),
            "Dataset": r.get("dataset_name") or (dataset_names or {}).get(r.get("dataset_id"))
            or f"#{r.get('dataset_id')}",
            "Preset": r.get("preset"),
            "Objective": r.get("objective"),
            "Protocol": r.get("protocol"),
        }
        for key, label in KEY_METRICS.items():
            v = s.get(key)
            row[label] = None if v is None else round(float(v), 4)
        row["Duration"] = fmt_duration(run_duration(r))
        row["Started (UTC)"] = fmt_time(r.get("started_at") or r.get("created_at"))
        rows.append(row)
    cols = ["Run", "Status", "Dataset", "Preset", "Objective", "Protocol",
            *KEY_METRICS.values(), "Duration", "Started (UTC)"]
    return pd.DataFrame(rows, columns=cols)


def show_datasets(datasets: Sequence[dict[str, Any]]) -> None:
    """The datasets table (counts with thousands separators)."""
    count = st.column_config.NumberColumn(format="localized")
    st.dataframe(datasets_frame(datasets), hide_index=True, placeholder="—",
                 column_config={"Users": count, "Items": count, "Interactions": count})


def show_runs(runs: Sequence[dict[str, Any]], dataset_names: dict[int, str] | None = None,
              *, columns: Sequence[str] | None = None) -> None:
    """The runs table with metric help texts; missing metrics show as a dash.
    ``columns``: the ``runs_frame`` columns to show, in order (default all)."""
    st.dataframe(
        runs_frame(runs, dataset_names), hide_index=True, placeholder="—",
        column_order=list(columns) if columns is not None else None,
        column_config={
            "Test AUC": st.column_config.NumberColumn(
                format="%.3f", help="Ranking quality on the held-out test period; 0.5 = guessing"),
            "Test log loss": st.column_config.NumberColumn(format="%.3f",
                                                           help="Lower is better"),
            "Item→user recall@50": st.column_config.NumberColumn(
                format="%.3f",
                help="Share of test likes whose user is among the item's top 50 users"),
        },
    )


# --------------------------------------------------------------------------- pickers
def dataset_picker(store: Any, *, key: str, label: str = "Dataset") -> int | None:
    """A selectbox over the stored datasets (newest first); returns the id or None if none."""
    datasets = store.list_datasets()
    if not datasets:
        return None
    by_id = {int(d["id"]): d for d in datasets}
    ids = sorted(by_id, reverse=True)
    return st.selectbox(
        label, ids, key=key,
        format_func=lambda i: (f"{by_id[i].get('name')} — {fmt_count(by_id[i].get('n_users'))} "
                               f"users, {fmt_count(by_id[i].get('n_interactions'))} interactions"),
    )


def run_label(run: dict[str, Any], dataset_names: dict[int, str] | None = None) -> str:
    """``"Run 3 · Demo (synthetic) · default/pointwise/T · AUC 0.781"``."""
    name = run.get("dataset_name") or (dataset_names or {}).get(
        run.get("dataset_id"), f"dataset {run.get('dataset_id')}")
    auc = summary_of(run).get("test_auc")
    tail = f" · test AUC {fmt_metric(auc)}" if auc is not None else f" · {run.get('status')}"
    return (f"Run {run.get('id')} · {name} · {run.get('preset')}/{run.get('objective')}/"
            f"{run.get('protocol')}{tail}")


def run_picker(
    store: Any, *, key: str, label: str = "Run",
    statuses: Iterable[str] | None = ("succeeded",), multiple: bool = False,
    default_count: int = 1,
) -> int | list[int] | None:
    """Pick one run (selectbox) or several (multiselect; the newest ``default_count``
    preselected) among runs with the given statuses (None = all). None / [] if there are none.
    """
    allowed = set(statuses) if statuses is not None else None
    runs = [r for r in store.list_runs() if allowed is None or r.get("status") in allowed]
    names = {int(d["id"]): str(d.get("name")) for d in store.list_datasets()}
    by_id = {int(r["id"]): r for r in runs}
    ids = sorted(by_id, reverse=True)
    if multiple:
        return st.multiselect(label, ids, default=ids[:default_count], key=key,
                              format_func=lambda i: run_label(by_id[i], names))
    if not ids:
        return None
    return st.selectbox(label, ids, key=key, format_func=lambda i: run_label(by_id[i], names))


# --------------------------------------------------------------------------- states
def empty_state(message: str, *, page: str | None = None, link_label: str | None = None,
                icon: str = ":material/info:") -> None:
    """A friendly "nothing here yet" box that says what to do, with a link to where to do it."""
    st.info(message, icon=icon)
    if page:
        st.page_link(PAGES.get(page, page), label=link_label or f"Go to {page}",
                     icon=":material/arrow_forward:")


def show_error(exc: BaseException, *, what: str = "That did not work") -> None:
    """Show a problem as a clear message, never a traceback.

    ``DataValidationError`` names the file, line and column; other ``ValueError``s (bad
    settings) show their message; anything else is logged with its traceback for the
    developer and shown as one line.
    """
    if isinstance(exc, DataValidationError):
        where = []
        if exc.file:
            where.append(f"file **{exc.file}**")
        if exc.line is not None:
            where.append(f"line **{exc.line}**")
        if exc.column:
            where.append(f"column **{exc.column}**")
        head = f"{what}: the data has a problem"
        if where:
            head += " in " + ", ".join(where)
        st.error(f"{head}.\n\n{exc}\n\nNothing was saved. Fix the file and upload it again.",
                 icon=":material/error:")
    elif isinstance(exc, (ValueError, KeyError, LookupError)):
        msg = exc.args[0] if exc.args else str(exc)
        st.error(f"{what}: {msg}", icon=":material/error:")
    else:
        log.exception("unexpected error in the app")
        st.error(f"{what}: unexpected error ({type(exc).__name__}: {exc}). "
                 "The details are in the server log.", icon=":material/error:")


def show_run_error(run: dict[str, Any]) -> None:
    """Why a run failed: the error's first lines as a message, any log excerpt as code."""
    text = str(run.get("error") or "")
    head, _, tail = text.partition("\nLast lines of its log:\n")
    st.error(f"Run {run.get('id')} {run.get('status')}: {head}", icon=":material/cancel:")
    if tail:
        with st.expander("Last lines of the job's log"):
            st.code(tail, language=None)


# --------------------------------------------------------------------------- sidebar
def sidebar() -> None:
    """The shared sidebar: where the store is and how many trainings are running (live)."""
    url = db_url()
    try:
        get_store()
    except Exception as exc:  # the store itself is unreachable: say so, run no page
        log.exception("cannot open the store")
        st.error(f"Cannot open the store at `{store_location(url)}`: {exc}\n\n"
                 "Check the `DSSM_DB_URL` setting (or the `data/` folder) and reload.",
                 icon=":material/error:")
        st.stop()
    with st.sidebar:
        st.caption(f"Store: `{store_location(url)}`")
        _jobs_badge()


@st.fragment(run_every=POLL_SECONDS * 2)
def _jobs_badge() -> None:
    active = jobs.active_runs(get_store())
    if active:
        st.caption(f"▶ {len(active)} training job(s) running — see the Train page")
    else:
        st.caption("No training running")


# --------------------------------------------------------------------------- live progress
def _progress_line(store: Any, run: dict[str, Any]) -> None:
    run_id = int(run["id"])
    status = run.get("status")
    total = int(run.get("epochs_total") or (run.get("config") or {}).get("epochs") or 0)
    try:
        ep = store.epochs(run_id)
    except ValueError:  # the run was deleted meanwhile
        ep = pd.DataFrame()
    done = int(run.get("epoch") or 0)
    cols = st.columns([3, 2, 2, 2, 1.4])
    cols[0].markdown(f"**Run {run_id}** · {status_label(status)}")
    if status in jobs.ACTIVE_STATUSES and total:
        text = "starting (loading data)…" if done == 0 else f"epoch {done} of {total} done"
        cols[0].progress(min(1.0, done / total), text=text)
    elif done:
        cols[0].caption(f"{done} epoch(s) trained")
    last = ep.iloc[-1] if len(ep) else None
    summary = summary_of(run)
    watched = summary.get("monitor") or ("val_recall@50" if "val_recall@50" in ep.columns
                                         else "val_auc")
    kept = kept_epoch(ep.to_dict("records"), watched)
    cols[1].metric("Train loss", fmt_metric(None if last is None else last.get("train_loss")))
    cols[2].metric(MONITOR_LABELS.get(watched, watched) + " (kept epoch)",
                   fmt_metric(None if kept is None else kept.get(watched)),
                   help="Early stopping watches this figure and keeps the epoch where it was "
                        "best" + ("" if kept is None else f": epoch {int(kept['epoch'])}"))
    cols[3].metric("Elapsed", fmt_duration(run_duration(run)))
    if status in jobs.ACTIVE_STATUSES:
        if cols[4].button("Cancel", key=f"cancel_{run_id}", help="Stop at the next batch"):
            try:
                jobs.cancel(db_url(), run_id)
                st.toast(f"Run {run_id}: cancel requested")
            except ValueError as exc:
                show_error(exc, what="Cannot cancel")
    if status == "failed" and run.get("error"):
        show_run_error(run)
    elif status == "cancelled":
        st.warning(f"Run {run_id} was cancelled.", icon=":material/stop_circle:")
    elif status == "succeeded":
        s = summary_of(run)
        st.success(
            f"Run {run_id} finished: test AUC {fmt_metric(s.get('test_auc'))}, log loss "
            f"{fmt_metric(s.get('test_logloss'))}, item→user recall@50 "
            f"{fmt_metric(s.get('i2u_recall@50'))}.", icon=":material/check_circle:")


@st.fragment(run_every=POLL_SECONDS)
def live_progress(watch: Sequence[int] = (), *, key: str = "live") -> None:
    """Status, epoch, loss and validation AUC of the active runs plus ``watch``, refreshed
    every :data:`POLL_SECONDS` from the store (the training itself runs in other processes).
    When a run ends, the whole page reruns once so tables elsewhere catch up.
    """
    store = get_store()
    runs = {int(r["id"]): r for r in store.list_runs()}
    # A job that died while we watch (kill -9, crash) is marked failed right away.
    if any(r.get("status") in jobs.ACTIVE_STATUSES and not jobs.is_alive(r.get("pid"))
           for r in runs.values()):
        jobs.reap_orphans(store)
        runs = {int(r["id"]): r for r in store.list_runs()}
    active = sorted(i for i, r in runs.items() if r.get("status") in jobs.ACTIVE_STATUSES)
    state_key, seen_key = f"_live_active_{key}", f"_live_seen_{key}"
    previous = st.session_state.get(state_key)
    st.session_state[state_key] = active
    # Runs seen training in this session stay listed once they end, with their outcome.
    seen = set(st.session_state.get(seen_key, ())) | set(active)
    st.session_state[seen_key] = sorted(seen)
    shown = sorted((seen | {int(w) for w in watch}) & set(runs), reverse=True)
    if previous is not None and set(previous) - set(active):
        st.rerun()  # a run ended: refresh the whole page (tables, pickers, sidebar)
    if not shown:
        st.caption("No training is running.")
        return
    for run_id in shown:
        _progress_line(store, runs[run_id])


# --------------------------------------------------------------------------- maps & audiences
# (owned by the maps & audiences engineer; used by pages/embeddings.py and pages/audience.py)
#: Session keys shared by the Embedding maps and Audience pages.
CURRENT_AUDIENCE_KEY = "current_audience"   # {"run_id", "user_ids", "label"} of the last audience
AUDIENCE_HANDOFF_KEY = "audience_handoff"   # {"run_id", "seed_users" | "items"}: map -> Audience


@st.cache_resource(show_spinner="Loading the run's embeddings…", max_entries=4)
def _loaded_run(url: str, run_id: int) -> Any:
    from dssm_core import audience

    return audience.load_run(_store_for(url), int(run_id))


def loaded_run(run_id: int) -> Any:
    """The run's vectors, user attributes, titles and history as an ``audience.LoadedRun``,
    loaded once per server (shared by the Embedding maps and Audience pages). Read-only."""
    return _loaded_run(db_url(), int(run_id))


def parse_id_list(data: str | bytes | None) -> list[str]:
    """User ids from pasted text or an uploaded file, in order, without duplicates.

    A file with a ``user_id`` header column (e.g. this app's CSV export) or one id per line
    is read by ``audience.read_user_ids``; pasted text may also separate ids by commas,
    semicolons, tabs or spaces (a leading ``user_id``/``id`` word is dropped).
    """
    from dssm_core import audience

    if data is None:
        return []
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
    text = text.removeprefix("\ufeff")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if "," in first and "user_id" in [c.strip().strip('"') for c in first.split(",")]:
        return audience.read_user_ids(text)
    for sep in (",", ";", "\t", " "):
        text = text.replace(sep, "\n")
    ids = [i.strip("'\"") for i in audience.read_user_ids(text)]
    ids = [i for i in ids if i]
    if ids and ids[0].lower() in ("user_id", "userid", "id", "user"):
        ids = ids[1:]
    return list(dict.fromkeys(ids))


def selected_ids(event: Any, trace_ids: Sequence[Any]) -> list[str]:
    """Ids of the points in a ``st.plotly_chart`` selection event, in selection order, without
    duplicates. ``trace_ids[c][i]`` is the id of point ``i`` of trace (curve) ``c``."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return []
    out = []
    for p in points or []:
        c, i = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if c is None or i is None or not 0 <= c < len(trace_ids) or not 0 <= i < len(trace_ids[c]):
            continue
        out.append(str(trace_ids[c][i]))
    return list(dict.fromkeys(out))


def selection_members(run: Any, user_ids: Sequence[str]) -> pd.DataFrame:
    """Users picked on a map as audience members (``rank, user_id, score``), ranked by the
    cosine of each one's vector to the selection's normalised centroid (ties: index order).
    ``run`` is an ``audience.LoadedRun``; unknown ids raise ValueError naming them."""
    import numpy as np

    rows = run.index.positions(user_ids)
    if len(rows) == 0:
        raise ValueError("the selection holds no users")
    vecs = run.index.matrix_[rows]                                       # (K, D)
    centre = vecs.mean(axis=0)                                           # (D,)
    norm = float(np.linalg.norm(centre))
    scores = vecs @ (centre / norm) if norm > 1e-9 else np.zeros(len(rows), np.float32)  # (K,)
    order = np.lexsort((rows, -scores))
    return pd.DataFrame({"rank": np.arange(1, len(rows) + 1, dtype=np.int64),
                         "user_id": run.index.ids_[rows[order]].astype(str),
                         "score": scores[order].astype(np.float64)})
