#!/usr/bin/env python
"""GM (Spinal Cord Gray Matter challenge, MRI): train / evaluate / visualize the quantized U-Net.

    cd gm/a6_0_w0_4 && python gmchallenge_unet.py -f config.yaml -t UNET [-o key=value ...]

The method (quantizers, U-Net, losses, metrics, engine) lives in the `unetq` package; this script
holds only the GM recipe (docs/method.md section 4) and hands the GM data (datasets.py, beside this
file's real location) to the shared command line.
"""

import sys

import gm_data  # GM_BASE/gm_data.py: Python puts this file's resolved folder on sys.path

from unetq.cli import run_script

# The paper's GM recipe; every value can be changed in the YAML or with -o.
RECIPE = {
    "batch_size": 16,
    "val_batch_size": 16,
    "loss": "dice",          # 1 - Dice, the batch soft Dice on sigmoid(logits)
    "lr_schedule": "cosine",  # annealing from lr to 0 over num_epochs
}

if __name__ == "__main__":
    sys.exit(run_script("gm", gm_data, RECIPE))
