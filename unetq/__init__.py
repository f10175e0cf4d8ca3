"""unetq: the method of "U-Net Fixed-Point Quantization for Medical Image Segmentation"
(AskariHemmat et al., HAL-MICCAI 2019, arXiv 1908.01073), written once and shared by the
EM, GM and NIH training scripts (each BASE script holds its dataset's whole experiment).

The method:
    quantize        fixed-point Qi.f (paper | saturating | pow2), INT, binary, ternary quantizers
    layers          the number format of a layer, the quantized conv, the activation quantizer, ternaryTanh
    models          the paper's U-Net
    losses          Dice, BCE + Dice
    metrics         per-slice segmentation metrics, Hausdorff / HD95, Rand index, aggregation
A run:
    config          the YAML schema, each dataset's recipe, validation, -o overrides
    config_docs     the configuration reference (docs/config.md), rendered from the schema
    data            the slice dataset and what a BASE's data module hands to a script
    transforms      augmentation (GM)
    engine          schedule, loaders, device and precision, one training step, the validation pass, modes
    session         what happens around a script's experiment: run folder, log, resume, signals, torchrun
    runfolder       the run folder: checked, claimed, its log header
    resume          the checks of a last.pt before a resume uses it
    checkpoint      reading and writing checkpoints safely
    runlog          log.txt, metrics.csv, summary.json, atomic rewrites
    runlock         one process per run folder
    distributed     torchrun helpers (ranks, shards, the epoch order)
    figures         curves, overlays, weight distributions
    tensorboard_log TensorBoard events of a run
    weights         where a run's weights came from and where its best model also goes
    paths           the project root, the BASE folders and how their modules are imported
Tools:
    newexp          a new experiment folder from a BASE
    sweep           many experiment folders in one command (sweep_runner: the child processes)
    paper_protocol  the paper's EM table at its protocol, on a CPU or a GPU
    results         the results tables and figures over run folders
    memory          bit accounting of a quantized model
    export          the packed model file (.uqp)
    intref          the integer-only reference forward pass
    onnx_export     ONNX / QCDQ / QONNX export and its check
    onnx_graph      the ONNX graph of a quantized U-Net (reference, QCDQ, QONNX flavours)
    original        the original repository's configs and checkpoints
    convert         an original checkpoint into this project's format
    bench           speed of the quantizers, the training step and the data pipeline
"""

__version__ = "0.1.0"
