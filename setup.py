"""Builds the optional oneDNN convolution library msseg/models/_onednn_ffi*.so (csrc/).

Everything else about the package is in pyproject.toml. The build needs a C++17 compiler, the
XLA FFI headers (jax.ffi.include_dir(), from jaxlib) and the oneDNN headers and libdnnl (the
onednn-devel-cpu-gomp / onednn-cpu-gomp wheels, listed in [build-system] requires; or a oneDNN
installation under $DNNL_ROOT). When any of these is missing, or the compile fails, the
install still succeeds without the library and msseg uses its pure-JAX convolutions.
MSSEG_BUILD_ONEDNN=0 skips the build.

At run time msseg.models.onednn loads libdnnl.so.3 from the onednn-cpu-gomp runtime package
(RTLD_GLOBAL) before loading the library, so the library works against the installed runtime
whatever temporary build environment it was compiled in (same soname, libdnnl.so.3).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NAME = "msseg.models._onednn_ffi"


def _notice(msg: str) -> None:
    print(f"msseg: building without the oneDNN convolution library: {msg}", file=sys.stderr)


def _dist_file(dist_name: str, suffix: str) -> str | None:
    """The path of the file ending in `suffix` among those installed by `dist_name`, if any."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        path = os.path.normpath(str(dist.locate_file(f)))
        if path.replace(os.sep, "/").endswith("/" + suffix):
            return path
    return None


def _dnnl_paths() -> tuple[str, str] | str:
    """(include dir, lib dir) of oneDNN, or the reason none was found."""
    root = os.environ.get("DNNL_ROOT")
    if root:
        inc, lib = os.path.join(root, "include"), os.path.join(root, "lib")
        if not os.path.isdir(lib):
            lib = os.path.join(root, "lib64")
        return inc, lib
    hpp = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    so = _dist_file("onednn-cpu-gomp", "lib/libdnnl.so")
    if hpp and so:
        return hpp[: -len("/oneapi/dnnl/dnnl.hpp")], os.path.dirname(so)
    for prefix in (sys.prefix, "/usr", "/usr/local"):
        inc = os.path.join(prefix, "include")
        if os.path.exists(os.path.join(inc, "oneapi", "dnnl", "dnnl.hpp")):
            for lib in ("lib", "lib64", os.path.join("lib", "x86_64-linux-gnu")):
                if os.path.exists(os.path.join(prefix, lib, "libdnnl.so")):
                    return inc, os.path.join(prefix, lib)
    return "oneDNN headers/library not found (pip package onednn-devel-cpu-gomp, or DNNL_ROOT)"


def _ffi_include() -> str | None:
    try:
        import jax.ffi

        return jax.ffi.include_dir()
    except Exception:  # jax itself need not be importable in the build environment
        pass
    try:
        import jaxlib

        inc = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        return inc if os.path.isdir(inc) else None
    except ImportError:
        return None


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: it skips the library with a notice instead."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure means "no library"
            _notice(f"{type(e).__name__}: {e}")

    def build_extension(self, ext):
        if os.environ.get("MSSEG_BUILD_ONEDNN", "1") == "0":
            return _notice("MSSEG_BUILD_ONEDNN=0")
        if not sys.platform.startswith("linux"):
            return _notice(f"unsupported platform {sys.platform}")
        ffi = _ffi_include()
        if ffi is None:
            return _notice("XLA FFI headers not found (jaxlib)")
        paths = _dnnl_paths()
        if isinstance(paths, str):
            return _notice(paths)
        inc, lib = paths
        ext.include_dirs += [inc]
        ext.extra_compile_args += [f"-isystem{ffi}"]
        ext.library_dirs += [lib]
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            _notice(f"{type(e).__name__}: {e}")

    def get_outputs(self):
        # Only what was really built: an editable install must not map a missing library.
        return [p for p in super().get_outputs() if os.path.exists(p)]


ext = Extension(
    NAME,
    sources=["csrc/onednn_conv.cc"],
    language="c++",
    libraries=["dnnl"],
    # Non-editable installs: site-packages/msseg/models/ -> <venv>/lib, where the runtime
    # wheel puts libdnnl.so.3. msseg.models.onednn preloads it anyway.
    runtime_library_dirs=["$ORIGIN/../../../.."],
    extra_compile_args=["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-DNDEBUG"],
    optional=True,  # a compile or link error skips the library instead of failing the install
)

if sysconfig.get_platform().startswith("linux"):
    setup(ext_modules=[ext], cmdclass={"build_ext": OptionalBuildExt})
else:
    setup()
