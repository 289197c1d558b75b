"""Tests of mtrl_fair.envs.video: clips of policies with known outcomes, read back from the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted_policies import EXPERT_TASKS, ScriptedExperts, ZeroActions
from video_checks import distinct_frames, has_border, mp4_tags, read_frames

import mtrl_fair
from mtrl_fair.envs import EvalResult, make_vector_env
from mtrl_fair.envs.video import (
    SUCCESS_COLOUR,
    SUCCESS_TAIL_STEPS,
    check_video_size,
    gif_bytes,
    record_videos,
)

pytestmark = pytest.mark.filterwarnings(r"ignore:Constant\(s\) may be too high")
SIZE = 64


@pytest.fixture(scope="module")
def expert_videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalResult, Path]:
    video_dir = tmp_path_factory.mktemp("videos")
    result = mtrl_fair.evaluate(
        ScriptedExperts(EXPERT_TASKS),
        tasks=EXPERT_TASKS,
        episodes=1,
        seed=0,
        video_dir=video_dir,
        video_episodes=2,
        video_size=SIZE,
    )
    return result, video_dir


def test_one_decodable_clip_per_task(expert_videos: tuple[EvalResult, Path]) -> None:
    result, video_dir = expert_videos
    assert sorted(p.name for p in video_dir.iterdir()) == sorted(f"{task}.mp4" for task in EXPERT_TASKS)
    for task in EXPERT_TASKS:
        video = result.videos[task]
        frames = read_frames(video_dir / f"{task}.mp4")
        assert frames.shape[1:] == (SIZE, SIZE, 3)
        # A frame after each reset and after each step of both episodes.
        assert len(frames) == sum(episode.steps + 1 for episode in video.episodes)
        assert distinct_frames(frames) > 1


def test_the_border_turns_green_at_the_success_step(expert_videos: tuple[EvalResult, Path]) -> None:
    result, video_dir = expert_videos
    for task in EXPERT_TASKS:
        video = result.videos[task]
        frames = read_frames(video_dir / f"{task}.mp4")
        start = 0
        for episode in video.episodes:
            # The experts succeed every time; the episode then goes on for the tail and stops.
            assert episode.success
            assert episode.steps == episode.success_step + SUCCESS_TAIL_STEPS
            bordered = [
                has_border(frame, SUCCESS_COLOUR) for frame in frames[start : start + episode.steps + 1]
            ]
            assert bordered == [step >= episode.success_step for step in range(episode.steps + 1)]
            start += episode.steps + 1


def test_the_outcome_is_in_the_file_the_table_and_the_json(expert_videos: tuple[EvalResult, Path]) -> None:
    result, video_dir = expert_videos
    reach = result.videos["reach-v3"]
    described = "; ".join(f"success at step {episode.success_step}" for episode in reach.episodes)
    assert reach.describe() == described
    tags = mp4_tags(video_dir / "reach-v3.mp4")
    assert (tags["title"], tags["comment"]) == ("reach-v3", described)
    assert f"| [{described}]({video_dir / 'reach-v3.mp4'}) |" in result.to_markdown()
    assert f"| [{described}](reach-v3.mp4) |" in result.to_markdown(relative_to=video_dir)
    saved = json.loads(json.dumps(result.to_dict()))["videos"]["reach-v3"]
    assert saved["path"] == str(video_dir / "reach-v3.mp4")
    assert [e["success_step"] for e in saved["episodes"]] == [e.success_step for e in reach.episodes]


def test_a_policy_that_never_succeeds_plays_to_the_time_limit(tmp_path: Path) -> None:
    env = make_vector_env("MT10", ["reach-v3"], seed=0, max_episode_steps=12, render_size=32)
    try:
        fractions: list[float] = []
        videos = record_videos(ZeroActions(), env, tmp_path, preview=True, on_progress=fractions.append)
    finally:
        env.close()
    video = videos["reach-v3"]
    assert video.describe() == "no success in 12 steps"
    assert fractions == pytest.approx([step / 12 for step in range(1, 13)])
    frames = read_frames(tmp_path / "reach-v3.mp4")
    assert len(frames) == 13
    assert not any(has_border(frame, SUCCESS_COLOUR) for frame in frames)
    # The preview for a logger: every 4th frame (80 fps -> 20), in memory.
    assert video.preview is not None
    assert video.preview.shape == (4, 32, 32, 3)
    assert video.preview_fps == 20
    assert gif_bytes(video.preview, video.preview_fps).startswith(b"GIF89a")
    assert not list(tmp_path.glob(".*"))  # no partial file left behind


def test_record_videos_needs_a_rendering_env(tmp_path: Path) -> None:
    env = make_vector_env("MT10", ["reach-v3"], seed=0, max_episode_steps=5)
    try:
        with pytest.raises(ValueError, match=r"built with make_vector_env\(render_size=\.\.\.\)"):
            record_videos(ZeroActions(), env, tmp_path)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("size", "message"),
    [(8, "from 16 to 1024"), (2048, "from 16 to 1024"), (100, "multiple of 16"), (64.0, "integer")],
)
def test_bad_video_sizes_are_refused(size: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_video_size(size)  # type: ignore[arg-type]


def test_bad_video_options_fail_before_the_evaluation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown camera"):
        mtrl_fair.evaluate(
            ZeroActions(), tasks=["reach-v3"], episodes=1, video_dir=tmp_path, video_camera="x"
        )
    with pytest.raises(ValueError, match="video_episodes must be an integer >= 1"):
        mtrl_fair.evaluate(
            ZeroActions(), tasks=["reach-v3"], episodes=1, video_dir=tmp_path, video_episodes=0
        )
    assert not list(tmp_path.iterdir())
