"""`python -m leanssl ...`: the command line, also as torchrun's module (`torchrun ... -m leanssl train ...`)."""

import sys

from .cli import main

sys.exit(main())
