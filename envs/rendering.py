"""Offscreen rendering of Meta-World scenes: the OpenGL backend, and frames from one sub-env.

MuJoCo renders offscreen through one of three OpenGL backends, chosen by the ``MUJOCO_GL`` environment
variable: ``egl`` (a GPU driver's), ``osmesa`` (Mesa's software renderer, on any CPU; Debian's
``libosmesa6``) or ``glfw`` (a desktop window system). :func:`prepare_rendering` picks one before the
first frame: the user's ``MUJOCO_GL`` when set, else EGL when an NVIDIA driver is present, else
OSMesa. It then opens and frees a 1×1 context, so that a missing library is one
:class:`RenderingError` line naming the Debian package to install, before any episode runs.

Gymnasium reads ``MUJOCO_GL`` when it builds a sub-env's first viewer, and PyOpenGL fixes its
platform (``PYOPENGL_PLATFORM``) when it is first imported: both come after this module sets them.
mujoco itself reads ``MUJOCO_GL`` when imported, and its import fails when the user's backend has
no library; :func:`import_mujoco` turns that failure into the same one line.

:class:`FrameRenderer` draws one sub-env of a vector env built with ``render_mode="rgb_array"``.
Gymnasium gives every sub-env its own OpenGL context but makes a context current only when it is
created, so a vector env's sub-envs would all draw into the last one's; the renderer makes its own
context current before each frame. On OSMesa (a software renderer) it turns off what costs most for
what is hard to see at video sizes: shadows, reflections and 4× multisampling. On a 2-core CPU a
240×240 frame then takes 11.5 ms instead of 135 ms, a 64×64 one 6.9 ms instead of 109 ms
(``scripts/bench_rendering.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CAMERAS",
    "GPU_DRIVER_FILES",
    "FrameRenderer",
    "RenderingError",
    "check_camera",
    "choose_backend",
    "import_mujoco",
    "prepare_rendering",
]

CAMERAS: tuple[str, ...] = (
    "corner3",
    "corner",
    "corner2",
    "corner4",
    "topview",
    "behindGripper",
    "gripperPOV",
    "free",
)
"""The cameras of Meta-World's scenes, the default first; ``free`` is MuJoCo's free camera on the
whole scene. (``corner`` looks up at the table from below.)"""

GPU_DRIVER_FILES: tuple[str, ...] = ("/proc/driver/nvidia/version", "/dev/nvidiactl")
"""Files that exist when an NVIDIA driver is loaded: EGL can then render on the GPU."""

_BACKENDS = ("egl", "osmesa", "glfw")
# The Debian package that provides each backend's library.
_DEBIAN_PACKAGE = {"egl": "libegl1", "osmesa": "libosmesa6", "glfw": "libglfw3"}


class RenderingError(ImportError):
    """An OpenGL library that MuJoCo needs cannot be loaded; the message names the package to install.

    An ``ImportError``, since mujoco's own import fails this way (see :func:`import_mujoco`), before
    anything that could name this class is importable; ``debian_package`` tells it apart.
    """

    def __init__(self, message: str, debian_package: str | None = None) -> None:
        super().__init__(message)
        self.debian_package = debian_package


def choose_backend(environ: Any = None, driver_files: tuple[str, ...] | None = None) -> str:
    """``MUJOCO_GL`` when set, else ``egl`` when a GPU driver is present, else ``osmesa``."""
    environ = os.environ if environ is None else environ
    driver_files = GPU_DRIVER_FILES if driver_files is None else driver_files
    chosen = str(environ.get("MUJOCO_GL", "")).strip().lower()
    if chosen:
        return chosen
    return "egl" if any(Path(path).exists() for path in driver_files) else "osmesa"


def import_mujoco() -> None:
    """Import mujoco, turning the failure a missing OpenGL library causes into one clear line.

    mujoco opens the library of the ``MUJOCO_GL`` backend when it is imported (for its own
    ``mujoco.Renderer``), so with ``MUJOCO_GL=osmesa`` and no libOSMesa, importing Meta-World
    fails deep inside PyOpenGL.
    """
    try:
        import mujoco  # noqa: F401
    except Exception as error:
        backend = os.environ.get("MUJOCO_GL", "").strip().lower()
        if not backend:
            raise  # not a rendering problem
        if backend not in _BACKENDS:
            raise RenderingError(_unknown_backend_message(backend)) from None
        raise RenderingError(_missing_library_message(backend, error), _DEBIAN_PACKAGE[backend]) from None


_prepared: str | None = None


def prepare_rendering() -> str:
    """Choose the backend, set ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``), and check that it renders.

    Returns the backend's name. Checked once per process; later calls return the same name.

    Raises:
        RenderingError: the backend's library is missing or cannot open a context (one line, naming
            the Debian package that provides it).
    """
    global _prepared
    if _prepared is not None:
        return _prepared
    backend = choose_backend()
    if backend not in _BACKENDS:
        raise RenderingError(_unknown_backend_message(backend))
    os.environ["MUJOCO_GL"] = backend
    platform = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if backend in ("egl", "osmesa"):
        if platform and platform != backend:
            raise RenderingError(
                f"PYOPENGL_PLATFORM={platform} does not match MUJOCO_GL={backend}; unset PYOPENGL_PLATFORM "
                "or set both to the same backend"
            )
        os.environ["PYOPENGL_PLATFORM"] = backend
    try:
        _open_and_free_context(backend)
    except Exception as error:  # a missing library surfaces as ImportError, OSError, RuntimeError...
        raise RenderingError(_missing_library_message(backend, error), _DEBIAN_PACKAGE[backend]) from None
    _prepared = backend
    return backend


def _open_and_free_context(backend: str) -> None:
    """Open a 1×1 context with the very class gymnasium's viewer will use, then free it."""
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    context = GLContext(1, 1)
    context.make_current()
    context.free()


def _unknown_backend_message(backend: str) -> str:
    return (
        f"MUJOCO_GL={backend!r} cannot render offscreen; use egl (a GPU) or osmesa (any CPU), "
        "or unset it to choose automatically"
    )


def _missing_library_message(backend: str, error: BaseException) -> str:
    package = _DEBIAN_PACKAGE[backend]
    reason = " ".join(str(error).split()) or type(error).__name__
    hint = {
        "egl": "or render on the CPU with MUJOCO_GL=osmesa (apt-get install libosmesa6)",
        "osmesa": "or set MUJOCO_GL=egl on a machine with a GPU driver",
        "glfw": "or unset MUJOCO_GL to render offscreen with OSMesa or EGL",
    }[backend]
    return (
        f"MuJoCo cannot render with MUJOCO_GL={backend} ({reason}); install its library with "
        f"`apt-get install {package}` (Debian/Ubuntu), {hint}"
    )


def check_camera(camera: str) -> None:
    """Raise ``ValueError`` unless ``camera`` is one of :data:`CAMERAS`."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; allowed: {', '.join(CAMERAS)}")


class FrameRenderer:
    """Frames of one sub-env built with ``render_mode="rgb_array"``, each ``(height, width, 3)`` uint8.

    ``software=True`` (for OSMesa) draws without shadows, reflections and multisampling.
    """

    def __init__(self, env: Any, *, software: bool) -> None:
        import mujoco

        self._env = env
        if software:
            # Read when the viewer's MuJoCo context is made, on the first render below.
            env.unwrapped.model.vis.quality.offsamples = 0
        env.render()  # builds the viewer and its context
        self._viewer = env.unwrapped.mujoco_renderer.viewer
        if software:
            self._viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def frame(self) -> np.ndarray:
        """The scene as it is now."""
        self._viewer.make_context_current()
        return np.asarray(self._env.render())
