"""`shufflenet_trainer.models`, the model's import path before the subpackages, kept for users.

The module object is `shufflenet_trainer.model.shufflenetv2` itself (not a copy of its
names), so attributes set on one are seen through the other.
"""

import sys

from .model import shufflenetv2

sys.modules[__name__] = shufflenetv2
