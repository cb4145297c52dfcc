"""Declares the compiled extension; all metadata lives in pyproject.toml.

Build switches (environment variables, read at build time; tools/sanitize.sh uses them):

FASTBP_DEBUG=1     the checked build: Cython's bounds, initialisation and None checks on,
                   C division semantics checked, compiled with -O0 -g.
FASTBP_SANITIZE=1  compiled and linked with AddressSanitizer and UndefinedBehaviorSanitizer
                   (-fsanitize=address,undefined -fno-sanitize-recover=all
                   -fno-omit-frame-pointer, -O1 -g). Import needs libasan preloaded:
                   see docs/robustness.md. Combines with FASTBP_DEBUG=1.

Each variant other than the release one writes its generated C file under build/cython-<variant>/
(never over fastbp/_core.c), and switching variants forces a rebuild, so the directives
really reach the generated code and an in-place build never keeps a stale extension.

Before Cython runs, each fastbp/*.tp template is rendered with Cython's Tempita into the
file named without .tp (fastbp/_kernels.pxd: every C kernel declared once for both dtypes);
the rendered files are build outputs, not kept in git.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _switch(name: str) -> bool:
    """A build switch: 1/true/yes/on, or unset/empty/0/false/no/off (anything else is
    refused: FASTBP_DEBUG=false made the -O0 checked build)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"{name}={os.environ[name]!r}: use 1 (on) or 0 (off)")


def render_templates() -> None:
    """fastbp/X.tp -> fastbp/X, rewritten only when its text changes (Cython rebuilds
    whatever cimports a file whose time changed)."""
    from Cython import Tempita
    for template in sorted(glob.glob(os.path.join("fastbp", "*.tp"))):
        with open(template) as stream:
            text = Tempita.Template(stream.read(), name=template).substitute()
        target = template[:-len(".tp")]
        try:
            with open(target) as stream:
                if stream.read() == text:
                    continue
        except OSError:
            pass
        with open(target, "w") as stream:
            stream.write(text)


DEBUG = _switch("FASTBP_DEBUG")
SANITIZE = _switch("FASTBP_SANITIZE")
VARIANT = "-".join(name for name, on in (("debug", DEBUG), ("sanitize", SANITIZE)) if on) \
    or "release"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": not DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
}
if DEBUG:
    compile_args = ["-O0", "-g"]
elif SANITIZE:
    compile_args = ["-O1", "-g"]
else:
    compile_args = ["-O3"]
# -fno-trapping-math lets the compiler if-convert (and so vectorise) the element-wise
# kernels' selects and float-to-int conversions, -fno-math-errno inlines sqrt: fastbp
# never reads FP exception flags or errno. -fopenmp-simd honours `#pragma omp simd`
# without linking OpenMP.
compile_args += ["-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd"]
link_args = []
if SANITIZE:
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"]
    compile_args += sanitizers
    link_args += sanitizers

extensions = [
    Extension(
        "fastbp._core",
        ["fastbp/_core.pyx"],
        include_dirs=[np.get_include(), "csrc"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        # the core calls libm's exp, log, tanh, erfc...: named, not left to the interpreter
        # having loaded it
        libraries=["m"] if os.name == "posix" else [],
        # every file the extension is built from (a header missing here, included only
        # through another, was edited without a rebuild: the stale extension was kept)
        depends=sorted(glob.glob("csrc/*.h") + glob.glob("fastbp/*.pxi")
                       + glob.glob("fastbp/*.pxd") + glob.glob("fastbp/*.tp")),
    )
]

STAMP = os.path.join("build", "fastbp-variant.txt")


class VariantBuildExt(build_ext):
    """Rebuilds everything when the variant differs from the one last built here."""

    def run(self):
        try:
            with open(STAMP) as stream:
                previous = stream.read().strip()
        except OSError:
            previous = None
        if previous != VARIANT:
            self.force = True
        super().run()
        os.makedirs(os.path.dirname(STAMP), exist_ok=True)
        with open(STAMP, "w") as stream:
            stream.write(VARIANT + "\n")


render_templates()
setup(
    ext_modules=cythonize(
        extensions, compiler_directives=directives,
        build_dir=None if VARIANT == "release" else os.path.join("build", f"cython-{VARIANT}")),
    cmdclass={"build_ext": VariantBuildExt},
)
