"""The shipped configs: ml_collections config files, one per setting, with named variants.

Each file imports only `sid2video.config` and returns `config.base(...)` from `get_config(variant)`;
load one by path (`--config configs/kinetics600.py:small`) or by name (`--config kinetics600:small`).
"""
