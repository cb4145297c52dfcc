"""Declares the compiled extension; all metadata lives in pyproject.toml.

FASTBP_DEBUG=1 builds with Cython's bounds checks on and without optimisation.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTBP_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": not DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
}
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]

extensions = [
    Extension(
        "fastbp._core",
        ["fastbp/_core.pyx"],
        include_dirs=[np.get_include(), "csrc"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        depends=["csrc/fastbp.h", "csrc/kernels_impl.h"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
