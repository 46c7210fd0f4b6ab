"""sa2va-shards: exact, deterministic WebDataset shards for Sa2VA-style region-level training.

Importing this package never imports Ray; the Ray orchestration lives in the `pipeline` package.
"""

__version__ = "0.1.0"

from sa2va_shards.config import BuildConfig, load_config, parse_config  # noqa: E402
from sa2va_shards.errors import ConfigError, Reason, SampleError  # noqa: E402

__all__ = [
    "BuildConfig",
    "ConfigError",
    "Reason",
    "SampleError",
    "__version__",
    "load_config",
    "parse_config",
]
