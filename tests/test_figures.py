"""The run's figures: drawn without pyplot, so importing and using unetq.figures leaves the backend of
the caller's session (a notebook's, say) as it was."""

import subprocess
import sys

from unetq.paths import PROJECT_ROOT

CHECK = """
import sys
import matplotlib
matplotlib.use("svg")                                   # the caller's own choice, not Agg
import numpy as np
from unetq import figures
images = [np.linspace(0, 1, 64).reshape(8, 8)]
masks = [np.eye(8, dtype=bool)]
figures.save_overlays(images, masks, masks, sys.argv[1] + "/overlay.png", titles=["slice 0"])
figures.plot_curves([{"epoch": 1, "lr": 1e-3, "dice": 50.0}, {"epoch": 2, "lr": 1e-3, "dice": 60.0}],
                    sys.argv[1] + "/curves.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_figures_keep_the_callers_backend_and_need_no_pyplot(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]
    for name in ("overlay.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"      # still PNG files
