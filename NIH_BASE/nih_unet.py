#!/usr/bin/env python
"""NIH (Pancreas-CT): train / evaluate / visualize the quantized U-Net.

    cd nih/a6_0_w0_4 && python nih_unet.py -f config.yaml -t UNET [-o key=value ...]

The method (quantizers, U-Net, losses, metrics, engine) lives in the `unetq` package; this script
holds only the NIH recipe (docs/method.md section 4) and hands the NIH data (datasets.py, beside this
file's real location) to the shared command line.
"""

import sys

from unetq.cli import run_script

# The paper's NIH recipe; every value can be changed in the YAML or with -o.
RECIPE = {
    "batch_size": 16,
    "val_batch_size": 16,
    "loss": "dice",          # 1 - soft Dice over the batch (the original's -Dice: same gradients)
    "lr_schedule": "cosine",  # cosine annealing to 0 over num_epochs
}

if __name__ == "__main__":
    import nih_data  # NIH_BASE/nih_data.py: Python puts this file's resolved folder on sys.path

    sys.exit(run_script("nih", nih_data, RECIPE))
