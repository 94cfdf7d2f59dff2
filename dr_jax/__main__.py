"""`python -m dr_jax` is the same as the `dr-jax` command."""

import sys

from dr_jax.cli import main

sys.exit(main())
