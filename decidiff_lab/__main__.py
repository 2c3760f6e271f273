"""`python -m decidiff_lab ...` is `decidiff-lab ...`; `accelerate launch -m decidiff_lab train-nano` needs it."""

from .cli import main

raise SystemExit(main())
