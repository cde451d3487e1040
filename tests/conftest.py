import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The persistent compilation cache, as the CLI uses it ($LOPT_COMPILE_CACHE or
# ~/.cache/learned_opt/jax): a second run of the suite loads most programs instead of compiling.
from learned_opt import compile_cache  # noqa: E402

compile_cache.enable()
