"""The one compiled part: the memory encryption engine's loop over OpenSSL's AES (libcrypto).

Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("sevsim.hw._xex", ["src/sevsim/hw/_xex.c"], libraries=["crypto"],
              extra_compile_args=["-O3"]),
])
