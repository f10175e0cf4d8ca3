"""unetq: the method of "U-Net Fixed-Point Quantization for Medical Image Segmentation"
(AskariHemmat et al., HAL-MICCAI 2019, arXiv 1908.01073), written once and shared by the
EM, GM and NIH training scripts.

Modules (each small, each documented):
    quantize   fixed-point Qi.f (paper | saturating | pow2), INT, binary, ternary quantizers
    layers     quantized conv, activation quantizer, ternaryTanh
    models     the paper's U-Net and build_model(config)
    losses     Dice, BCE + Dice
    metrics    per-slice segmentation metrics, Hausdorff / HD95, Rand index, aggregation
    config     YAML schema, validation and command-line overrides
    engine     training / retraining / inference / visualisation
"""

__version__ = "0.1.0"
