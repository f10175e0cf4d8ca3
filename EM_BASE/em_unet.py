#!/usr/bin/env python
"""EM (ISBI 2012 electron microscopy): train / evaluate / visualize the quantized U-Net.

    cd em/a6_0_w0_4 && python em_unet.py -f config.yaml -t UNET [-o key=value ...]

The method (quantizers, U-Net, losses, metrics, engine) lives in the `unetq` package; this script
holds only the EM recipe (docs/method.md section 4) and hands the EM data (datasets.py, beside this
file's real location) to the shared command line.
"""

import sys

import em_data  # EM_BASE/em_data.py: Python puts this file's resolved folder on sys.path

from unetq.cli import run_script

# The paper's EM recipe; every value can be changed in the YAML or with -o.
RECIPE = {
    "batch_size": 5,
    "val_batch_size": 4,
    "loss": "bce_dice",      # 0.5 BCE + 0.5 (1 - Dice), on logits (the original's double sigmoid: legacy_double_sigmoid)
    "lr_schedule": "step",   # x0.1 at epochs N/5, 2N/5, 3N/5, 4N/5
    "fixed_mode": "pow2",    # the authors' EM code rounded FIXED to powers of two (docs/method.md section 1)
}

if __name__ == "__main__":
    sys.exit(run_script("em", em_data, RECIPE))
