"""Lab hosts: disposable Debian hosts booted with systemd-nspawn and reached by SSH on loopback.

The Python API lives in :mod:`vllama_provision.lab.labs` (``up``, ``down``, ``status``...), the
command line in :mod:`vllama_provision.lab.cli` and the pytest fixtures in
:mod:`vllama_provision.lab.pytest_plugin`.
"""
