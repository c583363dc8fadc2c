"""Shared UI pieces of the audience explorer (with the pages, the only code importing streamlit).

Pages stay thin: they get the store with :func:`get_store`, pick a dataset or run with the
pickers here, format numbers with :func:`fmt_metric`, show problems with :func:`show_error`
and follow background training with :func:`live_progress`. Nothing here imports torch or
umap: pages must render fast.
"""
from __future__ import annotations

import datetime as dt
import html
import logging
import os
import re
from typing import Any, Iterable, Sequence

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from dssm_core import jobs
from dssm_core.config import MONITOR_LABELS, kept_epoch
from dssm_core.pipeline import peer_standing, peer_verdict
from dssm_core.progress import STAGES, stage_label, stage_number
from dssm_core.dataset import DataValidationError
from dssm_core.records import DatasetInfo, RunInfo, RunStatus
from dssm_core.store import StoreError

log = logging.getLogger(__name__)

#: How often the live-progress fragment polls the store, in seconds.
POLL_SECONDS = 2.0
#: Env switch: set DSSM_DEMO=off to stop the home page creating and training the demo.
DEMO_ENV = "DSSM_DEMO"

#: Plain-text status marks (emoji fonts are not everywhere; these render in any font).
STATUS_MARKS = {
    RunStatus.QUEUED: "…", RunStatus.RUNNING: "▶", RunStatus.SUCCEEDED: "✓",
    RunStatus.FAILED: "✗", RunStatus.CANCELLED: "■",
}

#: What the core raises for a problem a person can act on (bad file, unknown id, bad setting,
#: unreadable file): pages catch these and show them; anything else is a bug and propagates.
CORE_ERRORS: tuple[type[BaseException], ...] = (DataValidationError, StoreError, ValueError,
                                                 KeyError, OSError)
#: ... and the store being unreachable (a database URL that does not answer).
STORE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, StoreError, OSError)


# --------------------------------------------------------------------------- user text
#: Characters with a meaning anywhere in Streamlit's Markdown (CommonMark emphasis, links and
#: images, code, HTML, GitHub tables and strike-through, the ``:red[...]``/``:material/x:``
#: directives, LaTeX ``$``, entities, and the dots and colons of bare-URL autolinks such as
#: ``www.example.com``); each is backslash-escaped.
_MD_INLINE = re.compile(r"([\\`*_{}\[\]()<>|~:$&!.])")
#: ... and what means something only at the start of a line (headings, lists, quotes).
_MD_LINE_START = re.compile(r"^(\s*)([#+=>-]|\d+\))")


#: Streamlit's Markdown (remark-gfm) turns bare ``www.x``, ``http://x`` and ``a@b.c`` in the
#: *parsed* text into links, escapes or not: an invisible word joiner breaks each pattern.
_AUTOLINK = re.compile(r"(?i)(www)(?=\.)|(:)(?=//)|(@)")
_WORD_JOINER = "\u2060"


def md(text: Any) -> str:
    """User text (a dataset, run or audience name, a title, an attribute value, a file name)
    made safe to put inside Markdown: shown literally, never as a link, an image, HTML,
    emphasis or a directive. Line breaks become spaces; bare URLs and e-mail addresses get an
    invisible word joiner (U+2060) that keeps them from being linked."""
    s = "" if text is None else str(text)
    s = " ".join(s.splitlines())
    s = _AUTOLINK.sub(lambda m: m.group(0) + _WORD_JOINER, s)
    s = _MD_INLINE.sub(r"\\\1", s)
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), s)


def plot_text(text: Any) -> str:
    """User text made safe for a plotly label (titles, legend names, hover): plotly reads a few
    HTML tags (``<a href>``, ``<b>``...); escaped, they show as typed."""
    return html.escape("" if text is None else str(text), quote=False)

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


def run_duration(run: RunInfo) -> float | None:
    """Seconds from a run's start to its end (or to now while it trains); None if not started."""
    if run.duration_s is not None:
        return float(run.duration_s)
    start = _as_datetime(run.started_at)
    if start is None:
        return None
    end = _as_datetime(run.finished_at) or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (end - start).total_seconds())


def status_label(status: str | None) -> str:
    """``"succeeded"`` -> ``"✓ succeeded"``."""
    s = str(status or "unknown")
    return f"{STATUS_MARKS.get(s, '•')} {s}"


def summary_of(run: RunInfo) -> dict[str, Any]:
    """A run's summary metrics dict (empty until it succeeds)."""
    return dict(run.summary or {})


# --------------------------------------------------------------------------- tables
def datasets_frame(datasets: Sequence[DatasetInfo]) -> pd.DataFrame:
    """The datasets as a display table (plain-word column names)."""
    rows = [
        {
            "ID": d.id,
            "Name": d.name,
            "Format": d.format,
            "Users": d.n_users,
            "Items": d.n_items,
            "Interactions": d.n_interactions,
            "Added (UTC)": fmt_time(d.created_at),
        }
        for d in datasets
    ]
    return pd.DataFrame(rows, columns=["ID", "Name", "Format", "Users", "Items",
                                       "Interactions", "Added (UTC)"])


def runs_frame(runs: Sequence[RunInfo],
               dataset_names: dict[int, str] | None = None) -> pd.DataFrame:
    """The runs as a display table: status, dataset, settings, key metrics, duration."""
    rows = []
    for r in runs:
        s = summary_of(r)
        row = {
            "Run": r.id,
            "Status": status_label(r.status),
            "Dataset": r.dataset_name or (dataset_names or {}).get(r.dataset_id)
            or f"#{r.dataset_id}",
            "Preset": r.preset,
            "Objective": r.objective,
            "Protocol": r.protocol,
        }
        for key, label in KEY_METRICS.items():
            v = s.get(key)
            row[label] = None if v is None else round(float(v), 4)
        row["Against peers"] = peer_standing(s)
        row["Duration"] = fmt_duration(run_duration(r))
        row["Started (UTC)"] = fmt_time(r.started_at or r.created_at)
        rows.append(row)
    cols = ["Run", "Status", "Dataset", "Preset", "Objective", "Protocol",
            *KEY_METRICS.values(), "Against peers", "Duration", "Started (UTC)"]
    return pd.DataFrame(rows, columns=cols)


def show_datasets(datasets: Sequence[DatasetInfo]) -> None:
    """The datasets table (counts with thousands separators)."""
    count = st.column_config.NumberColumn(format="localized")
    st.dataframe(datasets_frame(datasets), hide_index=True, placeholder="—",
                 column_config={"Users": count, "Items": count, "Interactions": count})


def show_runs(runs: Sequence[RunInfo], dataset_names: dict[int, str] | None = None,
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
            "Against peers": st.column_config.TextColumn(
                help="Recall@50 on the run's own test beside popularity and EASE fitted on the "
                     "same split: a model that loses to one of them says so"),
        },
    )


# --------------------------------------------------------------------------- pickers
def dataset_picker(store: Any, *, key: str, label: str = "Dataset") -> int | None:
    """A selectbox over the stored datasets (newest first); returns the id or None if none."""
    datasets = store.list_datasets()
    if not datasets:
        return None
    by_id = {d.id: d for d in datasets}
    ids = sorted(by_id, reverse=True)
    return st.selectbox(
        label, ids, key=key,
        format_func=lambda i: (f"{by_id[i].name} — {fmt_count(by_id[i].n_users)} "
                               f"users, {fmt_count(by_id[i].n_interactions)} interactions"),
    )


def run_label(run: RunInfo, dataset_names: dict[int, str] | None = None) -> str:
    """``"Run 3 · Demo (synthetic) · default/pointwise/T · AUC 0.781"`` (plain text: for
    option lists; wrap it in :func:`md` to put it in Markdown)."""
    name = run.dataset_name or (dataset_names or {}).get(run.dataset_id,
                                                         f"dataset {run.dataset_id}")
    auc = summary_of(run).get("test_auc")
    tail = f" · test AUC {fmt_metric(auc)}" if auc is not None else f" · {run.status}"
    return f"Run {run.id} · {name} · {run.preset}/{run.objective}/{run.protocol}{tail}"


def run_picker(
    store: Any, *, key: str, label: str = "Run",
    statuses: Iterable[str] | None = ("succeeded",), multiple: bool = False,
    default_count: int = 1,
) -> int | list[int] | None:
    """Pick one run (selectbox) or several (multiselect; the newest ``default_count``
    preselected) among runs with the given statuses (None = all). None / [] if there are none.
    """
    allowed = {RunStatus(s) for s in statuses} if statuses is not None else None
    runs = [r for r in store.list_runs() if allowed is None or r.status in allowed]
    names = {d.id: d.name for d in store.list_datasets()}
    by_id = {r.id: r for r in runs}
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

    ``what`` is the page's own words (Markdown); every part of the message that comes from the
    user's data or input (file names, ids, values) is shown as text.
    """
    if isinstance(exc, DataValidationError):
        where = []
        if exc.file:
            where.append(f"file **{md(exc.file)}**")
        if exc.line is not None:
            where.append(f"line **{exc.line}**")
        if exc.column:
            where.append(f"column **{md(exc.column)}**")
        head = f"{what}: the data has a problem"
        if where:
            head += " in " + ", ".join(where)
        st.error(f"{head}.\n\n{md(exc)}\n\nNothing was saved. Fix the file and upload it "
                 "again.", icon=":material/error:")
    elif isinstance(exc, (ValueError, KeyError, LookupError)):
        msg = exc.args[0] if exc.args else str(exc)
        st.error(f"{what}: {md(msg)}", icon=":material/error:")
    else:
        log.exception("unexpected error in the app")
        st.error(f"{what}: unexpected error ({type(exc).__name__}: {md(exc)}). "
                 "The details are in the server log.", icon=":material/error:")


def show_run_error(run: RunInfo) -> None:
    """Why a run failed: the error's first lines as a message, any log excerpt as code."""
    text = str(run.error or "")
    head, _, tail = text.partition("\nLast lines of its log:\n")
    st.error(f"Run {run.id} {run.status}: {md(head)}", icon=":material/cancel:")
    if tail:
        with st.expander("Last lines of the job's log"):
            st.code(tail, language=None)


# --------------------------------------------------------------------------- sidebar
def sidebar() -> None:
    """The shared sidebar: where the store is and how many trainings are running (live)."""
    url = db_url()
    try:
        get_store()
    except STORE_ERRORS as exc:  # the store itself is unreachable: say so, run no page
        log.exception("cannot open the store")
        st.error(f"Cannot open the store at `{store_location(url)}`: {md(exc)}\n\n"
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
def _progress_line(store: Any, run: RunInfo) -> None:
    run_id = run.id
    status = run.status
    total = int(run.epochs_total or run.config.get("epochs") or 0)
    try:
        ep = store.epochs(run_id)
    except ValueError:  # the run was deleted meanwhile
        ep = pd.DataFrame()
    done = int(run.epoch or 0)
    cols = st.columns([3, 2, 2, 2, 1.4])
    cols[0].markdown(f"**Run {run_id}** · {status_label(status)}")
    stage = (run.progress or {}).get("stage")
    if run.active and stage:
        value, text = stage_progress(run.progress, done, total)
        cols[0].progress(value, text=text)
    elif run.active and total:
        text = "starting (loading data)…" if done == 0 else f"epoch {done} of {total} done"
        cols[0].progress(min(1.0, done / total), text=text)
    elif done:
        cols[0].caption(f"{done} epoch(s) trained")
    if status is RunStatus.SUCCEEDED and stage == "maps" and run.progress.get(
            "fraction", 1.0) < 1.0:
        cols[0].caption("computing the embedding maps…")
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
    if run.active:
        if cols[4].button("Cancel", key=f"cancel_{run_id}", help="Stop at the next batch"):
            try:
                jobs.cancel(db_url(), run_id)
                st.toast(f"Run {run_id}: cancel requested")
            except ValueError as exc:
                show_error(exc, what="Cannot cancel")
    if status is RunStatus.FAILED and run.error:
        show_run_error(run)
    elif status is RunStatus.CANCELLED:
        st.warning(f"Run {run_id} was cancelled.", icon=":material/stop_circle:")
    elif status is RunStatus.SUCCEEDED:
        s = summary_of(run)
        st.success(
            f"Run {run_id} finished: test AUC {fmt_metric(s.get('test_auc'))}, log loss "
            f"{fmt_metric(s.get('test_logloss'))}, item→user recall@50 "
            f"{fmt_metric(s.get('i2u_recall@50'))}.", icon=":material/check_circle:")


def stage_progress(progress: dict[str, Any], done: int = 0, total: int = 0
                   ) -> tuple[float, str]:
    """``(value for st.progress, its text)`` of a run's recorded stage (``run.progress``):
    e.g. ``(0.4, "training 40 % · stage 3 of 7 · epoch 2 of 5 done")``."""
    fraction = min(1.0, max(0.0, float(progress.get("fraction") or 0.0)))
    stage = progress.get("stage")
    text = (f"{stage_label(stage)} {100 * fraction:.0f} % · stage {stage_number(stage)} "
            f"of {len(STAGES)}")
    if stage == "train" and total:
        text += f" · epoch {done} of {total} done"
    if progress.get("message"):
        text += f" · {progress['message']}"
    return fraction, text


@st.fragment(run_every=POLL_SECONDS)
def live_progress(watch: Sequence[int] = (), *, key: str = "live") -> None:
    """Status, epoch, loss and validation AUC of the active runs plus ``watch``, refreshed
    every :data:`POLL_SECONDS` from the store (the training itself runs in other processes).
    When a run ends, the whole page reruns once so tables elsewhere catch up.
    """
    store = get_store()
    runs = {r.id: r for r in store.list_runs()}
    # A job that died while we watch (kill -9, crash) is marked failed right away.
    if any(r.active and not jobs.run_alive(r) for r in runs.values()):
        jobs.reap_orphans(store)
        runs = {r.id: r for r in store.list_runs()}
    active = sorted(i for i, r in runs.items() if r.active)
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
    """User ids from pasted text or an uploaded file (``audience.parse_id_text``)."""
    from dssm_core import audience

    return audience.parse_id_text(data)


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


def show_peer_verdict(summary: dict[str, Any]) -> None:
    """A plain warning per direction and peer where a simple peer beat the run's model on its
    own test (nothing when it wins everywhere)."""
    for sentence in peer_verdict(summary):
        st.warning(sentence + " Consider that peer's audience, or more data and epochs.",
                   icon=":material/warning:")

