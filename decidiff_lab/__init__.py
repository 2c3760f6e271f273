"""decidiff-lab: the support package of a course that takes DeciDiffusion apart.

One module per idea: `flexible_unet` (U-Net-NAS), `architectures` (full-size configs),
`accounting` (params/FLOPs on the meta device), `presets` + `loading` (models, offline first),
`doctor` and `cli`.
"""

__version__ = "0.1.0"

import logging as _logging
import sys as _sys


class _PilFallbackNotice(_logging.Filter):
    """Drops one notice of transformers 5, and only that one: without torchvision, each
    `<Model>ImageProcessor` falls back to its PIL twin, which is what every Stable Diffusion
    pipeline used before transformers 5 (and ours never call: they ship no safety checker).
    Importing diffusers' pipelines touches two such names, so it was the first thing, in red,
    a learner saw in notebook 00. Every other warning of that logger passes."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_PilFallbackNotice())


class _Stdout(_logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is at each message (Jupyter's, pytest's capture)."""

    @property
    def stream(self):
        return _sys.stdout

    @stream.setter
    def stream(self, _value):  # logging.StreamHandler assigns it; the stream is always sys.stdout
        pass


# The library logs its few notices (`loading`'s "Using nano-deci (...) on cpu, ..." line, the hub's
# retry line, the low-VRAM memory plan) through `logging.getLogger(__name__)`. Learners have no
# logging set up, and those lines are part of the notebooks' committed outputs, where they were once
# `print`ed: so, unless `decidiff_lab`'s logger was configured before this import (a handler or a
# level on it), it gets one stdout handler that writes the bare message at INFO, exactly as print
# did, and does not pass records on to the root logger (no second copy where root is configured).
# To route them elsewhere: `logging.getLogger("decidiff_lab").handlers.clear()`, then set
# `propagate = True` (or add your own handler); `verbose=False` arguments still silence each one.
_logger = _logging.getLogger(__name__)
if not _logger.handlers and _logger.level == _logging.NOTSET:
    _handler = _Stdout()
    _handler.setFormatter(_logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(_logging.INFO)
    _logger.propagate = False

from .errors import UserError
# data/nano-deci/model_index.json names these two modules, and diffusers only loads classes from
# modules already imported: `import decidiff_lab` is what lets DiffusionPipeline open the folder.
from .flexible_unet import FlexibleUNet2DConditionModel
from .schedulers import SqueezedDPMSolverMultistepScheduler

__all__ = ["FlexibleUNet2DConditionModel", "SqueezedDPMSolverMultistepScheduler", "UserError", "__version__"]
