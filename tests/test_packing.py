"""mtrl_fair.packing: a packed sweep's overrides, its runs' overrides and their directory names."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mtrl_fair.packing import PackingError, pack_overrides, run_dirname, run_overrides


def test_seed_and_alpha_sweeps_become_one_list_of_runs() -> None:
    rewritten = pack_overrides(["-m", "seed=0,1", "combiner.alpha=0,2", "steps=100", "pack=true", "hydra.sweep.dir=s"])
    assert rewritten[:2] == ["-m", "hydra.sweep.dir=s"]
    assert "steps=100" in rewritten
    assert "pack=true" in rewritten
    (runs,) = [o for o in rewritten if o.startswith("pack_runs=")]
    # Hydra reads it back as one list value, not a sweep.
    (parsed,) = OverridesParser.create().parse_overrides([runs])
    assert not parsed.is_sweep_override()
    assert parsed.value() == [  # the product of the sweeps, in the order they are written
        "combiner.alpha=0 seed=0",
        "combiner.alpha=2 seed=0",
        "combiner.alpha=0 seed=1",
        "combiner.alpha=2 seed=1",
    ]


def test_other_sweeps_stay_sweeps() -> None:
    rewritten = pack_overrides(["-m", "combiner=mean,fairgrad", "seed=range(0,3)", "pack=true"])
    assert "combiner=mean,fairgrad" in rewritten
    (runs,) = [o for o in rewritten if o.startswith("pack_runs=")]
    assert OverridesParser.create().parse_overrides([runs])[0].value() == ["seed=0", "seed=1", "seed=2"]


def test_a_sweep_with_nothing_to_pack_is_refused() -> None:
    with pytest.raises(PackingError, match=r"pack=true packs the runs of a sweep over seed or combiner\.alpha"):
        pack_overrides(["-m", "combiner=mean,fairgrad", "pack=true"])


def test_runs_may_differ_only_in_packable_keys() -> None:
    assert run_overrides("combiner.alpha=2 seed=3") == ["combiner.alpha=2", "seed=3"]
    with pytest.raises(PackingError, match=r"may differ only in seed, combiner\.alpha"):
        run_overrides("agent.gamma=0.9 seed=1")


def test_run_directories_are_named_as_an_unpacked_sweep_names_them() -> None:
    # Hydra sorts a job's override lines and joins them: an unpacked job of this sweep would be
    # "combiner.alpha=2,combiner=fairgrad,seed=1".
    assert run_dirname(["combiner=fairgrad"], ["seed=1", "combiner.alpha=2"]) == "combiner.alpha=2,combiner=fairgrad,seed=1"
    assert run_dirname([], ["seed=0"], item_sep="_", kv_sep=":") == "seed:0"
