"""Only the compiled part of edgeasr; everything else is declared in pyproject.toml.

The CTC prefix beam search's inner loop is C (edgeasr/_native.c, plain CPython
API, no other dependency): `pip install` / `make setup` builds it with the machine's C compiler.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "edgeasr._native",
            ["edgeasr/_native.c"],
            # no -ffast-math: the search must do the Python reference's exact float arithmetic
            extra_compile_args=["-O2", "-fno-fast-math", "-ffp-contract=off"],
            # without a compiler, pip install still succeeds and the Python search runs (same
            # results, slower); make setup checks that the core was built
            optional=True,
        )
    ]
)
