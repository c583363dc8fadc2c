"""``python -m dssm_core train``: in memory, into a store, reports and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dssm_core import cli

#: Small and quick: the tiny synthetic set is stored first, or read from CSV files.
FAST = '{"batch_size": 256, "embedding_dim": 8, "user_hidden": [32, 16], ' \
       '"item_hidden": [32, 16], "history_len": 10}'


def _write_ml_latest(ds, folder: Path) -> Path:
    """The tiny synthetic set as an ml-latest-small style folder (ratings.csv, movies.csv)."""
    folder.mkdir()
    inter = ds.interactions.rename(columns={"user_id": "userId", "item_id": "movieId"})
    inter["userId"] = inter["userId"].str.lstrip("u").astype(int)
    inter["movieId"] = inter["movieId"].str.lstrip("i").astype(int)
    inter.to_csv(folder / "ratings.csv", index=False)
    items = ds.items[["item_id", "title", "genres"]].copy()
    items["movieId"] = items["item_id"].str.lstrip("i").astype(int)
    items["genres"] = items["genres"].map("|".join)
    items[["movieId", "title", "genres"]].to_csv(folder / "movies.csv", index=False)
    return folder


def test_train_file_in_memory_prints_summary_and_report(tiny_synthetic, tmp_path, capsys
                                                        ) -> None:
    data = _write_ml_latest(tiny_synthetic, tmp_path / "ml")
    report = tmp_path / "report.json"
    rc = cli.main(["train", str(data), "--epochs", "1", "--protocol", "L", "--seed", "3",
                   "--precision", "float32", "--config-json", FAST, "--report", str(report)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["run_id"] is None and summary["protocol"] == "L"
    assert summary["epochs_run"] == 1 and "i2u_recall@50" in summary
    assert summary["precision"] == "float32"
    # the default (audience) preset tunes on validation: one progress line per trial's epoch
    assert err.count("epoch 1/1") == 2
    assert "trial 1/2 epoch 1/1" in err and "trial 2/2 epoch 1/1" in err
    rep = json.loads(report.read_text())
    assert rep["test"]["auc"] == summary["test_auc"]
    assert set(rep["retrieval"]) == {"item_to_user", "user_to_item"}
    assert "recall@100" in rep["baseline_popularity"]["retrieval"]["item_to_user"]
    assert rep["seconds_per_epoch"] > 0 and rep["train_samples_per_second"] > 0


def test_train_into_store_with_a_queued_run(tiny_synthetic, sqlite_url, capsys) -> None:
    from dssm_core.config import preset
    from dssm_core.store import Store

    store = Store(sqlite_url)
    ds_id = store.add_dataset(tiny_synthetic)
    cfg = preset("default", epochs=1, batch_size=256, embedding_dim=8,
                 user_hidden=(32, 16), item_hidden=(32, 16), history_len=10)
    run_id = store.create_run(ds_id, cfg.to_dict(), preset=cfg.preset)
    # what jobs.start_training runs: the whole config as JSON
    rc = cli.main(["train", "--db", sqlite_url, "--dataset-id", str(ds_id), "--run-id",
                   str(run_id), "--config-json", json.dumps(cfg.to_dict()), "--no-project"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert line["run_id"] == run_id and line["dataset_id"] == ds_id
    run = store.get_run(run_id)
    assert run["status"] == "succeeded" and run["summary"]["test_auc"] == line["test_auc"]
    ids, vectors = store.load_embeddings(run_id, "item")
    assert vectors.shape == (len(tiny_synthetic.items), 16)


@pytest.mark.parametrize("argv, message", [
    (["train", "--config-json", "{nope"], "not valid JSON"),
    (["train", "--config-json", "[1]"], "JSON object"),
    (["train", "--config-json", '{"bogus": 1}'], "unknown config keys"),
    (["train", "--preset", "huge"], "unknown preset"),
    (["train", "--dataset-id", "1"], "need --db"),
    (["train", "/no/such/folder"], "no such"),
    (["train", "--epochs", "0"], "epochs must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys) -> None:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
