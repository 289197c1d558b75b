"""Tests of the Hydra configs (``configs/``) and their schemas and validation (``mtrl_fair.config``).

Configs are composed with Hydra's compose API, exactly as ``mtrl-fair train`` composes them, but
without running anything: no environment is built and no directory is written.
"""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import itertools
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

import mtrl_fair.envs
import mtrl_fair.envs.benchmarks
from mtrl_fair.agents import MTSACConfig
from mtrl_fair.combiners import available, hparam_names, make
from mtrl_fair.combiners.registry import COMBINERS
from mtrl_fair.config import (
    BenchmarkConfig,
    ConfigError,
    TrainConfig,
    register_schemas,
    validate_train_config,
)

CONFIGS = importlib.resources.files("mtrl_fair.configs")
COMBINER_FILES = sorted(
    p.name.removesuffix(".yaml") for p in (CONFIGS / "combiner").iterdir() if p.name.endswith(".yaml")
)
BENCHMARKS = ("mt10", "mt50")
AGENTS = ("mtsac", "mtsac_paper")

Compose = Callable[..., DictConfig]


@pytest.fixture(scope="module")
def compose_train() -> Iterator[Compose]:
    """``compose_train(*overrides)``: the composed ``train`` config."""
    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_module(config_module="mtrl_fair.configs", version_base="1.3"):

        def compose_train(*overrides: str) -> DictConfig:
            return compose("train", overrides=list(overrides))

        yield compose_train
    GlobalHydra.instance().clear()


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build an environment fails the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validate_train_config must not build an environment")

    monkeypatch.setattr(mtrl_fair.envs, "make_vector_env", forbidden)
    monkeypatch.setattr(mtrl_fair.envs.benchmarks, "make_vector_env", forbidden)
    monkeypatch.setattr(gymnasium, "make", forbidden)
    monkeypatch.setattr(gymnasium, "make_vec", forbidden)


def train_config(compose_train: Compose, *overrides: str) -> TrainConfig:
    config = OmegaConf.to_object(compose_train(*overrides))
    assert isinstance(config, TrainConfig)
    return config


def validation_error(compose_train: Compose, *overrides: str) -> str:
    config = train_config(compose_train, *overrides)
    with pytest.raises(ConfigError) as info:
        validate_train_config(config)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------------
# Every option of every group composes into a valid TrainConfig
# --------------------------------------------------------------------------------------------------


def test_the_config_groups_hold_the_expected_options() -> None:
    assert sorted(p.name for p in (CONFIGS / "benchmark").iterdir() if p.name.endswith(".yaml")) == [
        "mt10.yaml",
        "mt50.yaml",
    ]
    assert sorted(p.name for p in (CONFIGS / "agent").iterdir() if p.name.endswith(".yaml")) == [
        "mtsac.yaml",
        "mtsac_paper.yaml",
    ]
    assert set(available()) <= set(COMBINER_FILES)
    assert set(COMBINER_FILES) - set(available()) == {"torchjd"}


# Every benchmark with every agent, and every combiner (each compose takes ~0.2 s: not the full product).
COMPOSITIONS = sorted(
    {(b, a, "fairgrad") for b, a in itertools.product(BENCHMARKS, AGENTS)}
    | {("mt10", "mtsac", c) for c in COMBINER_FILES}
)


@pytest.mark.parametrize(("benchmark", "agent", "combiner"), COMPOSITIONS)
def test_every_option_composes_and_validates(
    compose_train: Compose, no_env: None, benchmark: str, agent: str, combiner: str
) -> None:
    config = train_config(compose_train, f"benchmark={benchmark}", f"agent={agent}", f"combiner={combiner}")
    assert isinstance(config.benchmark, BenchmarkConfig)
    assert isinstance(config.agent, MTSACConfig)
    assert config.benchmark.name == benchmark.upper()
    expected_combiner = "torchjd:UPGrad" if combiner == "torchjd" else combiner
    assert config.combiner["name"] == expected_combiner
    if agent == "mtsac_paper":
        assert config.agent.shared_temperature is True
        assert list(config.agent.combine) == ["critic", "actor", "temperature"]
        assert config.agent.use_task_id is False
    else:
        assert config.agent.shared_temperature is False
        assert list(config.agent.combine) == ["critic", "actor"]
        assert config.agent.use_task_id is True

    start = time.perf_counter()
    tasks = validate_train_config(config)
    elapsed = time.perf_counter() - start
    assert tasks == mtrl_fair.envs.benchmark_tasks(benchmark)
    assert len(tasks) == (10 if benchmark == "mt10" else 50)
    # Only names and numbers are checked: no simulator starts (that would take seconds).
    assert elapsed < 3.0, f"validation took {elapsed:.2f} s"


def test_defaults_match_the_schema_and_the_reference_setting(compose_train: Compose) -> None:
    config = train_config(compose_train)
    assert config.benchmark == BenchmarkConfig()
    assert config.agent == MTSACConfig()  # agent/mtsac.yaml repeats the dataclass defaults
    assert config.combiner == {
        "name": "fairgrad",
        "alpha": 2.0,
        "solver": "newton",
        "max_iter": 50,
        "ridge": 1e-10,
    }
    schema = TrainConfig()
    for key in ("seed", "steps", "device", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every"):
        assert getattr(config, key) == getattr(schema, key), key
    assert (config.eval_episodes, config.final_eval_episodes, config.resume) == (10, 50, False)


def test_paper_agent_changes_only_the_paper_switches(compose_train: Compose) -> None:
    plain = train_config(compose_train, "agent=mtsac").agent
    paper = train_config(compose_train, "agent=mtsac_paper").agent
    different = {
        key for key in MTSACConfig.__dataclass_fields__ if getattr(plain, key) != getattr(paper, key)
    }
    assert different == {"shared_temperature", "combine", "use_task_id"}


# --------------------------------------------------------------------------------------------------
# Combiner YAML files agree with the registry
# --------------------------------------------------------------------------------------------------


def load_combiner_yaml(name: str) -> dict[str, Any]:
    values = OmegaConf.to_container(OmegaConf.create((CONFIGS / "combiner" / f"{name}.yaml").read_text()))
    assert isinstance(values, dict)
    return values


@pytest.mark.parametrize("name", available())
def test_combiner_yaml_lists_the_constructor_defaults(name: str) -> None:
    assert name in COMBINER_FILES, f"configs/combiner/{name}.yaml is missing"
    values = load_combiner_yaml(name)
    assert values.pop("name") == name
    assert list(values) == hparam_names(name)
    signature = inspect.signature(COMBINERS[name].__init__).parameters
    # The defaults as the registry builds them (a wrapped combiner by its registry name).
    built = make(name).hparams()
    for key, value in values.items():
        assert signature[key].default is not inspect.Parameter.empty, key
        default = built[key]
        assert value == default, (key, value, default)
        assert type(value) is type(default), (key, value, default)
    # The file's values build the combiner, with the same hyperparameters as the defaults.
    assert make(name, **values).hparams() == make(name).hparams()


def test_torchjd_yaml_exists_and_builds() -> None:
    assert "torchjd" in COMBINER_FILES
    values = load_combiner_yaml("torchjd")
    assert values == {"name": "torchjd:UPGrad"}
    combiner = make(values["name"])
    assert combiner.hparams() == {"aggregator_name": "UPGrad"}


# --------------------------------------------------------------------------------------------------
# Overrides users rely on
# --------------------------------------------------------------------------------------------------


def test_task_subset_override(compose_train: Compose, no_env: None) -> None:
    config = train_config(compose_train, "benchmark.tasks=[reach-v3,drawer-close-v3]")
    assert config.benchmark.tasks == ["reach-v3", "drawer-close-v3"]
    assert validate_train_config(config) == ["reach-v3", "drawer-close-v3"]
    # The order given is kept (it is the order of the one-hot ids).
    config = train_config(compose_train, "benchmark=mt50", "benchmark.tasks=[window-close-v3,hammer-v3]")
    assert validate_train_config(config) == ["window-close-v3", "hammer-v3"]


def test_combiner_hyperparameter_override(compose_train: Compose) -> None:
    config = train_config(compose_train, "combiner=fairgrad", "combiner.alpha=3")
    assert config.combiner["alpha"] == 3
    validate_train_config(config)
    hparams = dict(config.combiner)
    combiner = make(hparams.pop("name"), **hparams)  # what the trainer does with the node
    assert combiner.hparams() == {"alpha": 3.0, "solver": "newton", "max_iter": 50, "ridge": 1e-10}

    config = train_config(compose_train, "combiner=pcgrad", "combiner.seed=7")
    assert config.combiner == {"name": "pcgrad", "seed": 7}
    config = train_config(compose_train, "combiner=torchjd", "combiner.name=torchjd:DualProj")
    assert config.combiner == {"name": "torchjd:DualProj"}
    validate_train_config(config)


def test_run_overrides(compose_train: Compose) -> None:
    config = train_config(
        compose_train,
        "seed=3",
        "steps=1234",
        "device=cpu",
        "checkpoint_every=100",
        "eval_every=0",
        "resume=true",
        "agent.hidden_sizes=[32,32]",
        "agent.warmup_steps=0",
    )
    assert (config.seed, config.steps, config.device) == (3, 1234, "cpu")
    assert (config.checkpoint_every, config.eval_every, config.resume) == (100, 0, True)
    assert isinstance(config.resume, bool)
    assert isinstance(config.steps, int)
    assert config.agent.hidden_sizes == [32, 32]
    assert config.agent.warmup_steps == 0
    assert len(validate_train_config(config)) == 10


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("agent.gama=0.9", ConfigCompositionException),  # a typo in a key
        ("combiner.alphaa=3", ConfigCompositionException),  # new combiner keys need a '+'
        ("steps=abc", ConfigCompositionException),  # a wrong type
        ("agent.hidden_sizes=abc", ConfigCompositionException),
        ("benchmark=mt11", MissingConfigException),  # an unknown option of a group
        ("combiner=fairgradd", MissingConfigException),
    ],
)
def test_compose_time_errors(compose_train: Compose, override: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        compose_train(override)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["benchmark.tasks=[reach-v3,fly-v3]"],
            r"unknown task 'fly-v3' for MT10; allowed: reach-v3, push-v3, ",
        ),
        (["combiner.alpha=-1"], r"alpha must be a number >= 0"),
        (
            ["+combiner.beta=1"],
            r"unknown hyperparameter\(s\) beta for combiner 'fairgrad'; accepted: alpha, solver, max_iter, ridge",
        ),
        (["device=tpu"], r"unknown device 'tpu'; allowed: auto, cpu, cuda"),
        (["steps=0"], r"steps must be >= 1, got 0"),
        (["benchmark.max_episode_steps=501"], r"max_episode_steps must be in \[1, 500\]"),
        (
            ["benchmark.vector_strategy=threads"],
            r"vector_strategy must be one of auto, sync, async, got 'threads'",
        ),
        (["agent.cuda_graph=yes"], r"agent\.cuda_graph must be auto, true or false, got 'yes'"),
        (["agent.overlap_env_steps=sometimes"], r"agent\.overlap_env_steps must be auto, true or false"),
        (["agent.matmul_precision=medium"], r"agent\.matmul_precision must be one of highest, high"),
        (["torch_threads=0"], r"torch_threads must be auto or an integer >= 1, got 0"),
        (["torch_threads=many"], r"torch_threads must be auto or an integer >= 1, got 'many'"),
    ],
)
def test_validation_errors_name_the_allowed_values(
    compose_train: Compose, no_env: None, overrides: list[str], expected: str
) -> None:
    message = validation_error(compose_train, *overrides)
    assert re.search(expected, message), message


@pytest.fixture(scope="module")
def default_config(compose_train: Compose) -> TrainConfig:
    return train_config(compose_train)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"benchmark.tasks": []}, r"tasks is empty; name at least one MT10 task: reach-v3"),
        (
            {"benchmark.name": "MT50", "benchmark.tasks": ["reach-v2"]},
            r"unknown task 'reach-v2' for MT50; allowed: assembly-v3, ",
        ),
        ({"combiner": {"name": "mean", "alpha": 2.0}}, r"for combiner 'mean'; accepted: none"),
        ({"combiner": {"name": "torchjd:Nope"}}, r"unknown TorchJD aggregator 'Nope'; choose one of "),
        ({"agent.gamma": 1.0}, r"agent\.gamma must be in \[0, 1\)"),
        ({"benchmark.tasks": ["reach-v3", "reach-v3"]}, r"appears twice"),
        ({"benchmark.name": "MT11"}, r"unknown benchmark 'MT11'; allowed: MT10, MT50"),
        ({"benchmark.max_episode_steps": 0}, r"max_episode_steps must be in \[1, 500\]"),
        ({"combiner": {"name": "famo", "w_lr": 0.0}}, r"w_lr must be a number > 0"),
        ({"combiner": {"name": "fairgrad", "solver": "magic"}}, r"solver must be one of 'newton'"),
        (
            {"combiner": {"name": "fairgradd"}},
            r"unknown combiner 'fairgradd'; choose one of alpha_fair_loss, ",
        ),
        ({"combiner": {"alpha": 2.0}}, r"needs a 'name' key"),
        ({"log_every": 0}, r"log_every must be >= 1"),
        ({"keep_checkpoints": 0}, r"keep_checkpoints must be >= 1"),
        ({"final_eval_episodes": 0}, r"final_eval_episodes must be >= 1"),
        ({"eval_every": -1}, r"eval_every must be >= 0"),
        ({"device": "cuda:x"}, r"unknown device 'cuda:x'; allowed: "),
        ({"agent.combine": ["critic", "temperature"]}, r"shared_temperature"),
        ({"agent.chunk_size": 0}, r"agent\.chunk_size must be >= 1 or null"),
        ({"video_every": -1}, r"video_every must be >= 0 \(0: no videos\)"),
        ({"video_every": 150000}, r"video_every must be a multiple of eval_every \(100000\)"),
        ({"video_every": 100000, "eval_every": 0}, r"video_every must be a multiple of eval_every \(0\)"),
        ({"video_every": 100000, "video_size": 100}, r"video size must be a multiple of 16"),
        ({"video_every": 100000, "video_camera": "side"}, r"unknown camera 'side'; allowed: corner3, "),
        ({"logger": "mlflow"}, r"unknown logger 'mlflow'; allowed: tensorboard, wandb"),
    ],
)
def test_more_validation_errors(default_config: TrainConfig, changes: dict[str, Any], expected: str) -> None:
    """The same checks on edited copies of the default config (composing each would be slow)."""
    config = copy.deepcopy(default_config)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node: Any = config
        for parent in parents:
            node = getattr(node, parent)
        setattr(node, key, value)
    with pytest.raises(ConfigError) as info:
        validate_train_config(config)
    assert "\n" not in str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)
    # The default config itself is valid: the edit is what failed.
    validate_train_config(default_config)


def test_video_settings_are_checked_only_when_videos_are_on(default_config: TrainConfig) -> None:
    config = copy.deepcopy(default_config)
    config.video_size, config.video_camera = 100, "side"
    validate_train_config(config)
    config.video_every, config.video_size, config.video_camera = 200_000, 64, "topview"
    validate_train_config(config)


def test_a_missing_wandb_is_one_line_saying_how_to_install_it(
    default_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = copy.deepcopy(default_config)
    config.logger = "wandb"
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ConfigError) as info:
        validate_train_config(config)
    assert str(info.value) == (
        'logger=wandb needs Weights & Biases, which is not installed: pip install -e ".[wandb]" '
        '(or pip install "mtrl-fair[wandb]")'
    )


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_cuda_is_a_config_error(compose_train: Compose) -> None:
    message = validation_error(compose_train, "device=cuda")
    assert "CUDA is not available" in message
    assert "device=cpu" in message
