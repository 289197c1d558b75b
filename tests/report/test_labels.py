"""mtrl_fair.report.labels: method labels and the compact text of hyperparameter values."""

from __future__ import annotations

from report_checks import FAIRGRAD, MEAN, fairgrad

from mtrl_fair.report import format_value, label_methods


def test_format_value_is_compact() -> None:
    assert [format_value(v) for v in (2.0, 0.5, 1e-10, 3, True, None, [1.0, "a"])] == [
        "2",
        "0.5",
        "1e-10",
        "3",
        "true",
        "null",
        "[1, a]",
    ]


def test_a_single_config_is_labelled_by_its_name() -> None:
    agent = {"tau": 0.005}
    labels = label_methods([(FAIRGRAD, agent, 100), (FAIRGRAD, agent, 100), (MEAN, agent, 100)])
    assert [label for label, _ in labels] == ["fairgrad", "fairgrad", "mean"]


def test_labels_order_numbers_by_value_and_show_agent_and_steps() -> None:
    agent = {"tau": 0.005, "hidden_sizes": [400, 400]}
    configs = [
        (fairgrad(10.0), agent, 100),
        (fairgrad(2.0), agent, 100),
        (FAIRGRAD, {**agent, "tau": 0.01}, 200),
        ({"name": "fairgrad", "alpha": 2.0}, agent, 100),  # an older config without the solver keys
    ]
    labels = [label for label, _ in label_methods(configs)]
    assert labels[0] == "fairgrad (alpha=10, agent.tau=0.005, steps=100)"
    assert labels[2] == "fairgrad (alpha=2, agent.tau=0.01, steps=200)"
    # Keys an older config lacks are compared among the configs that have them.
    assert labels[3] == labels[1] == "fairgrad (alpha=2, agent.tau=0.005, steps=100)"
