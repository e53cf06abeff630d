"""ml_collections configs, one file per setting, named variants: `configs/kinetics600.py:small`.

`validate(config)` checks a whole config at start-up (configs/common.py).
"""

from configs.common import validate  # noqa: F401
