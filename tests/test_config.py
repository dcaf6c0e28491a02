"""The training configuration: common settings plus sections, from a file and flags, and what the warm start
depends on."""

import argparse
import json

import pytest

from cli.main import _parser, config_of
from training.config import TrainConfig, read_config_file, upgrade_flat


def test_help_lists_few_common_options_and_names_every_section():
    parser = _parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    common = [a for g in train._action_groups if not g.title.startswith("[") for a in g._group_actions
              if not isinstance(a, argparse._HelpAction) and a.dest != argparse.SUPPRESS]  # not the help flags
    assert len(common) <= 20, [a.option_strings for a in common]
    help_text = train.format_help()
    for section in ("[bpr]", "[fp32]", "[qat]", "[gnaq]", "[distill]", "[ptq]"):
        assert section in help_text
    assert "(default: 400)" in help_text and "(unset" not in help_text.replace("(unset:", "")


def test_research_settings_parse_but_only_help_advanced_lists_them(capsys):
    train = _parser()._subparsers._group_actions[0].choices["train"]
    assert "--clip" not in train.format_help() and "--node-aware" in train.format_help()  # ablation (a) stays
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--help-advanced"])
    advanced = capsys.readouterr().out
    assert exit_.value.code == 0 and "--clip CLIP" in advanced and "(default: 0.8)" in advanced
    assert "--node-aware" not in advanced and "[bigear]" in advanced
    assert config_of(["--clip", "0.7", "--center"]).gnaq.clip == 0.7


def test_unset_settings_are_derived_from_the_data_and_reported():
    config, derived = TrainConfig().for_data(72_000, 1682)  # MovieLens-100K
    assert (config.bpr.batch_size, config.fp32.lr, config.qat.lr, config.distill.users) == (2048, 5e-3, 2e-2, 1024)
    assert derived == {"bpr.batch_size": 2048, "fp32.lr": 5e-3, "qat.lr": 2e-2, "distill.users": 1024}
    config, derived = TrainConfig(bpr={"batch_size": 4096}).for_data(730_000, 40_981)
    assert config.bpr.batch_size == 4096 and "bpr.batch_size" not in derived
    gowalla = TrainConfig().for_data(730_000, 40_981)[0]
    assert gowalla.bpr.batch_size == 16384 and abs(gowalla.fp32.lr - 0.02) < 1e-9 and gowalla.distill.users == 1024
    # the users follow the width of each softmax, not the catalogue: all 41k items when sampling is off
    assert TrainConfig(distill={"candidates": 50_000}).for_data(730_000, 40_981)[0].distill.users == 256


def test_gnaq_candidates_cover_only_the_unset_variants():
    assert len(TrainConfig().gnaq_candidates()) == 4
    assert TrainConfig(gnaq={"center": True}).gnaq_candidates() == [
        {"center": True, "track_stats": True, "relative_refinement": False},
        {"center": True, "track_stats": False, "relative_refinement": True}]
    assert TrainConfig(gnaq={"dynamic": False}).gnaq_candidates() == [
        {"center": c, "track_stats": True, "relative_refinement": False} for c in (False, True)]
    fixed = {"center": False, "track_stats": False, "relative_refinement": False}
    assert TrainConfig(gnaq=fixed).gnaq_candidates() == [fixed]


def test_a_file_sets_sections_and_flags_override_them_key_by_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('method = "lsq"\n[qat]\nlr = 0.01\nepochs = 7\n[gnaq]\nclip = 0.5\n')
    config = config_of(["--config", str(path), "--qat-epochs", "3", "--no-dynamic"])
    assert config.method == "lsq" and config.qat.lr == 0.01 and config.qat.epochs == 3
    assert config.gnaq.clip == 0.5 and config.gnaq.dynamic is False and config.qat.eval_every == 1


def test_a_file_in_the_flat_form_is_refused_with_where_each_setting_went(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("qat_lr = 0.01\nclip = 0.5\ndistill = 1.0\n")
    with pytest.raises(ValueError, match=r"clip -> \[gnaq\] clip.*distill -> \[distill\] weight.*qat_lr -> \[qat\] lr"):
        read_config_file(path)


def test_flat_settings_of_earlier_manifests_move_into_their_sections():
    flat = {"qat_lr": 0.01, "patience": 3, "clip": 0.5, "distill": None, "distill_users": 64, "batch_size": 9,
            "ptq_granularity": "tensor", "ks": [5]}
    config = TrainConfig(**upgrade_flat(flat))
    assert (config.qat.lr, config.fp32.patience, config.qat.patience) == (0.01, 3, 3)
    assert (config.gnaq.clip, config.distill.weight, config.distill.users) == (0.5, None, 64)
    assert (config.bpr.batch_size, config.ptq.granularity, config.ks) == (9, "tensor", [5])
    nested = TrainConfig().model_dump(mode="json")
    assert upgrade_flat(nested) == nested


def _fp32_key(**settings) -> str:
    return json.dumps(TrainConfig(**settings).fp32_settings(), sort_keys=True)


def test_the_warm_start_key_holds_every_setting_not_declared_independent_of_it():
    base = _fp32_key()
    # Settings of the quantization-aware stage, the methods and the output never change the fp32 warm start.
    for unrelated in ({"method": "lsq"}, {"bits": 4}, {"qat": {"lr": 0.1}}, {"gnaq": {"clip": 0.5}},
                      {"distill": {"weight": 0}}, {"ptq": {"granularity": "tensor"}}, {"bigear": {"gamma": 2.0}},
                      {"model_dir": "x"}, {"version": "v"}, {"publish": False}, {"progress": False}):
        assert _fp32_key(**unrelated) == base, unrelated
    # Everything else is part of the key, with nothing listed by hand: a new setting is in it by default.
    for related in ({"dim": 32}, {"layers": 2}, {"seed": 1}, {"ks": [5]}, {"valid_fraction": 0.2},
                    {"device": "cuda"}, {"bpr": {"negatives": 2}}, {"bpr": {"l2": 0.0}},
                    {"fp32": {"epochs": 3}}, {"fp32": {"ema": 0.9}}, {"fp32": {"patience": 2}}):
        assert _fp32_key(**related) != base, related
    independent = {"method", "bits", "qat", "gnaq", "distill", "ptq", "bigear", "model_dir", "version", "publish",
                   "progress"}
    assert set(TrainConfig().fp32_settings()) == set(TrainConfig.model_fields) - independent
