"""Builds the compiled part of the book (``marketpipe/book/side.pyx``); the rest is pyproject."""

from Cython.Build import cythonize
from setuptools import setup

setup(
    ext_modules=cythonize(
        ["marketpipe/book/side.pyx"], compiler_directives={"embedsignature": True}
    )
)
