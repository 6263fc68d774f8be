"""Model cards: the ``README.md`` of a run's checkpoints and of an exported model folder.

:func:`model_card` writes the Hugging Face model-card convention from a training run's
own files, so a model folder can be shared or pushed to a hub as it is:

- a YAML header between ``---`` lines: ``library_name``, ``license``, ``pipeline_tag``,
  ``tags``, ``datasets``, ``metrics`` and, with test metrics, a ``model-index`` block;
- then the model (encoder, decoder, sizes, parameters), the attention mode, the prior
  schedule of every decoder layer, the training data and split, the validation metrics,
  the test metrics with their 95 % intervals (or a line saying they were not measured),
  provenance, how to load the folder, limitations and intended use (research only).

What it reads: the run's ``run_config.json`` (config tree and provenance), ``summary.json``
and ``metrics.csv``, the checkpoint's model ``config.json``, ``trainer_state.json`` and
the ``model.safetensors`` header, a test ``metrics.json`` when given
(:mod:`cxrlib.evaluate.evaluate`), and beside the manifest its ``phantom.json`` or
``<manifest>.summary.json`` (which dataset it is). No clock: the same files give the
same text.

When a training run ends, :func:`write_checkpoint_cards` writes the card of its
``best`` and ``last`` checkpoints (no test metrics yet); the ablation rewrites the card
of the best (else last) one with the test metrics once it has evaluated the run.
``cxr export RUN --out DIR`` (:func:`cxrlib.experiment.export.export_run`) writes a card
with the test metrics found beside a copy of the model files.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

import yaml

from cxrlib.anatomy.priors import schedule
from cxrlib.base.errors import CxrError
from cxrlib.base.io import read_json_object, write_atomic
from cxrlib.model.report_model import CONFIG_FILE, WEIGHTS_FILE
from cxrlib.model.tokenizer import SPECIALS_FILE, TOKENIZER_FILE
from cxrlib.training.config import RunConfig
from cxrlib.training.runs import (
    ablation_metrics,
    ablation_of_evaluation,
    run_checkpoint,
    run_config_path,
)

CARD_FILE = "README.md"
MODEL_FILES: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, SPECIALS_FILE)
"""What :meth:`ReportModel.from_pretrained` reads; an export copies these only (no
optimizer, RNG or trainer state)."""
PHANTOM_DATASET = "cxrlib-phantom"
"""The ``datasets`` name of the synthetic phantom (:mod:`cxrlib.data.phantom`)."""
TAGS: tuple[str, ...] = (
    "chest-x-ray",
    "radiology",
    "radiology-report-generation",
    "image-to-text",
    "anatomy-guided-attention",
    "transformers",
    "gpt2",
)
MODE_TEXT: dict[str, str] = {
    "none": "no anatomical bias: every text token may attend to every image patch",
    "soft": "the layer's prior (in [0, 1]) times the prior strength is added to the "
    "attention logits towards each image patch: anatomy is favoured, nothing excluded",
    "strict": "patches whose prior is 0 in a layer are excluded from that layer's "
    "attention; the others are attended as usual",
}
"""One line per attention mode (:mod:`cxrlib.model.attention`)."""
NOT_MEASURED = "Not measured on a test split yet"


@dataclass
class RunFiles:
    """What a card is built from, read once (:func:`read_run_files`)."""

    run_dir: Path
    name: str  # the checkpoint's name: best, last or the folder's
    record: dict  # the run's run_config.json: config tree, seed, provenance
    model: dict  # the checkpoint's config.json: model, encoder and decoder configs
    state: dict = field(default_factory=dict)  # trainer_state.json (may be absent)
    summary: dict = field(default_factory=dict)  # summary.json (after training)
    validation: list[dict] = field(default_factory=list)  # metrics.csv validate rows
    parameters: dict[str, int] = field(default_factory=dict)  # part -> count
    prior_strength: list[float] | None = None  # learned, per layer
    test: dict | None = None  # a metrics.json
    test_manifest: str | None = None  # the manifest the test metrics were measured on
    shipped_segmenter: bool = False  # the folder carries its segmenter (cxr export)

    @property
    def config(self):
        """The run's :class:`cxrlib.training.config.RunConfig`."""
        return RunConfig.from_dict(self.record["config"])


# --- reading ----------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CxrError(f"{path}: not a readable {what} ({err})") from None
    if not isinstance(data, dict):
        raise CxrError(f"{path}: not a {what} (expected a JSON object)")
    return data


def read_test_metrics(path: str | os.PathLike) -> dict:
    """A ``metrics.json`` of :mod:`cxrlib.evaluate.evaluate`, checked.

    Raises
    ------
    CxrError
        When the file is missing, not JSON, or has no ``metrics`` mapping of entries
        with a ``value``.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"{path}: metrics file not found")
    data = _read_json(path, "metrics.json")
    metrics = data.get("metrics")
    good = isinstance(metrics, dict) and all(
        isinstance(m, dict) and "value" in m for m in metrics.values()
    )
    if not good:
        raise CxrError(f"{path}: not a cxr evaluate metrics.json (no 'metrics' with values)")
    return data


def test_metrics_path(
    run_dir: str | os.PathLike, metrics: str | os.PathLike | None = None
) -> Path | None:
    """``metrics`` when given (it must exist), else :func:`ablation_metrics`."""
    if metrics is not None:
        if not Path(metrics).is_file():
            raise CxrError(f"{metrics}: metrics file not found")
        return Path(metrics)
    return ablation_metrics(run_dir)


def _validation_rows(run_dir: Path, keep: int | None) -> list[dict]:
    """The ``validate`` rows of ``metrics.csv`` among its first ``keep`` rows (those a
    checkpoint knows), numbers parsed, empty cells dropped."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if keep is not None:
        rows = rows[:keep]
    out = []
    for row in rows:
        if row.get("split") != "validate":
            continue
        values = {}
        for key, text in row.items():
            if key in ("split", None) or text in ("", None):
                continue
            try:
                values[key] = float(text)
            except ValueError:
                continue
        out.append(values)
    return out


def _parameters(weights: Path) -> tuple[dict[str, int], list[float] | None]:
    """Parameters per part (encoder, bridge, decoder, ...) from the safetensors header,
    and the learned per-layer prior strengths when the model has them."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    strength = None
    if not weights.is_file():
        return counts, strength
    with safe_open(str(weights), "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            part = key.split(".", 1)[0]
            counts[part] = counts.get(part, 0) + math.prod(fh.get_slice(key).get_shape())
        if "prior_strength" in fh.keys():  # noqa: SIM118
            strength = [float(x) for x in fh.get_tensor("prior_strength").tolist()]
    return counts, strength


def read_run_files(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    *,
    name: str | None = None,
) -> RunFiles:
    """Read what :func:`model_card` needs (see the module docstring).

    Raises
    ------
    CxrError
        No run record (``run_config.json``, or an older run's ``config.json``), no
        model config in the checkpoint, or a malformed ``metrics``.
    """
    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint is not None else run_checkpoint(run_dir)
    record = _read_json(run_config_path(run_dir), "run config")
    if not isinstance(record.get("config"), dict):
        raise CxrError(f"{run_config_path(run_dir)}: no 'config' tree (not a training run)")
    model_path = checkpoint / CONFIG_FILE
    if not model_path.is_file():
        raise CxrError(f"{model_path}: no model config (is {checkpoint} a checkpoint?)")
    files = RunFiles(run_dir, name or checkpoint.name, record, _read_json(model_path, "model"))
    state_path = checkpoint / "trainer_state.json"
    if state_path.is_file():
        files.state = _read_json(state_path, "trainer state")
    if (run_dir / "summary.json").is_file():
        files.summary = _read_json(run_dir / "summary.json", "summary")
    files.validation = _validation_rows(run_dir, files.state.get("metrics_rows"))
    files.parameters, files.prior_strength = _parameters(checkpoint / WEIGHTS_FILE)
    if metrics is not None:
        files.test = read_test_metrics(metrics)
        files.test_manifest = _test_manifest(Path(metrics), files.test)
    return files


def _test_manifest(path: Path, test: dict) -> str | None:
    """The manifest of the test metrics: ``inputs.ref`` when it names a file, else the
    ``ablation.json`` of an ablation's evaluation."""
    ref = (test.get("inputs") or {}).get("ref")
    if ref and ref != "manifest":
        return str(ref)
    ablation = ablation_of_evaluation(path)
    return None if ablation is None else (read_json_object(ablation) or {}).get("manifest")


def training_dataset(config) -> tuple[str | None, str]:
    """``(datasets name or None, one-line description)`` of the data a run trained on.

    The phantom when ``data.manifest`` is None or the manifest's folder holds the
    phantom's ``phantom.json``; else the ``dataset`` its adapter recorded in
    ``<manifest>.summary.json``; else None (not recorded; nothing is guessed).
    """
    data = config.data
    if data.manifest is None:
        n, seed, size = data.phantom_n, data.phantom_seed, data.phantom_size
        return PHANTOM_DATASET, _phantom_text(n, seed, size)
    manifest = Path(data.manifest)
    phantom = read_json_object(manifest.parent / "phantom.json") or {}
    if phantom.get("generator") == "cxrlib.data.phantom":
        return PHANTOM_DATASET, _phantom_text(
            phantom.get("n"), phantom.get("seed"), phantom.get("size")
        )
    summary = read_json_object(manifest.with_name(manifest.name + ".summary.json")) or {}
    if isinstance(summary.get("dataset"), str) and summary["dataset"]:
        name = summary["dataset"]
        return name, f"{name} (manifest written by cxrlib's {name} adapter)"
    return None, "a manifest whose dataset is not recorded (no adapter summary beside it)"


def _phantom_text(n, seed, size) -> str:
    return (
        f"the synthetic chest X-ray phantom of cxrlib.data.phantom ({n} studies, seed "
        f"{seed}, drawn at {size} px): generated images, masks and Findings, no patients"
    )


# --- the card ---------------------------------------------------------------------------


def model_card(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    shipped_segmenter: bool = False,
) -> str:
    """The ``README.md`` text of a model folder of training run ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        The training run folder (``cxr train --out``).
    checkpoint : path-like, optional
        The model folder the card describes (default: the run's best, else last).
    metrics : path-like, optional
        A test ``metrics.json`` (``cxr evaluate``); without it the card says the model
        was not measured on a test split.
    name : str, optional
        The checkpoint's name (default: its folder's name).
    shipped_segmenter : bool
        The folder carries the run's segmenter in ``segmenter/`` (an export).

    Returns
    -------
    str
        YAML front matter and Markdown; the same files give the same text.
    """
    files = read_run_files(run_dir, checkpoint, metrics, name=name)
    files.shipped_segmenter = shipped_segmenter
    sections = (
        _summary_section,
        _mode_section,
        _priors_section,
        _data_section,
        _test_section,
        _provenance_section,
        _usage_section,
        _limitations_section,
    )
    lines = [*_front_matter(files), "", f"# {_title(files)}", ""]
    for section in sections:
        lines += [*section(files), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _title(files: RunFiles) -> str:
    mode = files.model["model_config"]["mode"]
    return f"cxrlib report model: {files.run_dir.name} ({mode} attention, checkpoint {files.name})"


def project_license() -> str:
    """The package's license as a hub identifier (``mit``)."""
    try:
        text = metadata("cxrlib").get("License") or "MIT"
    except PackageNotFoundError:
        text = "MIT"
    return text.strip().lower()


def _test_values(files: RunFiles) -> list[tuple[str, dict]]:
    """Measured test metrics with a value, in the order of the metrics file (which
    :func:`cxrlib.evaluate.evaluate.evaluate_generations` writes in report order)."""
    if files.test is None:
        return []
    metrics = files.test["metrics"]
    return [(k, m) for k, m in metrics.items() if _finite(m.get("value"))]


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _validation_keys(files: RunFiles) -> list[str]:
    """The metrics.csv columns measured on validation, in first-seen order."""
    keys = dict.fromkeys(k for row in files.validation for k in row)
    return [k for k in keys if k not in ("step", "epoch")]


def _val_name(key: str) -> str:
    return "val_loss" if key == "loss" else key


def _front_matter(files: RunFiles) -> list[str]:
    config = files.config
    mode = files.model["model_config"]["mode"]
    dataset, _ = training_dataset(config)
    test = _test_values(files)
    tags = [*TAGS, f"attention-mode-{mode}"]
    if dataset == PHANTOM_DATASET:
        tags.append("synthetic-data")
    header: dict = {
        "library_name": "cxrlib",
        "license": project_license(),
        "pipeline_tag": "image-to-text",
        "tags": tags,
        "datasets": [dataset] if dataset else [],
        "metrics": [k for k, _ in test] + [_val_name(k) for k in _validation_keys(files)],
    }
    if test:
        split = (files.test.get("inputs") or {}).get("split", "test")
        header["model-index"] = [
            {
                "name": files.run_dir.name,
                "results": [
                    {
                        "task": {
                            "type": "image-to-text",
                            "name": "Chest X-ray Findings generation",
                        },
                        "dataset": {
                            "name": f"{dataset or 'manifest'} ({split} split)",
                            "type": dataset or "manifest",
                            "split": split,
                        },
                        "metrics": [
                            {"name": k, "type": k, "value": round(m["value"], 6), "verified": False}
                            for k, m in test
                        ],
                    }
                ],
            }
        ]
    text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000)
    return ["---", *text.rstrip("\n").splitlines(), "---"]


def _source(source, what: str) -> str:
    if isinstance(source, dict):
        return f"built from config fields ({what}, randomly initialised, then trained)"
    return f"`{source}`"


_SIZE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_register_tokens",
    "embedding_size",
    "hidden_sizes",
    "depths",
    "patch_size",
)


def _summary_section(files: RunFiles) -> list[str]:
    mc, enc, dec = (files.model[k] for k in ("model_config", "encoder_config", "decoder_config"))
    config = files.config
    run_encoder = config.model.encoder
    if isinstance(run_encoder, dict) and config.pretrain.enabled:
        origin = (
            "built from config fields, pretrained by cxrlib.training.pretrain on the training "
            f"manifest's labels ({_plural(config.pretrain.epochs, 'epoch')}; from "
            f"`{mc['encoder']}`, its weights are in this folder)"
        )
    else:
        origin = _source(run_encoder, enc.get("model_type", "encoder"))
    sizes = ", ".join(f"{k} {enc[k]}" for k in _SIZE_KEYS if k in enc)
    grid = mc["image_size"] // mc["patch_size"]
    lines = [
        "## Model",
        "",
        "Image encoder -> two-layer MLP bridge -> GPT-2 decoder that reads the image "
        "patches as prefix tokens and writes the Findings section, with anatomical "
        "attention in every decoder layer (cxrlib.model.ReportModel).",
        "",
        f"- Encoder: {enc.get('model_type', 'unknown')} ({sizes}); {origin}; "
        f"trainable: {mc['encoder_trainable']}",
        f"- Input: {mc['image_size']} px square, patch {mc['patch_size']} px: "
        f"{grid} x {grid} = {grid * grid} prefix tokens",
        f"- Decoder: GPT-2 ({dec['n_layer']} layers, {dec['n_head']} heads, width "
        f"{dec['n_embd']}, vocabulary {dec['vocab_size']}); "
        f"{_source(config.model.decoder, 'GPT2Config; byte-level BPE trained on the Findings')}",
        f"- Text: at most {mc['max_text_tokens']} tokens; generation: "
        + (
            "greedy"
            if mc["num_beams"] == 1
            else f"beam search ({mc['num_beams']} beams, length penalty {mc['length_penalty']})"
        )
        + f", repetition penalty {mc['repetition_penalty']}, at most "
        f"{mc['max_new_tokens']} new tokens",
    ]
    if files.parameters:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(files.parameters.items()))
        lines.append(f"- Parameters: {sum(files.parameters.values()):,} ({parts})")
    return lines


def _mode_section(files: RunFiles) -> list[str]:
    mc = files.model["model_config"]
    mode = mc["mode"]
    lines = ["## Attention mode", "", f"This model: **{mode}**.", ""]
    for name, text in MODE_TEXT.items():
        lines.append(f"- `{name}`{' (this model)' if name == mode else ''}: {text}")
    if mode == "soft":
        how = "learned per layer" if mc["learn_prior_strength"] else "fixed"
        lines += ["", f"Prior strength: {mc['prior_strength']} ({how})."]
    return lines


def _priors_section(files: RunFiles) -> list[str]:
    mc = files.model["model_config"]
    priors = files.config.priors
    layers = files.model["decoder_config"]["n_layer"]
    resolved = priors.resolve(mc["image_size"], mc["patch_size"], layers)
    lines = ["## Prior schedule", ""]
    if mc["mode"] == "none":
        lines += ["Not used: in mode `none` the decoder gets no prior.", ""]
    lines += [
        f"Masks of {' + '.join(resolved.structures)} (source `{priors.source}`"
        + (f", segmenter `{priors.segmenter}`" if priors.segmenter else "")
        + f") become one prior per decoder layer: schedule `{priors.schedule}`, padding "
        f"`{priors.padding}`, on the {resolved.grid} x {resolved.grid} patch grid "
        "(layers counted from 1: layer 1 is the decoder's first; sigma and kernel in "
        "patches; each layer min-max normalised to [0, 1]).",
        "",
    ]
    strength = files.prior_strength
    head = "| layer | sigma | kernel |" + (" learned strength |" if strength else "")
    rule = "| ---: | ---: | ---: |" + (" ---: |" if strength else "")
    lines += [head, rule]
    for layer, (kernel, sigma) in enumerate(schedule(resolved)):
        row = f"| {layer + 1} | {sigma:.4f} | {kernel} |"
        if strength:
            row += f" {strength[layer]:.4f} |"
        lines.append(row)
    return lines


def _data_section(files: RunFiles) -> list[str]:
    config, summary, state = files.config, files.summary, files.state
    tc = config.train
    dataset, about = training_dataset(config)
    manifest = config.data.manifest or "the phantom generated in data.cache_dir"
    n_train = summary.get("train_images", state.get("train_images"))
    n_val = summary.get("validate_images", state.get("validate_images"))
    caps = [
        f"{k} {v}"
        for k, v in (
            ("max_train_images", config.data.max_train_images),
            ("max_val_images", config.data.max_val_images),
        )
        if v is not None
    ]

    def count(n) -> str:
        return f" ({n} images)" if n is not None else ""

    lines = [
        "## Training data and split",
        "",
        f"- Dataset: {dataset or 'not recorded'}: {about}",
        f"- Manifest: `{manifest}`, text column `{config.data.text_column}`"
        + (f", {', '.join(caps)}" if caps else ""),
        f"- Split: `train`{count(n_train)} to train, `validate`{count(n_val)} to select "
        "the checkpoint; test metrics on `test`, never seen in training",
        f"- Seed {config.seed}; {_plural(tc.epochs, 'epoch')} planned, batch {tc.batch_size} x "
        f"{tc.grad_accum_steps} accumulation x {files.record.get('world_size', 1)} "
        f"processes; AdamW lr {tc.lr}, weight decay {tc.weight_decay}, warmup "
        f"{tc.warmup_ratio} then cosine; mixed precision {tc.mixed_precision}",
        f"- Model selection: {tc.early_stopping_metric} ({tc.early_stopping_mode})"
        + (f", patience {tc.patience}" if tc.patience else ""),
    ]
    if summary:
        best = ", ".join(f"{k} {_num(v)}" for k, v in summary.get("best", {}).items())
        lines.append(
            f"- Training ended after {_plural(summary.get('global_step'), 'step')}, "
            f"{_plural(summary.get('epochs_done'), 'epoch')} ({summary.get('stop_reason')}); "
            f"best {best}; "
            f"{summary.get('seconds')} s"
        )
    if state:
        lines.append(
            f"- This checkpoint (`{files.name}`): step {state.get('step')}, after epoch "
            f"{state.get('epoch')}; best {tc.early_stopping_metric} so far "
            f"{_num(state.get('best'))}"
        )
    bad = summary.get("bad_images", state.get("bad_images")) or []
    if bad:
        lines.append(f"- Unreadable images skipped: {len(bad)}")
    lines += ["", *_validation_table(files)]
    return lines


def _plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _num(x) -> str:
    return f"{x:.4f}" if _finite(x) else "n/a"


def _validation_table(files: RunFiles) -> list[str]:
    if not files.validation:
        return ["No validation measured yet."]
    names = _validation_keys(files)
    lines = [
        "Validation after each epoch:",
        "",
        "| epoch | step | " + " | ".join(_val_name(k) for k in names) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for row in files.validation:
        cells = " | ".join(_num(row.get(k)) for k in names)
        lines.append(f"| {int(row.get('epoch', 0))} | {int(row.get('step', 0))} | {cells} |")
    return lines


def _test_section(files: RunFiles) -> list[str]:
    lines = ["## Test metrics", ""]
    if files.test is None:
        return lines + [
            f"{NOT_MEASURED}: run `cxr generate --run RUN --manifest MANIFEST --split test "
            "--out test.csv`, `cxr evaluate --pred test.csv --ref MANIFEST --out EVAL`, then "
            "`cxr export RUN --out DIR --metrics EVAL/metrics.json`."
        ]
    test = files.test
    counts, boot = test.get("counts") or {}, test.get("bootstrap") or {}
    split = (test.get("inputs") or {}).get("split", "test")
    lines += [
        f"- Split `{split}`"
        + (f" of `{files.test_manifest}`" if files.test_manifest else "")
        + f": {counts.get('n', '?')} images, {counts.get('n_studies', '?')} studies",
        f"- Labeler: {test.get('labeler', 'not recorded')}; reference labels: "
        f"{test.get('reference_labels', 'not recorded')}",
        f"- Intervals: {_interval_text(boot)}",
        "",
        "| metric | value | 95% CI | studies |",
        "| --- | ---: | --- | ---: |",
    ]
    for key, m in _test_values(files):
        ci = (
            f"[{_num(m.get('ci_low'))}, {_num(m.get('ci_high'))}]"
            if _finite(m.get("ci_low"))
            else "n/a"
        )
        lines.append(f"| {key} | {_num(m['value'])} | {ci} | {m.get('n_studies', '')} |")
    unavailable = test.get("unavailable") or {}
    if unavailable:
        lines += ["", "Not computed: " + ", ".join(sorted(unavailable)) + "."]
    return lines


def _interval_text(boot: dict) -> str:
    if not boot:
        return "not recorded"
    if not boot.get("n_resamples"):
        return "none (no bootstrap resamples)"
    level = round(100 * float(boot.get("confidence", 0.95)))
    return (
        f"{level}% {boot.get('method', 'percentile')} bootstrap over "
        f"{boot.get('unit', 'studies')}, {boot['n_resamples']} resamples, seed "
        f"{boot.get('seed', '?')}"
    )


def _provenance_section(files: RunFiles) -> list[str]:
    record = files.record
    packages = record.get("packages") or {}
    lines = [
        "## Provenance",
        "",
        f"- Trained at git commit `{record.get('git_commit', 'not recorded')}` with "
        f"Python {record.get('python', '?')} on {record.get('platform', '?')}",
    ]
    if packages:
        lines.append("- Packages: " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    if files.test is not None:
        test_commit = (files.test.get("provenance") or {}).get("git_commit")
        if test_commit:
            lines.append(f"- Test metrics computed at git commit `{test_commit}`")
    lines.append(
        f"- Config profile `{files.config.profile}`; the whole tree in the run's `run_config.json`"
    )
    return lines


def _usage_section(files: RunFiles) -> list[str]:
    segmenter = files.config.priors.segmenter or "SEGMENTER"
    shipped = (
        ["cxr report IMAGE --run FOLDER --out OUT  # masks from the segmenter in FOLDER/segmenter"]
        if files.shipped_segmenter
        else []
    )
    return [
        "## How to use",
        "",
        "```python",
        "from cxrlib.model import ReportModel",
        "",
        'model = ReportModel.from_pretrained("FOLDER")  # this folder; no network, no pickle',
        "```",
        "",
        "Findings, labels and an attention figure for any radiograph (the prior settings "
        "come from the run's config, `run_config.json`):",
        "",
        "```",
        *shipped,
        f"cxr report IMAGE --run FOLDER --out OUT --segmenter {segmenter}  # lung/heart masks",
        "cxr report IMAGE --run FOLDER --out OUT --masks DIR   # DIR/<structure>/<stem>.png",
        "cxr report IMAGE --run FOLDER --out OUT --masks none  # uniform prior",
        "```",
    ]


def _limitations_section(files: RunFiles) -> list[str]:
    dataset, _ = training_dataset(files.config)
    lines = ["## Limitations", ""]
    if dataset == PHANTOM_DATASET:
        lines.append(
            "- Trained on the synthetic phantom: its images and texts are generated, so its "
            "numbers say nothing about real radiographs."
        )
    lines += [
        "- Not validated on real patients or prospectively; not a medical device.",
        "- Clinical metrics are labeler-based: the rule labeler (or CheXbert) reads both "
        "the generated and the reference text, and its errors enter the scores.",
        "- Findings only (no Impression); one frontal image per report, no prior studies.",
        "",
        "## Intended use",
        "",
        "Research only: studying anatomy-guided attention for report generation. Not for "
        "clinical use, diagnosis or any decision about a patient.",
    ]
    return lines


# --- export -----------------------------------------------------------------------------


def write_card(
    folder: str | os.PathLike,
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    *,
    name: str | None = None,
) -> Path:
    """Write :func:`model_card` as ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / CARD_FILE
    text = model_card(run_dir, checkpoint, metrics, name=name)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_checkpoint_cards(run_dir: str | os.PathLike) -> list[Path]:
    """The card of each checkpoint (``best``, ``last``) of training run ``run_dir``, written
    when the run ends (no test metrics yet); returns their paths."""
    written = []
    for name in ("best", "last"):
        folder = Path(run_dir) / "checkpoints" / name
        if folder.is_dir():
            written.append(write_card(folder, run_dir, folder, name=name))
    return written
