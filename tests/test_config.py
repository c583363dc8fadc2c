"""TrainConfig: validation a user can trigger, JSON round trip, presets."""
from __future__ import annotations

import json

import pytest

from dssm_core.config import PRESETS, TrainConfig, preset
from dssm_core.features import (DenseFeature, SequenceFeature, SparseFeature, feature_from_dict,
                                feature_to_dict)


def test_round_trip_through_json_is_exact() -> None:
    cfg = preset("audience", epochs=3, user_hidden=(64, 32), item_hidden=(48, 32),
                 id_dropout=0.2, item_to_user_weight=0.5)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.user_hidden == (64, 32) and back.output_dim == 32
    assert back.preset == "audience"  # what the run started from; overrides are in the fields


@pytest.mark.parametrize("changes, word", [
    ({"objective": "listwise"}, "objective"),
    ({"protocol": "X"}, "protocol"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"user_hidden": (64, 16), "item_hidden": (64, 32)}, "same size"),
    ({"user_hidden": ()}, "at least one layer"),
    ({"dropout": 1.0}, "dropout"),
    ({"gamma": 0.0}, "gamma"),
    ({"negatives": -1}, "negatives"),
    ({"id_dropout": 1.0}, "id_dropout"),
    ({"item_to_user_weight": 1.5}, "item_to_user_weight"),
    ({"test_fraction": 1.0}, "test_fraction"),
])
def test_bad_settings_raise_value_error_naming_the_field(changes, word) -> None:
    with pytest.raises(ValueError, match=word):
        TrainConfig(**changes)


def test_unknown_keys_and_presets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown config keys: colour"):
        TrainConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        preset("fast")


def test_presets_are_what_the_docs_say() -> None:
    art = PRESETS["article"]
    assert (art.user_hidden, art.embedding_dim, art.gamma, art.batch_size, art.batch_norm) == (
        (300, 300, 128), 4, 1.0, 256, True)
    aud = PRESETS["audience"]
    # every rating is an interaction (> 0) and 4 unseen items per row are the negatives
    assert aud.label_threshold == 0.0 and aud.explicit_negatives == 4
    assert PRESETS["default"].label_threshold == 3.0  # the article's "rating > 3"


def test_feature_specs_round_trip_and_validate() -> None:
    specs = [SparseFeature("user_id", 10, 8), DenseFeature("user_stats", 3),
             SequenceFeature("hist", 10, 8, max_len=5, pooling="mean", shared_with="item_id")]
    assert [feature_from_dict(json.loads(json.dumps(feature_to_dict(f)))) for f in specs] == specs
    with pytest.raises(ValueError, match="pooling"):
        SequenceFeature("hist", 10, 8, max_len=5, pooling="median")
    with pytest.raises(ValueError, match="vocab_size"):
        SparseFeature("user_id", 0, 8)
    with pytest.raises(ValueError, match="unknown feature kind"):
        feature_from_dict({"kind": "image", "name": "x"})


def test_watched_metric_follows_what_the_run_is_judged_by() -> None:
    from dssm_core.config import PRESETS, watched_metric

    assert watched_metric(PRESETS["audience"], (1.0, 5.0)) == "val_recall@50"   # interacted
    assert watched_metric(PRESETS["audience"], None) == "val_recall@50"         # implicit
    assert watched_metric(PRESETS["default"], (1.0, 5.0)) == "val_auc"          # liked
    assert watched_metric(PRESETS["default"].with_(monitor="val_logloss"), None) == \
        "val_logloss"


def test_kept_epoch_is_the_best_on_the_watched_metric() -> None:
    from dssm_core.config import kept_epoch

    recs = [{"epoch": 1, "val_auc": 0.70, "val_logloss": 0.50},
            {"epoch": 2, "val_auc": 0.74, "val_logloss": 0.52},
            {"epoch": 3, "val_auc": 0.74, "val_logloss": 0.55}]
    assert kept_epoch(recs, "val_auc")["epoch"] == 2                   # first of the ties
    assert kept_epoch(recs, "val_logloss")["epoch"] == 1
    assert kept_epoch(recs, "val_recall@50") is None
