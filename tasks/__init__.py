"""Thin Prefect tasks around :mod:`cci_core`. Importing the package (every Dask worker does when it
unpickles a task) makes Prefect's per-process services follow each task run's API
(:mod:`tasks.api_follow`)."""
from tasks.api_follow import install as _install_api_follow

_install_api_follow()
