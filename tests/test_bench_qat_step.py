"""The step-cost benchmark: each method's stage as the pipeline builds it, timed on the same batches."""

import pytest
from qat_step import main as qat_step_main
from qat_step import method_config

from cli.main import config_of, main
from tests.conftest import FAST


def test_each_method_is_timed_from_the_cached_warm_start_and_compared_with_the_first(tmp_path, capsys):
    flags = [*FAST, "--model-dir", str(tmp_path), "--no-publish"]
    assert qat_step_main(["--steps", "2", "--methods", "lsq", "gnaq:c+rel", *flags]) == 0
    out = capsys.readouterr().out
    lsq, gnaq = (line.split() for line in out.splitlines()[2:4])
    assert (lsq[0], lsq[3], gnaq[0]) == ("lsq", "1.00", "gnaq:c+rel") and lsq[4:] == ["fresh", "initialisation"]
    assert main(["train", *flags, "--method", "fp32"]) == 0  # leaves the warm start in the model dir's cache
    capsys.readouterr()
    assert qat_step_main(["--steps", "1", "--methods", "gnaq:trk", *flags]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("fp32 warm start")


def test_a_variant_sets_every_switch_and_unknown_methods_and_unused_flags_are_refused(capsys):
    config = method_config(config_of(FAST), "gnaq:c+trk")
    assert (config.method, config.gnaq.center, config.gnaq.track_stats, config.gnaq.relative_refinement) == \
        ("gnaq", True, True, False)
    for method in ("ptq", "gnaq:c+x", "lsq:c"):
        with pytest.raises(SystemExit):
            qat_step_main(["--methods", method, *FAST])
        assert repr(method) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qat_step_main(["--method", "lsq", *FAST])  # --methods names them: a gnaq train --method would be ignored
    assert "--method: not used here" in capsys.readouterr().err
