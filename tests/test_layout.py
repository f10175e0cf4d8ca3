"""The shape of the code a newcomer reads: each BASE script is its dataset's whole experiment on one
page, close to the method it runs, and no module grows past what one can read at a sitting."""

import inspect
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from unetq import quantize
from unetq.paths import BASES, PROJECT_ROOT

TINY = {"dataset": "em", "num_epochs": 1, "base_width": 4, "phantom_images": 4, "val_sections": 2,
        "batch_size": 2, "val_batch_size": 2, "quantization": "FIXED", "activation_i_width": 6,
        "activation_f_width": 0, "weight_i_width": 0, "weight_f_width": 4, "overlay_every": 0,
        "tensorboard": False, "experiment_name": "depth", "threshold": 0.5}
MAX_DEPTH = 8          # frames of project code from the script to the quantizer (issue 15)
MAX_SCRIPT_LINES = 150
MAX_MODULE_LINES = 500


def _project_frames(stack) -> list[str]:
    """The frames of ``stack`` in the project's own code (not tests, not torch or the standard library)."""
    names = []
    for frame in stack:
        path = Path(frame.filename).resolve()
        if path.is_file() and PROJECT_ROOT in path.parents and "tests" not in path.relative_to(PROJECT_ROOT).parts:
            names.append(f"{path.relative_to(PROJECT_ROOT)}:{frame.function}")
    return names


@pytest.mark.parametrize("base", ["em"])
def test_the_quantizer_is_at_most_8_frames_below_the_script(base, tmp_path, monkeypatch):
    """Run the EM script as `python em_unet.py -f config.yaml` does and look at the stack when the
    weight quantizer runs during training: a reader following the calls meets at most 8 functions."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"UNET": TINY}))
    seen = []
    real = quantize.fixed_point

    def spy(x, i_bits, f_bits, mode="paper"):
        if x.requires_grad and not seen:           # a weight, in a training step
            seen.append(_project_frames(inspect.stack()[1:])[::-1])
        return real(x, i_bits, f_bits, mode)

    monkeypatch.setattr(quantize, "fixed_point", spy)
    monkeypatch.setattr(sys, "argv", ["em_unet.py", "-f", str(tmp_path / "config.yaml"), "-q"])
    script = BASES[base].folder / BASES[base].script
    monkeypatch.syspath_prepend(str(script.parent))      # what Python does for a script it runs
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 0
    chain = seen[0] + ["unetq/quantize.py:fixed_point"]
    assert chain[0] == f"{script.relative_to(PROJECT_ROOT)}:<module>", chain
    assert len(chain) <= MAX_DEPTH, " -> ".join(chain)


@pytest.mark.parametrize("base", sorted(BASES))
def test_each_base_script_is_one_page_with_its_loop(base):
    script = BASES[base].folder / BASES[base].script
    text = script.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_SCRIPT_LINES
    # the experiment is in the script: the model with its formats, the optimizer, the loss, the loop
    for piece in ("UNet(", "torch.optim.Adam(", "build_loss(", "for epoch in run.epochs()", "train_step(",
                  "evaluate(", "lr_at("):
        assert piece in text, f"{script.name} does not show {piece}"


# Modules allowed past MAX_MODULE_LINES, with the reason (kept short on purpose: the list should shrink).
LONG_MODULES: dict[str, str] = {}


def test_no_module_is_longer_than_a_sitting():
    files = sorted([*PROJECT_ROOT.glob("unetq/**/*.py"), *PROJECT_ROOT.glob("*_BASE/*.py"),
                    *PROJECT_ROOT.glob("pre-processing/*.py")])
    long = {str(f.relative_to(PROJECT_ROOT)): n for f in files
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert set(long) <= set(LONG_MODULES), long


def test_the_package_docstring_names_every_module():
    import unetq

    modules = {p.stem for p in (PROJECT_ROOT / "unetq").glob("*.py") if p.stem != "__init__"} | {"results"}
    named = {line.split()[0] for line in unetq.__doc__.splitlines() if line.startswith("    ")}
    missing = modules - named - {"sweep_runner"}          # named beside sweep
    assert not missing, f"unetq/__init__.py does not name {sorted(missing)}"
