"""The compiled parts: the memory encryption engine's loop over OpenSSL's AES (libcrypto), and
the C hooks that end a vCPU's time slice at an exact instruction boundary.

Everything else about the package is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("sevsim.hw._xex", ["src/sevsim/hw/_xex.c"], libraries=["crypto"],
              extra_compile_args=["-O3"]),
    Extension("sevsim.hw._quantum", ["src/sevsim/hw/_quantum.c"], extra_compile_args=["-O2"]),
])
