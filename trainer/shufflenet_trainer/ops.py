"""`shufflenet_trainer.ops`, the shuffle ops' import path before the subpackages, kept for users.

The module object is `shufflenet_trainer.model.ops` itself (not a copy of its names), so
attributes set on one are seen through the other.
"""

import sys

from .model import ops

sys.modules[__name__] = ops
