"""Only the optional C accelerator of ``shale.tuple``; every other setting is in pyproject.toml.

``optional=True``: without a C compiler (or Python headers) the build skips the extension
with a warning and Shale installs as pure Python, which passes the same tests.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("shale._tuple_accel", ["src/shale/_tuple_accel.c"], optional=True)])
