"""The nano training recipe, one module per part, each read top to bottom:

- `recipe`: `Recipe` (budgets, hyper-parameters), the four-phase table `PHASES`, `recipe.json`;
- `data`: scenes rendered and precomputed into VAE latents and CLIP text states, per phase;
- `encoders`: the VAE and CLIP stages (time-budgeted), or the shipped ones;
- `unet`: the objective and the one U-Net loop (Accelerate: any device, any number of processes);
- `evaluation`: scores after each phase (checker, validation loss, one-step denoising);
- `train`: `train_nano`, the whole recipe (`decidiff-lab train-nano`);
- `mini`: notebook 07's small run of the same loop; `logs`, `plots`: its CSVs and figures.
"""

from .recipe import PHASES, Recipe

__all__ = ["PHASES", "Recipe"]
