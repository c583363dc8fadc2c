"""Progress of a training run: the stages in order, the store's record, the CLI's stderr."""
from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import create_engine, inspect, text

from dssm_core import cli, pipeline
from dssm_core.config import preset
from dssm_core.progress import STAGES, Reporter, Throttled, stage_label, stage_number
from dssm_core.store import SCHEMA_VERSION, Store, StoreError

FAST = dict(epochs=2, batch_size=256, embedding_dim=8, user_hidden=(32, 16),
            item_hidden=(32, 16), history_len=10, precision="float32")


def _check_stages(seen: list[tuple[str, float]], expected: list[str]) -> None:
    """Stages in ``expected`` order (each one contiguous), fractions in [0, 1], never lower
    within a stage, each stage ending at 1."""
    order = [s for i, (s, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != s]
    assert order == expected
    for stage in expected:
        fr = [f for s, f in seen if s == stage]
        assert all(0.0 <= f <= 1.0 for f in fr)
        assert fr == sorted(fr), (stage, fr)
        assert fr[-1] == 1.0


def test_reporter_clamps_keeps_stages_monotone_and_splits_parts() -> None:
    got: list[tuple[str, float, str | None]] = []
    rep = Reporter(lambda s, f, m: got.append((s, f, m)))
    rep("train", 0.5)
    rep("train", 0.25)                       # never back: stays 0.5
    rep("train", 7.0, "x")                   # clamped to 1
    tick = rep.part("evaluate", 0.4, 1.0)
    tick(1, 4)                               # 0.4 + 0.6 * 1/4 = 0.55
    tick(0, 0)                               # nothing to do: the part's end
    assert got == [("train", 0.5, None), ("train", 0.5, None), ("train", 1.0, "x"),
                   ("evaluate", pytest.approx(0.55), None), ("evaluate", 1.0, None)]
    with pytest.raises(ValueError, match="unknown progress stage"):
        rep("dance", 0.1)
    Reporter(None)("load", 0.3)              # no callback: nothing happens, nothing raised
    assert stage_label("embed") == "embedding users and items" and stage_label("x") == "x"
    assert stage_number("load") == 1 and stage_number("maps") == len(STAGES) == 7
    assert stage_number(None) == 0


def test_throttled_passes_new_stages_and_ends_and_waits_within_a_stage() -> None:
    now = [0.0]
    got: list[tuple[str, float]] = []
    th = Throttled(lambda s, f, m: got.append((s, f)), 5.0, clock=lambda: now[0])
    th("train", 0.1)          # new stage: shown
    now[0] = 1.0
    th("train", 0.2)          # 1 s later, same stage: held back
    th("train", 1.0)          # the stage's end: shown
    th("evaluate", 0.0)       # new stage: shown
    now[0] = 6.5
    th("evaluate", 0.3)       # 5.5 s since the last line: shown
    assert got == [("train", 0.1), ("train", 1.0), ("evaluate", 0.0), ("evaluate", 0.3)]


def test_train_reports_each_stage_in_order(tiny_synthetic) -> None:
    seen: list[tuple[str, float]] = []
    cfg = preset("audience", **FAST)          # tunes 2 trials and refits: one "train" stage
    pipeline.train(tiny_synthetic, cfg, progress=lambda s, f, m=None: seen.append((s, f)))
    _check_stages(seen, ["encode", "train", "evaluate", "embed"])
    train = [f for s, f in seen if s == "train"]
    assert len(train) > 3 * 2                 # every epoch, and batches within epochs


def test_run_training_records_the_stage_in_the_store(tiny_synthetic, sqlite_url) -> None:
    store = Store(sqlite_url)
    try:
        ds_id = store.add_dataset(tiny_synthetic)
        seen: list[tuple[str, float]] = []
        cfg = preset("default", **FAST)
        run_id = pipeline.run_training(store, ds_id, cfg, project=False,
                                       progress=lambda s, f, m=None: seen.append((s, f)))
        _check_stages(seen, ["load", "encode", "train", "evaluate", "embed", "store"])
        assert store.get_run(run_id).progress == {"stage": "store", "fraction": 1.0,
                                                  "message": None}
        store.set_progress(run_id, "maps", 1.7, "user map")       # fraction clamped
        assert store.get_run(run_id).progress == {"stage": "maps", "fraction": 1.0,
                                                  "message": "user map"}
        with pytest.raises(StoreError, match="no run with id 999"):
            store.set_progress(999, "load", 0.0)
    finally:
        store.dispose()


def test_a_schema_3_store_gets_the_progress_column(sqlite_url) -> None:
    Store(sqlite_url).dispose()
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs DROP COLUMN progress"))
        conn.execute(text("UPDATE schema_version SET version = 3"))
    engine.dispose()
    store = Store(sqlite_url)
    try:
        assert "progress" in {c["name"] for c in inspect(store.engine).get_columns("runs")}
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_version")).scalar() \
                == SCHEMA_VERSION == 5
    finally:
        store.dispose()


def test_cli_progress_goes_to_stderr_as_lines_never_to_stdout(tiny_synthetic, sqlite_url,
                                                              capsys) -> None:
    store = Store(sqlite_url)
    ds_id = store.add_dataset(tiny_synthetic)
    store.dispose()
    fast = json.dumps({k: v for k, v in FAST.items() if k != "epochs"})
    rc = cli.main(["train", "--db", sqlite_url, "--dataset-id", str(ds_id), "--preset",
                   "default", "--epochs", "1", "--no-project", "--config-json", fast])
    out, err = capsys.readouterr()
    assert rc == 0, err
    # stderr is no terminal here: plain lines, one at least per stage (its end), no 0 %
    for n, stage in enumerate(("loading data", "encoding features", "training", "evaluating",
                               "embedding users and items", "storing the run"), start=1):
        assert f"progress: {stage} 100% (stage {n}/7)" in err
    assert "progress: encoding features  50% (stage 2/7)" in err
    assert "  0% (stage" not in err
    assert "\r" not in err
    assert json.loads(out.strip().splitlines()[-1])["run_id"] >= 1
    assert "progress:" not in out and len(out.strip().splitlines()) == 1


def test_cli_progress_bar_on_a_terminal_is_redrawn_in_place() -> None:
    buf = io.StringIO()
    now = [0.0]
    bar = cli._ProgressPrinter(buf, tty=True, clock=lambda: now[0])
    bar("train", 0.5)
    bar.line("epoch 1/2 loss 0.5")          # clears the bar, prints the line
    now[0] = 1.0
    bar("train", 1.0)
    bar.close()
    assert buf.getvalue() == (
        "\r[############------------] training  50% (stage 3/7)\x1b[K"
        "\r\x1b[Kepoch 1/2 loss 0.5\n"
        "\r[########################] training 100% (stage 3/7)\x1b[K\n")


def test_cli_progress_lines_in_a_log_only_when_the_percent_moves() -> None:
    buf = io.StringIO()
    now = [0.0]
    log = cli._ProgressPrinter(buf, tty=False, clock=lambda: now[0])
    log("load", 0.0)                          # no 0 % line
    log("load", 1.0)
    log("train", 0.101)
    now[0] = 10.0
    log("train", 0.104)                       # 10 % again: no new line
    now[0] = 20.0
    log("train", 0.2, "epoch 2")
    log("train", 0.25)                        # within 5 s of the last line: held back
    assert buf.getvalue() == ("progress: loading data 100% (stage 1/7)\n"
                              "progress: training  10% (stage 3/7)\n"
                              "progress: training  20% (stage 3/7): epoch 2\n")
