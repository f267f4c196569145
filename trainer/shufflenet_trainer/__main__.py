"""`python -m shufflenet_trainer`: the same as `shufflenet-train`."""

import sys

from .cli import main

sys.exit(main())
