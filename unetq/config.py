"""The experiment configuration: the paper's YAML format, validated into one typed object.

A config file holds one or more top-level sections (the paper used ``UNET``); ``-t`` picks one.
Inside it, the paper's keys (dataset, lr, num_epochs, model_type, init_type, quantization, the four
widths, gpu_core_num, trained_model, experiment_name, log_output_dir, operation_mode, activation,
dropout) plus our additions, each with a documented default (``python -m unetq.config`` prints the
table, ``--markdown`` docs/config.md). Values of choice keys are case-insensitive, as in the original.
Precedence: default (the dataset's recipe, :data:`RECIPES`) < the YAML file < ``-o key=value``.
Every problem raises :class:`ConfigError` with one line naming the file, the key, the bad value and
what is allowed; nothing is written before the whole config has been validated.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from . import original
from .paths import BASES, base_module


class ConfigError(ValueError):
    """A bad configuration; the message is one line meant for the user."""


_TRUE = {"true", "yes", "on", "enable", "enabled", "1"}
_FALSE = {"false", "no", "off", "disable", "disabled", "0", "none"}


@dataclass(frozen=True)
class Field:
    """One config key: its type (int | float | bool | str | choice | path), default, limits, help."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    nullable: bool = False

    def allowed(self) -> str:
        """What the key accepts, in words (used in error messages and the key table)."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true/false (or enable/disable)"
        if self.kind in ("int", "float"):
            word = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None:
                return f"{word} from {_fmt(self.low)} to {_fmt(self.high)}"
            if self.low is not None:
                return f"{word} >= {_fmt(self.low)}"
            return word
        return "a path" if self.kind == "path" else "a string"

    def parse(self, value: Any) -> Any:
        """Check and canonicalise one value; raises ValueError with the reason."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError("must not be empty")
        return getattr(self, "_parse_" + self.kind)(value)

    def _parse_int(self, value):
        if isinstance(value, bool):
            raise ValueError("is a boolean")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError("is not an integer") from None
        if not isinstance(value, int):
            raise ValueError("is not an integer")
        return self._in_range(value)

    def _parse_float(self, value):
        if isinstance(value, bool):
            raise ValueError("is a boolean")
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError("is not a number") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("is not a finite number")
        return self._in_range(float(value))

    def _in_range(self, value):
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError("is out of range")
        return value

    def _parse_bool(self, value):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("is not a boolean")

    def _parse_choice(self, value):
        text = str(value).strip().lower()
        if text not in self.choices:
            raise ValueError("is not allowed")
        return text

    def _parse_str(self, value):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("is not a string")
        text = str(value).strip()
        if not text:
            raise ValueError("is empty")
        if "\x00" in text:      # no file name can hold one: os calls would raise ValueError mid-run
            raise ValueError("holds a NUL byte")
        return text

    _parse_path = _parse_str


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters: a value from a file can be
    arbitrarily large, and a message must stay one short line. Containers are not expanded beyond
    what the limit shows (repr of a huge list is never built)."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<a {type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# Bit widths: 0..16 per part; FIXED additionally needs i + f in 1..23 (exact in float32).
_WIDTH = dict(kind="int", default=0, low=0, high=16)

COMMON_FIELDS: tuple[Field, ...] = (
    # --- the paper's keys ---
    Field("dataset", "str", None, "a free label, shown in the log (as in the paper's README): the script "
          "decides the dataset; a label naming another dataset gives a notice", nullable=True),
    Field("lr", "float", 1e-3, "Adam learning rate", low=1e-12, high=10.0),
    Field("num_epochs", "int", 200, "training epochs", low=1, high=100000),
    Field("model_type", "choice", "unet", "network (the paper's U-Net)", choices=("unet",)),
    Field("init_type", "choice", "uniform",
          "quantized-conv init: uniform = U(-1,1) (what the original ran when quantizing), glorot, torch "
          "(PyTorch's default on every conv: what the original ran for Normal)", choices=("uniform", "glorot", "torch")),
    Field("quantization", "choice", "normal", "normal | fixed | int | bnn | ternary",
          choices=("normal", "fixed", "int", "bnn", "ternary")),
    Field("activation_i_width", help="activation integer bits i of Qi.f (INT: the bit count n; the f width is then unused)",
          **_WIDTH),
    Field("activation_f_width", help="activation fraction bits", **_WIDTH),
    Field("weight_i_width", help="weight integer bits i of Qi.f (INT: the bit count n; the f width is then unused)",
          **_WIDTH),
    Field("weight_f_width", help="weight fraction bits", **_WIDTH),
    Field("gpu_core_num", "int", 0, "CUDA device index (CPU is used, with a notice, when CUDA is absent)",
          low=0, high=1024),
    Field("trained_model", "path", None, "checkpoint for retrain / inference / visualize (resume always reads the run's own last.pt)",
          nullable=True),
    Field("experiment_name", "str", None, "run folder name (default: the config's folder name)", nullable=True),
    Field("log_output_dir", "path", "runs", "where run folders go (relative to the config file)"),
    Field("operation_mode", "choice", "normal", "normal | retrain | inference | visualize | resume",
          choices=("normal", "retrain", "inference", "visualize", "resume")),
    Field("activation", "choice", "relu", "relu | tanh | ternarytanh", choices=("relu", "tanh", "ternarytanh")),
    Field("dropout", "bool", False, "Dropout2d(0.4) after every BatchNorm (enable | disable)"),
    # --- our additions ---
    Field("fixed_mode", "choice", "paper", "fixed-point mode for FIXED: paper | saturating | pow2",
          choices=("paper", "saturating", "pow2")),
    Field("base_width", "int", 64, "U-Net width of the first block (64 = the paper)", low=1, high=512),
    Field("batch_size", "int", 16, "training batch size (under torchrun: the global batch, shared by the processes)",
          low=1, high=100000),
    Field("val_batch_size", "int", 16, "validation batch size", low=1, high=100000),
    Field("loss", "choice", "dice", "dice | bce_dice", choices=("dice", "bce_dice")),
    Field("legacy_double_sigmoid", "bool", False, "reproduce the original EM loss bug (second sigmoid)"),
    Field("original_code", "bool", False, "run what the authors' code ran for every key whose meaning differs "
          "here (init_type, activation, dropout, fixed_mode, ...; docs/original-experiments.md); the log lists each change"),
    Field("first_block_activation", "choice", "same", "activation of the first encoder block: same (as "
          "activation) | relu (the original GM model's, with ternarytanh)", choices=("same", "relu")),
    Field("lr_schedule", "choice", "cosine", "step (x0.1 every num_epochs/5) | cosine (to 0) | constant",
          choices=("step", "cosine", "constant")),
    Field("threshold", "float", 0.999, "probability threshold of the prediction (paper: 0.999; the GM and NIH demos use 0.5)",
          low=1e-6, high=1 - 1e-9),
    Field("hd95_mode", "choice", "max", "HD95 definition: max of directed 95th percentiles | pooled",
          choices=("max", "pooled")),
    Field("seed", "int", 0, "seed of torch, numpy, python and the data order", low=0, high=2**31 - 1),
    Field("data_source", "choice", "phantom",
          "phantom (built-in synthetic) | sample (../shared/data) | real (data_path)",
          choices=("phantom", "sample", "real")),
    Field("data_path", "path", None, "dataset location for data_source: real (or to override sample)",
          nullable=True),
    Field("num_workers", "int", 0, "DataLoader worker processes", low=0, high=256),
    Field("device", "str", "auto", "auto | cpu | cuda | cuda:N"),
    Field("amp", "choice", "off",
          "mixed precision: off (float32) | bf16 | fp16 (autocast; fp16 adds a gradient scaler). Qi.f stays exact "
          "only if it fits the type (bf16: 8 significant bits, fp16: 11), e.g. Q6.0 and Q0.4 but not Q8.8",
          choices=("off", "bf16", "fp16")),
    Field("sync_bn", "bool", False, "under torchrun: SyncBatchNorm (statistics over the global batch; CUDA only)"),
    Field("overlay_every", "int", 10, "write prediction overlays every N epochs (0: only at the end)",
          low=0, high=100000),
    Field("tensorboard", "bool", True, "TensorBoard event files in the run folder: losses, metrics, lr, overlays, "
          "weight histograms (needs the tensorboard package; docs/onnx.md)"),
)


class Config:
    """A validated configuration: attribute access to every key (``cfg.lr``), the file it came
    from, and path resolution relative to that file's folder."""

    def __init__(self, values: Mapping[str, Any], source: Path | None, section: str,
                 notices: Sequence[str] = (), label: str | None = None):
        self._values = dict(values)
        self.source = source
        self.section = section
        self.notices = list(notices)      # lines for the run's header (dataset label, original code)
        self.label = label                # the ``dataset`` text as the file gave it

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The value of key ``name`` (``default`` if the config has no such key)."""
        return self._values.get(name, default)

    def to_dict(self) -> dict:
        """All keys with their resolved values (what a run records as its config)."""
        return dict(self._values)

    @property
    def folder(self) -> Path:
        """The folder relative paths are resolved against (the config file's folder)."""
        return self.source.parent if self.source else Path.cwd()

    def path(self, key: str) -> Path | None:
        """The value of a path key, resolved against :attr:`folder` (None when unset)."""
        value = self._values.get(key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.folder / p)


# Keys that say where a run writes and how fast it runs, never what it computes: a resume may change
# them, and the sweep does not compare them when it decides whether a finished run is still current.
RUN_ONLY_KEYS = frozenset({"operation_mode", "experiment_name", "log_output_dir", "device", "gpu_core_num",
                           "num_workers", "overlay_every", "tensorboard"})


def _where(source: Path | None) -> str:
    return str(source) if source else "config"


def _fail(source: Path | None, key: str, value: Any, reason: str, spec: Field | None) -> None:
    allowed = f"; allowed: {spec.allowed()}" if spec else ""
    hint = ""
    if spec and spec.kind == "choice":
        text = str(value).lower()[:100]      # difflib is quadratic: a huge value gets no hint
        close = difflib.get_close_matches(text, spec.choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{_where(source)}: key {key!r}: {shown(value)} {reason}{allowed}{hint}")


# Each dataset's training recipe (docs/method.md section 4), as the defaults that differ from the
# schema's; the schema defaults are GM's and NIH's (batch 16/16, loss dice, cosine schedule, fixed_mode
# paper). Kept here, in one place, so that the scripts, the sweep, newexp and the tools resolve a config
# alike. Precedence: default (this recipe for the dataset) < the YAML file < -o key=value.
RECIPES: dict[str, dict[str, Any]] = {
    "em": {"batch_size": 5, "val_batch_size": 4,
           "loss": "bce_dice",        # 0.5 BCE + 0.5 (1 - Dice) on logits (the original's double sigmoid: legacy_double_sigmoid)
           "lr_schedule": "step",     # x0.1 at epochs N/5, 2N/5, 3N/5, 4N/5
           "fixed_mode": "pow2"},     # the authors' EM code rounded FIXED to powers of two
    "gm": {},
    "nih": {},
}


def validate(raw: Mapping[str, Any], *, source: Path | None = None, section: str = "UNET",
             extra_fields: Sequence[Field] | None = None, dataset: str | None = None) -> Config:
    """Validate a mapping of keys into a :class:`Config`.

    dataset: the dataset the calling script trains (em | gm | nih); without it, the one the file's
    ``dataset`` label names. It decides the recipe defaults (:data:`RECIPES`) and, unless
    ``extra_fields`` is given, the dataset's own keys (the ``FIELDS`` of its BASE's data module).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{_where(source)}: section {section!r} must be a mapping of key: value, "
                          f"got {type(raw).__name__}")
    label = next((v for k, v in raw.items() if str(k).lower() == "dataset"), None)
    known = dataset or original.dataset_named(label if isinstance(label, str) else None)
    if extra_fields is None:
        extra_fields = getattr(base_module(known), "FIELDS", ()) if known in BASES else ()
    fields = {f.name: f for f in (*COMMON_FIELDS, *extra_fields)}
    values = {name: f.default for name, f in fields.items()}
    values.update(RECIPES.get(known, {}))
    seen: dict[str, str] = {}
    for key, value in raw.items():
        key_text = str(key)
        spec = fields.get(key_text) or fields.get(key_text.lower())
        if spec is None:
            close = difflib.get_close_matches(key_text.lower()[:100], fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{_where(source)}: unknown key {shown(key_text)}{hint}")
        if spec.name in seen:
            raise ConfigError(f"{_where(source)}: key {spec.name!r} is given twice (as {shown(seen[spec.name])} and "
                              f"{shown(key_text)}); keys are case-insensitive")
        seen[spec.name] = key_text
        try:
            values[spec.name] = spec.parse(value)
        except ValueError as err:
            _fail(source, spec.name, value, str(err), spec)
    label, notices = values["dataset"], []
    values["dataset"], notice = _dataset_of(label, dataset, source)
    notices += [notice] if notice else []
    _check_combinations(values, source)
    notices += _original_code(values, dataset or values["dataset"])
    if values.get("experiment_name") is None:
        values["experiment_name"] = (source.parent.resolve().name if source else "experiment")
    return Config(values, source, section, notices, label)


def _dataset_of(label: str | None, dataset: str | None, source: Path | None) -> tuple[str | None, str | None]:
    """(the dataset a run records, a notice or None). The ``dataset`` key is a free label, as in the
    paper's README: the script's ``dataset`` decides; without a script, the dataset the label names."""
    if dataset is None:
        return (original.dataset_named(label) or label) if label else None, None
    return dataset, original.label_notice(label, dataset, _where(source)) if label else None


def _original_code(values: dict, dataset: str | None) -> list[str]:
    """With ``original_code: true``, set every key whose meaning differs from the original code to what
    it ran, and say so; without it, one line per such key saying what runs and what the original ran."""
    known = dataset if dataset in original.DATASETS else None
    if values.get("original_code"):
        return original.apply_original(values, known)
    return [d.line() for d in original.differences(values, known)]


def _check_combinations(v: dict, source: Path | None) -> None:
    """Rules that involve more than one key."""
    where = _where(source)
    check_formats(v, where)
    if v["operation_mode"] in ("retrain", "inference", "visualize") and v["trained_model"] is None:
        raise ConfigError(f"{where}: key 'trained_model' is required when operation_mode is "
                          f"{v['operation_mode']!r}; give the path of a checkpoint (e.g. runs/NAME/best.pt)")
    if v["data_source"] == "real" and v["data_path"] is None:
        raise ConfigError(f"{where}: key 'data_path' is required when data_source is 'real'")
    name = v.get("experiment_name")
    if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name or name != name.strip()):
        raise ConfigError(f"{where}: key 'experiment_name': {shown(name)} is not allowed; allowed: a plain folder "
                          f"name (no '/', not '.' or '..'): runs go to log_output_dir/experiment_name")
    if name is not None and len(name.encode("utf-8", "replace")) > 255:   # the longest file name a disk takes
        raise ConfigError(f"{where}: key 'experiment_name': {shown(name)} is too long; allowed: a folder name of "
                          f"at most 255 bytes")
    device = v["device"].lower()
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"{where}: key 'device': {shown(v['device'])} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    v["device"] = device


def check_formats(v: Mapping[str, Any], where: str = "config") -> None:
    """The bit-width rules that involve two keys (FIXED: 1 <= i + f <= 23; INT: n >= 1), raised as a
    ConfigError naming ``where`` (part of :func:`validate`)."""
    if v["quantization"] == "fixed":
        for role in ("weight", "activation"):
            i, f = v[f"{role}_i_width"], v[f"{role}_f_width"]
            if not 1 <= i + f <= 23:
                raise ConfigError(f"{where}: keys '{role}_i_width' + '{role}_f_width' = {i} + {f}: a FIXED "
                                  f"format needs 1 to 23 bits in total (float32 holds Qi.f exactly up to 23)")
    if v["quantization"] == "int":
        for role in ("weight", "activation"):
            if v[f"{role}_i_width"] < 1:
                raise ConfigError(f"{where}: key '{role}_i_width': 0 is not allowed for INT; allowed: the bit "
                                  f"count n, an integer from 1 to 16")


def parse_overrides(items: Iterable[str], source: str = "-o") -> dict:
    """``["num_epochs=2", "base_width=16"]`` -> ``{"num_epochs": 2, "base_width": 16}`` (values read as
    YAML scalars, so numbers and booleans come out typed; they are validated with the file's keys)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: {shown(item)} is not of the form key=value")
        try:
            out[key.strip()] = yaml.load(text, Loader=_StrictLoader) if text.strip() else None  # noqa: S506
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


# A config is a few kB; a cap keeps a huge or generated file (millions of keys) from taking minutes
# and gigabytes before it is refused.
MAX_CONFIG_BYTES = 256 * 1024


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML silently keeps the last) and
    any alias (``*name``): a config has no use for them, and nested aliases expand exponentially
    ("billion laughs": a few lines that take gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{shown(event.anchor, 40)}) are not "
                                              f"allowed in a config; write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:              # unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Read a YAML file with the safe loader; any failure becomes one-line ConfigError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} kB; a config file holds a few "
                          f"key: value lines (is this the right file?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); a config must be a YAML text file") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: unreadable YAML{where}: {problem[:200]}") from None


def load(path: Path | str, section: str, overrides: Mapping[str, Any] | None = None, **kwargs) -> Config:
    """Load ``section`` of the YAML file at ``path``, apply ``overrides`` and validate (see
    :func:`validate` for the keyword arguments)."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected sections like 'UNET:' holding key: value pairs; the file is "
                          f"{'empty' if data is None else 'a ' + type(data).__name__}")
    if section not in data:
        found = ", ".join(str(k)[:40] for k in list(data)[:10]) + (f" (+{len(data) - 10} more)" if len(data) > 10 else "")
        raise ConfigError(f"{path}: no section {shown(section)} (the -t argument); sections found: {found or 'none'}")
    raw = data[section]
    if raw is None:
        raw = {}
    if not (isinstance(raw, dict) and overrides):
        return validate(raw, source=path, section=section, **kwargs)
    given = {str(k).lower() for k in overrides}           # -o LR=0.01 replaces the file's lr
    merged = {**{k: v for k, v in raw.items() if str(k).lower() not in given}, **overrides}
    try:
        return validate(merged, source=path, section=section, **kwargs)
    except ConfigError as err:
        try:
            validate(raw, source=path, section=section, **kwargs)
        except ConfigError:
            raise err from None                           # the file itself is wrong: name the file
        # the file alone is fine, so an override is to blame: say so
        text = str(err).removeprefix(f"{path}: ")
        raise ConfigError(f"-o override (on {path}): {text}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unetq.config``: print the key table; ``--markdown``: the whole docs/config.md
    (rendered by unetq/config_docs.py)."""
    from . import config_docs       # imported here: it imports this module

    return config_docs.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
