"""Seeing what the agent does, through the command: videos during training (TensorBoard and an
offline Weights & Biases run), ``mtrl-fair eval video=true``, ``eval.png``, and one clear line when
a rendering library or wandb is missing."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from cli_runs import cli
from test_cli import TINY
from video_checks import WITHOUT_OSMESA, distinct_frames, read_frames, run_python
from wandb_offline import history, offline_run_log, run_config

TASKS = ["reach-v3", "drawer-close-v3"]
EPISODE = 40  # benchmark.max_episode_steps of TINY
VIDEO_STEPS = ["step_000000050", "step_000000100"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run with a video every evaluation (50 iterations) and the end, logged to TensorBoard
    and to an offline wandb run."""
    run_dir = tmp_path_factory.mktemp("video_run") / "run"
    wandb_dir = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    done = cli(
        "train",
        *TINY,
        "steps=100",
        "eval_every=50",
        "video_every=50",
        "video_size=32",
        "logger=wandb",
        "wandb_project=mtrl-fair-tests",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return run_dir, wandb_dir


def test_training_writes_a_clip_per_task_at_each_video_point(video_run: tuple[Path, Path]) -> None:
    run_dir, _ = video_run
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == VIDEO_STEPS
    for step in VIDEO_STEPS:
        for task in TASKS:
            frames = read_frames(run_dir / "videos" / step / f"{task}.mp4")
            assert frames.shape[1:] == (32, 32, 3)
            assert len(frames) <= EPISODE + 1  # one training-length episode (shorter after a success)
            assert distinct_frames(frames) > 1


def test_tensorboard_holds_the_videos(video_run: tuple[Path, Path]) -> None:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = video_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert {f"videos/{task}" for task in TASKS} <= set(events.Tags()["images"])
    for task in TASKS:
        summaries = events.Images(f"videos/{task}")
        assert [s.step for s in summaries] == [50, 100]
        gif = Image.open(io.BytesIO(summaries[-1].encoded_image_string))
        assert gif.format == "GIF"
        assert gif.n_frames > 1


def test_the_offline_wandb_run_mirrors_the_scalars_videos_and_config(video_run: tuple[Path, Path]) -> None:
    run_dir, wandb_dir = video_run
    log = offline_run_log(wandb_dir)
    assert log.name == f"run-{(run_dir / 'wandb_id.txt').read_text().strip()}.wandb"
    rows = history(log)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(rows) == [record["step"] for record in records]
    for record in records:
        row = rows[record["step"]]
        for key, value in record.items():
            if key not in ("step", "env_steps", "time"):
                assert row[key] == pytest.approx(value, rel=1e-6), key
    for step in (50, 100):
        for task in TASKS:
            assert rows[step][f"videos/{task}/_type"] == "video-file"
    media = list(log.parent.glob("files/media/videos/**/*.mp4"))
    assert len(media) == 2 * len(TASKS)
    config = run_config(log)
    assert (config["video_every"], config["logger"], config["steps"]) == (50, "wandb", 100)
    assert config["benchmark"]["tasks"] == TASKS


def test_eval_with_videos_and_its_picture(video_run: tuple[Path, Path]) -> None:
    run_dir, _ = video_run
    done = cli("eval", str(run_dir), "episodes=1", "video=true", "video_size=32")
    assert done.returncode == 0, done.stderr
    for task in TASKS:
        frames = read_frames(run_dir / "videos" / f"{task}.mp4")
        assert distinct_frames(frames) > 1
    saved = json.loads((run_dir / "eval.json").read_text())
    assert set(saved["videos"]) == set(TASKS)
    outcome = saved["videos"]["reach-v3"]["episodes"][0]
    described = (
        f"success at step {outcome['success_step']}"
        if outcome["success"]
        else f"no success in {outcome['steps']} steps"
    )
    assert described in done.stdout  # the table's video column
    assert f"[{described}](videos/reach-v3.mp4)" in (run_dir / "eval.md").read_text()
    png = run_dir / "eval.png"
    assert f"{png}" in done.stdout.replace("\n", "")
    assert f"videos: {run_dir / 'videos'}" in done.stdout.replace("\n", "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_png_without_videos_beside_a_checkpoint(video_run: tuple[Path, Path]) -> None:
    from PIL import Image

    run_dir, _ = video_run
    checkpoint = run_dir / "checkpoints" / "step_000000100.pt"
    done = cli("eval", str(checkpoint), "episodes=1")
    assert done.returncode == 0, done.stderr
    png = checkpoint.with_suffix(".eval.png")
    with Image.open(png) as image:
        width, height = image.size
    assert width > height  # the bars and, beside them, the curves of the run's evaluations
    assert not checkpoint.with_suffix(".videos").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("video_every=75", "video_every must be a multiple of eval_every (50)"),
        ("video_size=100", "video size must be a multiple of 16"),
        ("video_camera=side", "unknown camera 'side'"),
        ("logger=mlflow", "unknown logger 'mlflow'"),
    ],
)
def test_bad_video_and_logger_settings_are_one_line(tmp_path: Path, override: str, expected: str) -> None:
    run_dir = tmp_path / "run"
    done = cli(
        "train", *TINY, "eval_every=50", "video_every=50", override, f"hydra.run.dir={run_dir}", timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:")
    assert expected in lines[0]
    assert not run_dir.exists()


def test_a_missing_wandb_is_one_line_before_the_run_starts(tmp_path: Path) -> None:
    # A wandb that cannot be imported, as when the [wandb] extra is not installed.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "wandb.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")
    run_dir = tmp_path / "run"
    pythonpath = os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])
    done = cli(
        "train",
        *TINY,
        "logger=wandb",
        f"hydra.run.dir={run_dir}",
        env={"PYTHONPATH": pythonpath},
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'error: logger=wandb needs Weights & Biases, which is not installed: pip install -e ".[wandb]" '
        '(or pip install "mtrl-fair[wandb]")'
    ]
    assert not run_dir.exists()


CLI = "import runpy, sys\nsys.argv = ['mtrl-fair', *{args!r}]\nrunpy.run_module('mtrl_fair.cli', run_name='__main__')\n"


@pytest.mark.parametrize(
    "users_backend",
    [
        "osmesa",  # the user's choice: importing mujoco is what fails
        "",  # chosen here on a machine without a GPU: the check before the run fails
    ],
)
def test_a_missing_rendering_library_is_one_line_before_the_run_starts(
    tmp_path: Path, users_backend: str
) -> None:
    run_dir = tmp_path / "run"
    args = [
        "train",
        *TINY,
        "eval_every=50",
        "video_every=50",
        f"hydra.run.dir={run_dir}",
    ]
    no_gpu = "import mtrl_fair.envs.rendering as r\nr.GPU_DRIVER_FILES = ()\n" if not users_backend else ""
    done = run_python(
        WITHOUT_OSMESA + no_gpu + CLI.format(args=args),
        env={"MUJOCO_GL": users_backend, "PYOPENGL_PLATFORM": "", "HYDRA_FULL_ERROR": "0"},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: MuJoCo cannot render with MUJOCO_GL=osmesa")
    assert "apt-get install libosmesa6" in lines[0]
    assert not run_dir.exists()


def test_eval_video_without_a_rendering_library_is_one_line(video_run: tuple[Path, Path]) -> None:
    run_dir, _ = video_run
    args = ["eval", str(run_dir), "episodes=1", "video=true"]
    no_gpu = "import mtrl_fair.envs.rendering as r\nr.GPU_DRIVER_FILES = ()\n"
    done = run_python(
        WITHOUT_OSMESA + no_gpu + CLI.format(args=args), env={"MUJOCO_GL": "", "PYOPENGL_PLATFORM": ""}
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: MuJoCo cannot render with MUJOCO_GL=osmesa")
