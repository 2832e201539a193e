"""The package's two compiled parts, each optional:

- the gRPC front end (``serving.protocol._frontend``, C++ on grpc++'s callback server, bound to
  Python with pybind11). It builds where grpc++'s headers and pkg-config are (Debian:
  ``libgrpc++-dev pkg-config``; ``make`` installs them when it can). Where they are not, the
  package installs without it and serves gRPC with grpc.aio, the fallback
  (``serving.protocol.grpc_frontends``); ``grpc_frontend: compiled`` then refuses to start.
- the prediction log's hand-over (``serving.prediction_log._hand_over``, C on Python's own API).
  It builds wherever a C compiler is; where none is, the Python it mirrors runs instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FRONTEND = "serving.protocol._frontend"
SOURCE = "src/serving/protocol/_frontend.cpp"
HAND_OVER = "src/serving/prediction_log/_hand_over.c"


def _pkg_config(*args: str) -> list[str] | None:
    try:
        done = subprocess.run(["pkg-config", *args, "grpc++"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(done.stdout)


class OptionalBuildExt(build_ext):
    """Builds each part when it can; says why not, and goes on, when it cannot."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name != FRONTEND:
            try:
                super().build_extension(ext)
            except Exception as exc:  # no C compiler: the package still installs
                print(f"serving: {ext.name} did not build ({exc}); its Python runs instead")
            return
        cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
        if cflags is None or libs is None or os.environ.get("SERVING_NO_FRONTEND"):
            why = "SERVING_NO_FRONTEND is set" if os.environ.get("SERVING_NO_FRONTEND") else "no grpc++ (pkg-config)"
            print(f"serving: not building the compiled gRPC front end ({why}); gRPC is served by grpc.aio")
            return
        import pybind11

        ext.include_dirs.append(pybind11.get_include())
        ext.extra_compile_args += ["-std=c++17", "-O2", "-fvisibility=hidden", *cflags]
        ext.extra_link_args += libs
        try:
            super().build_extension(ext)
        except Exception as exc:  # a compiler or header problem: the package still installs
            print(f"serving: the compiled gRPC front end did not build ({exc}); gRPC is served by grpc.aio")


setup(
    ext_modules=[
        Extension(FRONTEND, [SOURCE], language="c++"),
        Extension("serving.prediction_log._hand_over", [HAND_OVER], extra_compile_args=["-O2"]),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
