"""params.yaml: strict keys, cross-field checks, suites and limits."""
from __future__ import annotations

import pytest
import yaml

from pipelines.core.config import ConfigError, load_params


def test_unknown_key_in_params_is_an_error(tmp_path):
    data = yaml.safe_load(open("params.yaml"))
    data["features"]["windws_days"] = [1]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="windws_days"):
        load_params(tmp_path / "p.yaml").features


def _params_with(tmp_path, mutate):
    data = yaml.safe_load(open("params.yaml"))
    mutate(data)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    return load_params(tmp_path / "p.yaml")


def test_a_suite_that_does_not_exist_is_an_error_and_no_suite_must_be_said(tmp_path):
    with pytest.raises(ConfigError, match=r"validate.suites.features: expectations/featres.json does not exist .*false"):
        _params_with(tmp_path, lambda d: d["validate"]["suites"].update(features="expectations/featres.json"))
    assert _params_with(tmp_path, lambda d: d["validate"]["suites"].update(features=False)).validate.suites["features"] is False
    with pytest.raises(ConfigError, match="neither a suite path nor false"):
        _params_with(tmp_path, lambda d: d["validate"]["suites"].update(features=None))


def test_ingest_dataset_threads_is_a_whole_number_and_not_part_of_ingest_s_run_key(tmp_path):
    from pipelines.ingest import run_key

    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="ingest.dataset_threads"):
            _params_with(tmp_path, lambda d, bad=bad: d["ingest"].update(dataset_threads=bad))
    one = _params_with(tmp_path, lambda d: d["ingest"].update(dataset_threads=1))
    base = load_params()
    assert one.ingest.dataset_threads == 1 and base.ingest.dataset_threads == 2
    ds, day = base.dataset("transactions"), base.dataset("transactions").first_date    # no earlier day to read
    files = [("s3://raw/x.csv", b"a,b\n")]
    assert run_key(ds, day, base.storage, one.ingest, files) == run_key(ds, day, base.storage, base.ingest, files)


def test_the_duplicate_window_must_cover_the_features_look_back(tmp_path):
    with pytest.raises(ConfigError, match="duplicate_window_days: 10 is shorter than the features' look-back"):
        _params_with(tmp_path, lambda d: d["ingest"].update(duplicate_window_days=10))
    assert load_params().ingest.duplicate_window_days >= load_params().features.lookback_days
    with pytest.raises(ConfigError, match="services.timeout_s"):
        _params_with(tmp_path, lambda d: d.update(services={"timeout_s": 0}))
    with pytest.raises(ConfigError, match="hard_limits.amount"):
        _params_with(tmp_path, lambda d: d["validate"]["suggest"]["hard_limits"].update(amount=[5, 1]))


def test_lookback_covers_windows_and_label_delay():
    spec = load_params().features
    assert spec.lookback_days == max(30, 30 + 7)


def test_every_section_is_checked_when_the_file_is_loaded_with_the_key_path(tmp_path):
    with pytest.raises(ConfigError, match=r"monitor.psi: unknown key\(s\) \['alrt'\]"):
        _params_with(tmp_path, lambda d: d["monitor"].update(psi={"warn": 0.1, "alrt": 0.2}))
    with pytest.raises(ConfigError, match="monitor.ks: need numbers warn <= alert"):
        _params_with(tmp_path, lambda d: d["monitor"].update(ks={"warn": 0.3, "alert": 0.2}))
    with pytest.raises(ConfigError, match="decide.review_threshold: 0.97 must be below block_threshold 0.95"):
        _params_with(tmp_path, lambda d: d["decide"].update(review_threshold=0.97))
    with pytest.raises(ConfigError, match="train.gap_days: 3 is shorter than the label delay"):
        _params_with(tmp_path, lambda d: d["train"].update(gap_days=3))
    with pytest.raises(ConfigError, match="retrain.window_days: 20 cannot hold the split"):
        _params_with(tmp_path, lambda d: d["retrain"].update(window_days=20))
    with pytest.raises(ConfigError, match=r"features: entities \['merchant'\] are not columns"):
        _params_with(tmp_path, lambda d: d["features"].update(time_since_last=["customer", "merchant"]))
    p = load_params()
    assert p.read == set()                               # the load-time check is not a read by a stage
    assert p.monitor.psi.alert == 0.25 and p.monitor.volume_ratio.low == 0.5 and p.read == {"monitor"}


def test_the_predictions_carry_every_column_decide_reads(tmp_path):
    """decide reads its rule and allow-list columns from the predictions (never the features again):
    a rule on a column score does not carry is refused at load, naming both keys."""
    assert load_params().score.carry_columns == ("amount",)
    for bad in ("amount", ["amount", "amount"], [""], [1], ["amount", "score"]):
        with pytest.raises(ConfigError, match="score.carry_columns"):
            _params_with(tmp_path, lambda d, bad=bad: d["score"].update(carry_columns=bad))
    rule = {"name": "many", "feature": "customer_count_1d", "op": ">", "value": 9, "decision": "review"}
    with pytest.raises(ConfigError, match=r"score.carry_columns: decide.rules/allow_list read \['customer_count_1d'\]"):
        _params_with(tmp_path, lambda d: d["decide"]["rules"].append(rule))
    both = _params_with(tmp_path, lambda d: (d["decide"]["rules"].append(rule),
                                             d["score"].update(carry_columns=["amount", "customer_count_1d"])))
    assert both.score.carry_columns == ("amount", "customer_count_1d")
    keyed = _params_with(tmp_path, lambda d: d["decide"]["allow_list"].update(terminal=["t1"]))   # a key column
    assert keyed.decide.allow_list["terminal"] == ("t1",)


def test_features_timeline_threads_is_a_whole_number_and_not_part_of_the_spec(tmp_path):
    from pipelines.features import spec_hash

    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="features.timeline_threads"):
            _params_with(tmp_path, lambda d, bad=bad: d["features"].update(timeline_threads=bad))
    one = _params_with(tmp_path, lambda d: d["features"].update(timeline_threads=1)).features
    assert one.timeline_threads == 1 and spec_hash(one) == spec_hash(load_params().features)   # how, not what


def test_features_chunk_rows_is_a_whole_number_of_rows_and_not_part_of_the_spec(tmp_path):
    from pipelines.features import spec_hash

    for bad in (0, 999, 2.5, True, "1M"):
        with pytest.raises(ConfigError, match="features.chunk_rows"):
            _params_with(tmp_path, lambda d, bad=bad: d["features"].update(chunk_rows=bad))
    small = _params_with(tmp_path, lambda d: d["features"].update(chunk_rows=5000)).features
    assert small.chunk_rows == 5000 and spec_hash(small) == spec_hash(load_params().features)   # how, not what


def test_features_spill_compression_is_one_of_three_and_not_part_of_the_spec(tmp_path):
    from pipelines.features import spec_hash

    for bad in ("gzip", None, True, ""):
        with pytest.raises(ConfigError, match="features.spill_compression"):
            _params_with(tmp_path, lambda d, bad=bad: d["features"].update(spill_compression=bad))
    assert load_params().features.spill_compression == "none"
    zstd = _params_with(tmp_path, lambda d: d["features"].update(spill_compression="zstd")).features
    assert zstd.spill_compression == "zstd" and spec_hash(zstd) == spec_hash(load_params().features)   # how, not what


def test_features_state_compression_is_one_of_four_and_not_part_of_the_spec(tmp_path):
    from pipelines.features import spec_hash

    for bad in ("gzip", None, True, "", "snappy"):
        with pytest.raises(ConfigError, match="features.state_compression"):
            _params_with(tmp_path, lambda d, bad=bad: d["features"].update(state_compression=bad))
    assert load_params().features.state_compression == "auto"
    zstd = _params_with(tmp_path, lambda d: d["features"].update(state_compression="zstd")).features
    assert zstd.state_compression == "zstd" and spec_hash(zstd) == spec_hash(load_params().features)   # how, not what


def test_features_state_apart_mb_is_null_or_a_whole_number_and_not_part_of_the_spec(tmp_path):
    from pipelines.features import spec_hash

    for bad in (-1, 2.5, True, "64MB"):
        with pytest.raises(ConfigError, match="features.state_apart_mb"):
            _params_with(tmp_path, lambda d, bad=bad: d["features"].update(state_apart_mb=bad))
    assert load_params().features.state_apart_mb == 64
    for ok in (None, 0):
        spec = _params_with(tmp_path, lambda d, ok=ok: d["features"].update(state_apart_mb=ok)).features
        assert spec.state_apart_mb == ok and spec_hash(spec) == spec_hash(load_params().features)   # how, not what


def test_features_from_raw_memory_mb_is_auto_null_or_whole_mib_and_not_part_of_the_spec(tmp_path):
    from pipelines.features import spec_hash

    for bad in (0, -1, 2.5, True, "4GB", "Auto"):
        with pytest.raises(ConfigError, match="features.from_raw_memory_mb"):
            _params_with(tmp_path, lambda d, bad=bad: d["features"].update(from_raw_memory_mb=bad))
    assert load_params().features.from_raw_memory_mb == "auto"
    for ok in (None, 1, 4096):
        spec = _params_with(tmp_path, lambda d, ok=ok: d["features"].update(from_raw_memory_mb=ok)).features
        assert spec.from_raw_memory_mb == ok and spec_hash(spec) == spec_hash(load_params().features)   # how, not what
