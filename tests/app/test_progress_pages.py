"""AppTest: a running run's stage and percent (``Store.set_progress``) on Train and Home."""
from __future__ import annotations

from apphelpers import new_app, sleeper
from dssm_core import synthetic

EPOCH = {"epoch": 1, "train_loss": 0.69, "train_auc": 0.61, "train_logloss": 0.69,
         "val_auc": 0.60, "val_logloss": 0.68, "seconds": 1.5}


def _running_run(store, proc) -> int:
    ds = synthetic.generate(n_users=60, n_items=30, n_interactions=600, seed=1)
    ds_id = store.add_dataset(ds, name="tiny demo")
    run_id = store.create_run(ds_id, {"epochs": 5})
    store.mark_running(run_id, proc.pid)
    store.add_epoch(run_id, EPOCH)
    return run_id


def _bars(at) -> list[tuple[int, str]]:
    return [(p.proto.value, p.proto.text) for p in at.get("progress")]


def test_train_and_home_pages_show_a_running_runs_stage_and_percent(app_store) -> None:
    proc = sleeper()
    try:
        run_id = _running_run(app_store, proc)
        app_store.set_progress(run_id, "train", 0.4)
        at = new_app("pages/train.py")
        assert not at.exception
        # st.progress keeps a percent: 0.4 -> 40
        assert (40, "training 40 % · stage 3 of 7 · epoch 1 of 5 done") in _bars(at)
        at = new_app()                                        # Home
        assert not at.exception
        assert (40, "training 40 % · stage 3 of 7 · epoch 1 of 5 done") in _bars(at)
        # the next stage, with its message, as the page polls again
        app_store.set_progress(run_id, "evaluate", 0.25, "test question")
        at = new_app("pages/train.py")
        assert (25, "evaluating 25 % · stage 4 of 7 · test question") in _bars(at)
    finally:
        proc.kill()
        proc.wait()


def test_a_run_without_a_recorded_stage_shows_its_epochs(app_store) -> None:
    proc = sleeper()
    try:
        _running_run(app_store, proc)
        at = new_app("pages/train.py")
        assert not at.exception
        assert (20, "epoch 1 of 5 done") in _bars(at)
    finally:
        proc.kill()
        proc.wait()
