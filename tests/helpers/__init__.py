"""Helpers the tests share (not tests, not fixtures: the fixtures are in tests/conftest.py).

- gateway: the in-process gateway, its config (the demo's route table), log reader, admin API calls
- process: the CLI and `tokenward serve` as subprocesses
- rawhttp: raw HTTP over sockets, the recording upstream's record, hardening and confusion configs
- nginx, scripted, topology, debian: nginx's config, a scripted raw-TCP upstream, Cluster and
  Sentinel set-ups, Debian packages installed on demand
"""
