from pathlib import Path

import pytest

from medtl.config import Config, flatten, load_config, parse_overrides
from medtl.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_file_values(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  manifest: m.csv\ntrain:\n  lr: 0.01\n"))
    assert cfg.train.lr == 0.01
    assert cfg.train.epochs == Config().train.epochs
    assert cfg.data.manifest == tmp_path / "m.csv"  # resolved against the config's folder


def test_overrides_parse_yaml_values_and_nest(tmp_path):
    cfg = load_config(
        write(tmp_path, "train:\n  lr: 0.01\n"),
        ["train.lr=0.5", "data.image_size=[32,32]", "transfer.strategy=full", "data.subgroups=[site, sex]"],
    )
    assert cfg.train.lr == 0.5
    assert cfg.data.image_size == [32, 32]
    assert cfg.transfer.strategy == "full"
    assert cfg.data.subgroups == ["site", "sex"]
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_config_is_frozen():
    from pydantic import ValidationError

    cfg = Config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.lr = 3  # type: ignore[misc]
    assert cfg.train.lr == Config().train.lr


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("data:\n  bogus: 1\n", ["data.bogus", "unknown key", "manifest"]),
        ("nonsense: 1\n", ["nonsense", "unknown key", "train"]),
        ("train:\n  lr: fast\n", ["train.lr", "valid number"]),
        ("train:\n  lr: -1\n", ["train.lr", "greater than 0"]),
        ("train:\n  loss: hinge\n", ["train.loss", "'focal'", "hinge"]),
        ("data:\n  spatial_dims: 3\n  image_size: [32, 32]\n", ["data", "spatial_dims is 3"]),
        ("data:\n  spatial_dims: 3\n  image_size: [2048, 2048, 2048]\n", ["data", "8,589,934,592 voxels per case", "MEDTL_MAX_VOXELS"]),
        ("- a\n- b\n", ["mapping of sections"]),
        ("data: [\n", ["not valid YAML"]),
        # PyYAML keeps the last of two keys: the first section's settings were silently dropped
        ("train:\n  epochs: 5\nmodel:\n  dropout: 0.1\ntrain:\n  lr: 0.01\n", ["line 5: 'train' is given twice", "line 1"]),
        ("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.01\n", ["line 4: 'lr' is given twice", "also line 2"]),
        ("base: &b {epochs: 3}\ntrain:\n  <<: *b\n  epochs: 4\n  bogus: 1\n", ["train.bogus"]),  # a merge may be overridden
        ("tracking:\n  alias: latest\n", ["tracking.alias", "reserved by MLflow"]),
        ("study:\n  compare: [scratch, scratch]\n", ["study", "with itself"]),
        ("tracking:\n  alias: v3\n", ["tracking.alias", "reserved by MLflow"]),
        ("tracking:\n  alias: my alias\n", ["tracking.alias", "letters, digits"]),
        ("tracking:\n  registered_model: team/model\n", ["tracking.registered_model", "no '/' or ':'"]),
        ("data:\n  classes: [normal, '']\n", ["data", "two or more different classes"]),
        ("data:\n  classes: [lesion, 'lesion ']\n", ["data", "two or more different classes"]),
        ("train:\n  seed: -1\n", ["train.seed", "greater than or equal to 0"]),
        ("data:\n  classes: [no, yes]\n", ["data.classes", "quote the class names"]),  # YAML 1.1's booleans
        ("data:\n  subgroups: site, scanner\n", ["data.subgroups", "write a list in brackets: [site, scanner]"]),
        ("evaluate:\n  seed: -3\n", ["evaluate.seed", "greater than or equal to 0"]),
        ("train:\n  epoch: 3\n", ["train.epoch", "did you mean train.epochs?"]),  # a slip, or another tool's word
        ("train:\n  learning_rate: 0.01\n", ["train.learning_rate", "did you mean train.lr?"]),
        ("trian:\n  epochs: 3\n", ["trian", "did you mean train?"]),
        ("train:\n\tepochs: 3\n", ["line 2 is not valid YAML", "it holds a tab: YAML indents with spaces only"]),
    ],
)
def test_errors_name_file_key_and_allowed_values(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg


def test_every_problem_is_listed(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  lr: -1\n  epochs: 0\n  bogus: 2\n"))
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert any("train.epochs" in line for line in lines)


def test_a_config_saved_as_utf16_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="not UTF-8 text .*save it as UTF-8"):  # was an unexpected UnicodeDecodeError
        load_config(path)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["trainlr"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(None, ["train.nope=1"])


def test_flatten_for_params():
    flat = flatten(Config().to_dict())
    assert flat["train.lr"] == Config().train.lr
    assert "transfer.strategy" in flat


def test_a_bad_set_value_is_attributed_to_set_not_to_the_file(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.01\n  epochs: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lr=-5"])
    lines = str(info.value).splitlines()
    assert any(line.startswith("--set: train.lr") for line in lines)
    assert any(line.startswith(f"{path}: train.epochs") for line in lines)


def test_a_removed_key_says_it_is_no_longer_used_and_what_to_do():
    with pytest.raises(ConfigError, match=r"--set: evaluate.split: no longer used; .*medtl evaluate --split"):
        load_config(None, ["evaluate.split=val"])


def test_a_value_no_member_of_a_union_accepts_is_one_line_with_every_alternative():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["evaluate.prevalence=banana", "train.lr=x"])
    lines = str(info.value).splitlines()
    prevalence = [line for line in lines if "evaluate.prevalence" in line]
    assert len(lines) == 2 and len(prevalence) == 1
    assert "valid number" in prevalence[0] and "'em'" in prevalence[0] and prevalence[0].endswith("(got 'banana')")
    assert prevalence[0].count("(got") == 1


def test_a_study_of_no_strategy_is_refused():
    with pytest.raises(ConfigError, match="study.strategies"):
        load_config(None, ["study.strategies=[]"])


def test_adaptation_that_could_not_act_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["adaptation.method=adabn"])
    assert "adaptation: method adabn needs target_manifest" in str(info.value) and "(got" not in str(info.value)
    target = tmp_path / "site.csv"
    with pytest.raises(ConfigError) as info:  # CORAL trains the backbone; feature extraction keeps it frozen
        load_config(None, ["adaptation.method=coral", f"adaptation.target_manifest={target}",
                           "transfer.strategy=feature_extraction"])
    assert str(info.value) == ("--set: adaptation.method coral aligns features by training the backbone, which "
                               "transfer.strategy feature_extraction keeps frozen: use fine_tune or full, or "
                               "adaptation.method adabn")
    assert load_config(None, ["adaptation.method=coral", f"adaptation.target_manifest={target}",
                              "transfer.strategy=fine_tune"]).adaptation.method == "coral"


def test_mixup_is_refused_where_labels_cannot_be_mixed(tmp_path):
    target = tmp_path / "site.csv"
    for overrides in (["data.task=segmentation", "train.loss=dice_ce"],
                      ["adaptation.method=dann", f"adaptation.target_manifest={target}"]):
        with pytest.raises(ConfigError, match="train.mixup_alpha mixes class labels.*set it to null"):
            load_config(None, ["train.mixup_alpha=0.2", *overrides])
    with pytest.raises(ConfigError, match="train.mixup_alpha"):
        load_config(None, ["train.mixup_alpha=0"])
    assert load_config(None, ["train.mixup_alpha=0.2"]).train.mixup_alpha == 0.2


def test_probe_first_is_refused_without_a_classification_head():
    with pytest.raises(ConfigError, match="transfer.probe_first fits a classification head.*set it to false"):
        load_config(None, ["transfer.probe_first=true", "data.task=segmentation"])
    assert load_config(None, ["transfer.probe_first=true"]).transfer.probe_first


def test_paths_read_home_and_environment_variables_as_a_shell_would(tmp_path, monkeypatch):
    """``~/runs`` used to be a folder named '~' beside the config; a cluster's config names $SCRATCH."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    cfg = load_config(None, ["train.out_dir=~/runs", "data.cache_dir=$SCRATCH/cache", "data.manifest=${SCRATCH}/m.csv"])
    assert cfg.train.out_dir == tmp_path / "home" / "runs"
    assert cfg.data.cache_dir == tmp_path / "scratch" / "cache" and cfg.data.manifest == tmp_path / "scratch" / "m.csv"
    with pytest.raises(ConfigError, match="train.out_dir: .*NOT_SET_HERE, which is not set"):
        load_config(None, ["train.out_dir=$NOT_SET_HERE/runs"])


def test_paths_in_the_file_resolve_beside_it_and_paths_typed_with_set_beside_the_shell(tmp_path, monkeypatch):
    """`medtl run diagnosis configs/x.yaml --set data.manifest=data/m.csv`, typed in the project folder, means the
    project's data/m.csv, not configs/data/m.csv."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("data:\n  manifest: m.csv\ntrain:\n  out_dir: ../runs\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/x.yaml")
    assert cfg.data.manifest == tmp_path / "configs" / "m.csv" and cfg.train.out_dir == tmp_path / "runs"
    cfg = load_config("configs/x.yaml", ["data.manifest=data/m.csv"])
    assert cfg.data.manifest == tmp_path / "data" / "m.csv" and cfg.train.out_dir == tmp_path / "runs"


def test_classes_coded_as_numbers_name_the_labels_written_so():
    assert load_config(None, ["data.classes=[0,1]"]).data.classes == ["0", "1"]
    with pytest.raises(ConfigError, match="name two or more different classes"):
        load_config(None, ["data.classes=[1,1]"])


def test_a_manifest_whose_classes_sit_in_another_column_names_its_columns(tmp_path):
    from medtl.train.data import preflight

    (tmp_path / "m.csv").write_text("case_id,image,diagnosis\na,a.png,normal\n")
    cfg = load_config(None, [f"data.manifest={tmp_path / 'm.csv'}"])
    with pytest.raises(ConfigError, match=r"has none \(it has case_id, image, diagnosis, patient_id, split\); name the "
                                          r"column that holds the classes 'label'"):
        preflight(cfg.data, cfg.train)
    (tmp_path / "m.csv").write_text("case_id,image,label\na,a.png,\n")
    with pytest.raises(ConfigError, match="label column is empty; fill it"):
        preflight(cfg.data, cfg.train)


def test_a_volume_config_left_at_the_xray_default_is_warned(tmp_path, caplog):
    import logging

    from medtl.train.data import preflight

    (tmp_path / "m.csv").write_text("case_id,image,label\na,a.nii.gz,x\n")
    caplog.set_level(logging.WARNING, logger="medtl")
    for modality, warned in (("xray", True), ("ct", False)):
        caplog.clear()
        cfg = load_config(None, [f"data.manifest={tmp_path / 'm.csv'}", "data.spatial_dims=3", "data.image_size=[8,8,8]",
                                 f"data.modality={modality}"])
        preflight(cfg.data, cfg.train)
        assert any("data.modality is xray (the default) for 3-D scans" in r.getMessage() for r in caplog.records) == warned


def test_one_number_sizes_every_axis():
    """``image_size: 224`` used to be refused as not a list."""
    assert load_config(None, ["data.image_size=64"]).data.image_size == [64, 64]
    volume = load_config(None, ["data.spatial_dims=3", "data.image_size=96", "data.spacing=1.5"]).data
    assert volume.image_size == [96, 96, 96] and volume.spacing == [1.5, 1.5, 1.5]
    assert load_config(None, ["data.spatial_dims=3", "data.image_size=96", "train.patch_size=64"]).train.patch_size == [64] * 3
