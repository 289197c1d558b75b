"""Tests of mtrl_fair.envs.rendering: the backend's choice, its check, and one line when it fails."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from video_checks import WITHOUT_OSMESA, run_python

from mtrl_fair.envs import make_vector_env
from mtrl_fair.envs.rendering import FrameRenderer, check_camera, choose_backend, prepare_rendering


def test_the_users_backend_comes_first(tmp_path: Path) -> None:
    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version")
    assert choose_backend({"MUJOCO_GL": "OSMesa"}, (str(driver),)) == "osmesa"
    assert choose_backend({"MUJOCO_GL": "egl"}, ()) == "egl"


def test_egl_with_a_gpu_driver_osmesa_without(tmp_path: Path) -> None:
    driver = tmp_path / "nvidiactl"
    assert choose_backend({}, (str(driver),)) == "osmesa"
    driver.write_text("")
    assert choose_backend({}, (str(driver),)) == "egl"
    assert choose_backend({"MUJOCO_GL": "  "}, (str(driver),)) == "egl"


def test_this_machine_renders_frames_that_differ_per_sub_env() -> None:
    backend = prepare_rendering()
    assert backend in ("egl", "osmesa", "glfw")
    assert os.environ["MUJOCO_GL"] == backend
    env = make_vector_env("MT10", ["reach-v3", "drawer-close-v3"], seed=0, render_size=48)
    try:
        env.reset()
        frames = [FrameRenderer(sub_env, software=backend == "osmesa").frame() for sub_env in env.envs]
        # Each sub-env draws into its own context: the drawer is only in the second scene.
        again = [FrameRenderer(sub_env, software=backend == "osmesa").frame() for sub_env in reversed(env.envs)][::-1]
    finally:
        env.close()
    assert all(frame.shape == (48, 48, 3) and frame.dtype == np.uint8 for frame in frames)
    assert all(frame.std() > 10 for frame in frames)  # a scene, not a blank image
    assert not np.array_equal(frames[0], frames[1])
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))


CHECK_RENDERING = """
try:
    from mtrl_fair.envs import rendering
    rendering.GPU_DRIVER_FILES = ()  # as on a machine without a GPU driver
    rendering.prepare_rendering()
except ImportError as error:
    print(type(error).__name__, error)
"""


@pytest.mark.parametrize(
    "users_backend",
    [
        "osmesa",  # set by the user: mujoco's own import is what fails
        "",  # chosen here: the check before the first frame fails
    ],
)
def test_a_missing_osmesa_library_is_one_line_naming_the_package(users_backend: str) -> None:
    done = run_python(
        WITHOUT_OSMESA + CHECK_RENDERING, env={"MUJOCO_GL": users_backend, "PYOPENGL_PLATFORM": ""}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("RenderingError MuJoCo cannot render with MUJOCO_GL=osmesa")
    assert "apt-get install libosmesa6" in lines[0]


def test_a_backend_that_cannot_render_offscreen_is_refused() -> None:
    done = run_python(CHECK_RENDERING, env={"MUJOCO_GL": "cgl"})
    assert "MUJOCO_GL='cgl' cannot render offscreen" in done.stdout


@pytest.mark.parametrize("camera", ["corner3", "topview", "free"])
def test_known_cameras_pass(camera: str) -> None:
    check_camera(camera)


def test_an_unknown_camera_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"^unknown camera 'side'; allowed: corner3, corner, "):
        check_camera("side")
