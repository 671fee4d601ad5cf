"""The CLI in-process (typer's runner through medtl.cli.main): version, help, config commands."""

import pytest

from medtl import __version__
from tests.conftest import run_cli


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0
    assert __version__ in res.stdout


def test_config_show_resolves_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.01\n")
    res = run_cli("config", "show", str(cfg), "--set", "train.epochs=3")
    assert res.returncode == 0, res.stderr
    assert "epochs: 3" in res.stdout and "lr: 0.01" in res.stdout


def test_a_config_not_found_points_at_the_defaults_that_config_show_writes(tmp_path):
    """Installed from PyPI there is no configs/ folder to copy from: the defaults are where a config starts."""
    res = run_cli("config", "show", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "config file not found" in res.stderr and "medtl config show > " in res.stderr
    start = run_cli("config", "show", "--set", "train.epochs=4")
    assert start.returncode == 0, start.stderr
    written = tmp_path / "my_config.yaml"
    written.write_text(start.stdout)
    assert run_cli("config", "validate", str(written)).returncode == 0
    assert "epochs: 4" in run_cli("config", "show", str(written)).stdout


def test_config_validate_ok_and_every_problem(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  lr: 0.01\n")
    assert run_cli("config", "validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n  loss: hinge\n")
    res = run_cli("config", "validate", str(bad))
    assert res.returncode != 0
    assert "train.lr" in res.stderr and "train.loss" in res.stderr
    assert "Traceback" not in res.stderr
    # what training would refuse before reading a scan, validate refuses too
    for key, says in (("model.backbone=resnet999", "unknown backbone 'resnet999'"),
                      ("transfer.freeze_until=block99", "'block99' is not a stage of efficientnet-lite0"),
                      ("model.pretrained=medicalnet", "efficientnet-lite0 has no medicalnet weights"),
                      ("data.classes=[a]", "name two or more different classes")):
        res = run_cli("config", "validate", str(good), "--set", "transfer.strategy=fine_tune", "--set", key)
        assert res.returncode != 0 and says in res.stderr and "Traceback" not in res.stderr, (key, res.stderr)


def test_errors_are_one_line_without_debug_and_traceback_with_it(tmp_path):
    missing = tmp_path / "missing.yaml"
    res = run_cli("config", "show", str(missing))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "missing.yaml" in res.stderr
    res = run_cli("--debug", "config", "show", str(missing))
    assert res.returncode != 0
    assert "Traceback" in res.stderr
    res = run_cli("config", "show", str(missing), "--debug")  # where "rerun with --debug" is usually typed
    assert res.returncode != 0 and "Traceback" in res.stderr and "No such option" not in res.stderr
    res = run_cli("config", "show", str(missing), "-q")
    assert res.returncode == 2 and "missing.yaml" in res.stderr and "No such option" not in res.stderr


def test_help_shows_flags_as_flags_and_fits_80_columns():
    res = run_cli("score", "--help", env={"COLUMNS": "80"})
    assert res.returncode == 0 and "--track / --no-track" in res.stdout
    assert "<bool>" not in res.stdout  # a flag takes no value
    assert max(len(line) for line in res.stdout.splitlines()) <= 80


def test_compare_refuses_files_that_are_not_classification_predictions_in_one_line(tmp_path):
    good = tmp_path / "a.csv"
    good.write_text("case_id,label,prob_normal,prob_lesion,predicted\nc1,lesion,0.2,0.8,lesion\nc2,normal,0.9,0.1,normal\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "seg.csv").write_text("case_id,status,lesion_volume_ml\nc1,ok,3.2\n")
    for other, said in (("empty.csv", "not a readable CSV"), ("seg.csv", "missing column(s) label, prob_<class>")):
        res = run_cli("compare", str(good), str(tmp_path / other), "--out", str(tmp_path / "cmp"))
        assert res.returncode != 0 and f"{other}: {said}" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_compare_takes_two_different_names_and_zero_resamples(tmp_path):
    good = tmp_path / "a.csv"
    good.write_text("case_id,label,prob_normal,prob_lesion,predicted\nc1,lesion,0.2,0.8,lesion\nc2,normal,0.9,0.1,normal\n")
    for names in ("ft", "ft,ft", "ft,sc,x"):
        res = run_cli("compare", str(good), str(good), "--out", str(tmp_path / "cmp"), "--names", names)
        assert res.returncode == 2 and f"--names {names!r}" in res.stderr and not (tmp_path / "cmp").exists(), res.stderr
    res = run_cli("compare", str(good), str(good), "--out", str(tmp_path / "cmp"), "--names", "ft, sc", "--bootstrap", "0")
    assert res.returncode == 0, res.stderr  # no interval is what 0 resamples means, not a KeyError
    assert "# ft vs sc" in res.stdout and "| ΔBrier | +0.000 (no interval: 0 bootstrap resamples) |" in res.stdout


def test_batch_score_names_the_key_it_lacks(tmp_path):
    res = run_cli("run", "batch_score", "--set", "tracking.enabled=false", cwd=tmp_path)
    assert res.returncode == 2 and "tracking.registered_model: batch_score scores" in res.stderr  # was models:/None@candidate
    res = run_cli("run", "batch_score", "--set", "tracking.registered_model=m", cwd=tmp_path)
    assert res.returncode == 2 and "data.manifest: batch_score scores the cases of a manifest" in res.stderr


def test_synthetic_refuses_an_unknown_kind_or_too_few_cases_in_one_line(tmp_path):
    for args, said in ((["--kind", "jpeg"], "--kind 'jpeg'"), (["--n", "0"], "--n 0"), (["--n", "-5"], "--n -5")):
        res = run_cli("synthetic", str(tmp_path / "s"), *args)
        assert res.returncode == 2 and said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "s").exists()


def test_a_full_disk_or_a_read_only_share_is_one_line_that_says_what_to_do_and_other_os_errors_stay_unexpected(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    res = run_cli("synthetic", str(tmp_path / "s"), "--n", "8")
    assert res.returncode == 2 and "the disk is full" in res.stderr and "--resume" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr

    def read_only(*args, **kwargs):  # a share mounted read-only: no chmod makes one, even for root
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/share/manifest.csv")

    monkeypatch.setattr(pd.DataFrame, "to_csv", read_only)
    res = run_cli("synthetic", str(tmp_path / "r"), "--n", "8")
    assert res.returncode == 2 and "/mnt/share/manifest.csv: the file system is read-only; choose a path you can " \
        "write" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr

    def locked(*args, **kwargs):  # the first file an output gets is medtl's lock beside it: the user named the folder
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/share/.manifest.csv.lock")

    monkeypatch.setattr(pd.DataFrame, "to_csv", locked)
    res = run_cli("synthetic", str(tmp_path / "l"), "--n", "8")
    assert res.stderr.startswith("error: /mnt/share: the file system is read-only"), res.stderr

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    res = run_cli("synthetic", str(tmp_path / "t"), "--n", "8")
    assert res.returncode == 1 and "unexpected error: OSError" in res.stderr and "--debug" in res.stderr


@pytest.mark.parametrize("engine", ["spark", "ray"])
@pytest.mark.parametrize("option", [["--prevalence", "0.3"], ["--heatmaps", "cams"], ["--masks-out", "masks"]])
def test_an_option_the_archive_engines_cannot_honour_is_refused_not_left_out(tmp_path, option, engine):
    """``--engine spark --prevalence 0.3`` used to score with no prevalence correction and say nothing."""
    res = run_cli("score", "--model", "models:/any@candidate", "--manifest", str(tmp_path / "m.csv"), "--out",
                  str(tmp_path / "p.parquet"), "--engine", engine, *option, cwd=tmp_path)
    assert res.returncode == 2 and f"{option[0]}: the {engine} engine scores the model as registered" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.parquet").exists()
