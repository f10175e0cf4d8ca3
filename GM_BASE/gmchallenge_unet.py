#!/usr/bin/env python
"""GM (Spinal Cord Gray Matter challenge MRI): the whole experiment of the quantized U-Net on one page.

    cd gm/a6_0_w0_4 && python gmchallenge_unet.py -f config.yaml -t UNET [-o key=value ...]

Reading top to bottom: the config (the GM recipe is the default: batch 16/16, 1 - soft Dice loss,
cosine schedule, the paper's fixed point; docs/method.md section 4), the data (gm_data.py beside this file),
the U-Net with its weight and activation formats, then the mode: train (normal, retrain, resume),
inference or visualize. To change the GM loss, optimizer or loop, change this file.

What happens around the experiment (run folder, lock, log, checkpoints, resume, signals, torchrun,
exit status) is unetq/session.py; the method is unetq/quantize.py, layers.py, models.py, losses.py,
metrics.py; the validation pass is unetq/engine.py.
"""

import sys

import torch

import gm_data  # GM_BASE/gm_data.py: Python puts this file's resolved folder on sys.path
from unetq.engine import evaluate, infer, lr_at, make_loader, overlay_indices, ternary_beta, train_step, visualize
from unetq.losses import build_loss
from unetq.models import UNet, formats
from unetq.session import Session


def build_model(cfg) -> UNet:
    """The paper's U-Net: its 12 quantized convs use the weight format, every activation quantizer the
    activation format (e.g. Q0.4 and Q6.0); the first block's convs and the head stay float."""
    weights, activations = formats(cfg)
    return UNet(weights, activations, activation=cfg.activation, dropout=cfg.dropout, base_width=cfg.base_width,
                init_type=cfg.init_type, first_block_activation=cfg.first_block_activation)


def train(run: Session, model: UNet, data, optimizer: torch.optim.Optimizer) -> None:
    """Train for cfg.num_epochs epochs; validate after each (the session records it and keeps best.pt)."""
    cfg = run.cfg
    loss_fn = build_loss(cfg.loss, cfg.legacy_double_sigmoid)
    train_loader = make_loader(data.train, cfg.batch_size, cfg, run.device, shuffle=True, world=run.world)
    val_loader = make_loader(data.val, cfg.val_batch_size, cfg, run.device, shuffle=False, world=run.world)
    keep = overlay_indices(len(data.val))              # the validation slices drawn as overlays
    for epoch in run.epochs():
        lr = lr_at(cfg, epoch)                          # cosine: from lr to 0 over num_epochs
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cfg.activation == "ternarytanh":
            model.set_ternary_beta(ternary_beta(cfg, epoch))
        for source in (data.train, train_loader.sampler):   # the (seed, epoch) order and augmentation
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)
        run.net.train()
        losses = []
        for x, y in run.batches(train_loader, f"epoch {epoch}"):
            losses.append(train_step(run.net, x, y, loss_fn, optimizer, run.compute))
        train_loss = run.train_loss(losses, epoch)
        metrics, kept = evaluate(model, val_loader, cfg, run.device, loss_fn, keep, run.compute, run.world)
        run.end_epoch(epoch, lr, train_loss, metrics, kept)


def main(argv=None) -> int:
    """Run the mode the config asks for; returns the exit status (2: a problem the message names)."""
    with Session("gm", argv) as run:
        cfg = run.config()
        model = build_model(cfg)
        run.load_weights(model)                         # retrain / inference / visualize / resume
        mode = cfg.operation_mode
        trains = mode in ("normal", "retrain", "resume")
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr) if trains else None
        data = None if mode == "visualize" else gm_data.build_datasets(cfg)
        run.start(data, optimizer)                      # from here on the run writes into its folder
        if mode == "visualize":
            run.done(figures=[str(p) for p in visualize(run)])
        elif mode == "inference":
            run.done(metrics=infer(run))
        else:
            train(run, model, data, optimizer)
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
