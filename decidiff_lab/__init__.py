"""decidiff-lab: the support package of a course that takes DeciDiffusion apart.

One module per idea: `flexible_unet` (U-Net-NAS), `architectures` (full-size configs),
`accounting` (params/FLOPs on the meta device), `presets` + `loading` (models, offline first),
`doctor` and `cli`.
"""

__version__ = "0.1.0"

from .errors import UserError
from .flexible_unet import FlexibleUNet2DConditionModel

__all__ = ["FlexibleUNet2DConditionModel", "UserError", "__version__"]
