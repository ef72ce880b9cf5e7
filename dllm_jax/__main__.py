import sys

from dllm_jax.cli import main

sys.exit(main())
