"""Model versions: a reader sees only committed versions, the latest is the current model, parts
and metadata come back as saved, and only the newest few versions are kept."""

from datetime import datetime
from pathlib import Path

from chispa import assert_df_equality

from lib.recommend.model_store import COMMITTED, KEEP_VERSIONS, POPULARITY_SCHEMA, ModelStore
from lib.recommend.models import ITEM_NEIGHBOURS_SCHEMA, USER_SCORES_SCHEMA, TrainedModel
from lib.recommend.session_knn import SESSIONS_SCHEMA


def trained(spark, name: str = "ease") -> TrainedModel:
    return TrainedModel(
        name,
        user_scores=spark.createDataFrame([(1, 10, 0.5), (1, None, None)], USER_SCORES_SCHEMA),
        item_neighbours=spark.createDataFrame([(10, 11, 0.25)], ITEM_NEIGHBOURS_SCHEMA),
        popularity=spark.createDataFrame([(10, 1.0), (11, 0.5)], POPULARITY_SCHEMA),
        params={"lambda": 12.5},
        sessions=None,  # a model without past sessions
    )


def test_a_saved_model_loads_back_with_its_parts_and_metadata(spark, tmp_path):
    store = ModelStore(spark, str(tmp_path / "models"))
    assert store.latest_version() is None
    model = trained(spark)
    version = store.save(model, {"interactions": 3, "trained_at": datetime(2024, 1, 1)})
    assert version.endswith("-ease")
    assert store.latest_version() == version
    loaded = store.load(version)
    assert_df_equality(loaded.user_scores, model.user_scores, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(loaded.item_neighbours, model.item_neighbours, ignore_nullable=True)
    assert_df_equality(loaded.popularity, model.popularity, ignore_row_order=True, ignore_nullable=True)
    assert loaded.sessions.count() == 0 and loaded.sessions.schema == SESSIONS_SCHEMA
    assert loaded.metadata["params"] == {"lambda": 12.5}
    assert loaded.metadata["interactions"] == 3
    assert loaded.metadata["trained_at"] == "2024-01-01 00:00:00"


def test_an_uncommitted_version_is_invisible_and_old_versions_are_deleted(spark, tmp_path):
    store = ModelStore(spark, str(tmp_path / "models"))
    versions = [store.save(trained(spark, f"m{i}"), {}) for i in range(KEEP_VERSIONS + 1)]
    assert store.versions() == versions[1:]
    assert not (Path(store.root) / versions[0]).exists()
    # A version whose writer died before its marker: a reader keeps the previous model.
    (Path(store.root) / versions[-1] / COMMITTED).unlink()
    assert store.latest_version() == versions[-2]
