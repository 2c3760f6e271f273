"""decidiff-lab: the support package of a course that takes DeciDiffusion apart.

One module per idea: `flexible_unet` (U-Net-NAS), `architectures` (full-size configs),
`accounting` (params/FLOPs on the meta device), `presets` + `loading` (models, offline first),
`doctor` and `cli`.
"""

__version__ = "0.1.0"

import logging as _logging


class _PilFallbackNotice(_logging.Filter):
    """Drops one notice of transformers 5, and only that one: without torchvision, each
    `<Model>ImageProcessor` falls back to its PIL twin, which is what every Stable Diffusion
    pipeline used before transformers 5 (and ours never call: they ship no safety checker).
    Importing diffusers' pipelines touches two such names, so it was the first thing, in red,
    a learner saw in notebook 00. Every other warning of that logger passes."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_PilFallbackNotice())

from .errors import UserError
# data/nano-deci/model_index.json names these two modules, and diffusers only loads classes from
# modules already imported: `import decidiff_lab` is what lets DiffusionPipeline open the folder.
from .flexible_unet import FlexibleUNet2DConditionModel
from .schedulers import SqueezedDPMSolverMultistepScheduler

__all__ = ["FlexibleUNet2DConditionModel", "SqueezedDPMSolverMultistepScheduler", "UserError", "__version__"]
