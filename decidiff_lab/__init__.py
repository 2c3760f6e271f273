"""decidiff-lab: the support package of a course that takes DeciDiffusion apart.

One module per idea: `flexible_unet` (U-Net-NAS), `architectures` (full-size configs),
`accounting` (params/FLOPs on the meta device), `presets` + `loading` (models, offline first),
`doctor` and `cli`.
"""

__version__ = "0.1.0"

from .errors import UserError
# data/nano-deci/model_index.json names these two modules, and diffusers only loads classes from
# modules already imported: `import decidiff_lab` is what lets DiffusionPipeline open the folder.
from .flexible_unet import FlexibleUNet2DConditionModel
from .schedulers import SqueezedDPMSolverMultistepScheduler

__all__ = ["FlexibleUNet2DConditionModel", "SqueezedDPMSolverMultistepScheduler", "UserError", "__version__"]
