"""The `medagent` command. Thin: parses arguments, calls the library, prints.

Imports are lazy (inside each command) so `medagent --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import click
import typer
from typer.core import TyperGroup

from medagent import __version__

app = typer.Typer(
    name="medagent",
    help="Train and evaluate tool-calling agents that segment medical images, and use each tool on its own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Builtin datasets and user folders: list, show, export.", no_args_is_help=True)
tool_app = typer.Typer(help="Segmentation tools: list them, run one on an image.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate tools, agents and the interactive protocol on datasets; each writes a run folder and results JSON.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(tool_app, name="tool")
train_app = typer.Typer(help="Train tools and the policy (SFT, GRPO, the whole recipe).", no_args_is_help=True)
env_app = typer.Typer(help="The interactive segmentation environment: play agents in it.", no_args_is_help=True)
traj_app = typer.Typer(help="Expert trajectories: generate, export for TRL SFT, show.", no_args_is_help=True)
app.add_typer(env_app, name="env")
app.add_typer(traj_app, name="trajectories")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def _console():
    import sys

    from rich.console import Console

    # Piped or captured output gets a wide console so tables do not wrap names mid-word.
    return Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str) -> None:
    from rich.markup import escape

    # escaped: a message quoting values such as [null] or [1, 2] must print as written, not as rich markup
    _console().print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code=2)


def _run_guarded(fn):
    """Run fn(); medagent's own errors become one red line and exit code 2 (no traceback)."""
    from medagent.errors import MedagentError

    try:
        return fn()
    except MedagentError as exc:
        _fail(str(exc))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medagent {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """medagent command line."""


def _parse_class_names(text: Optional[str]) -> Optional[dict[int, str]]:
    """'1=liver,2=tumour' -> {1: 'liver', 2: 'tumour'}."""
    if not text:
        return None
    out: dict[int, str] = {}
    for part in text.split(","):
        if "=" not in part:
            _fail(f"--class-names: expected entries like 1=liver, got {part!r}")
        key, name = part.split("=", 1)
        try:
            out[int(key)] = name.strip()
        except ValueError:
            _fail(f"--class-names: {key!r} is not a class index")
    return out


# ---------------------------------------------------------------------------------------------- data
@data_app.command("list")
def data_list() -> None:
    """List the builtin datasets with their modality, classes, label origin and counts per split."""
    from medagent.eval.catalog import datasets_table

    _console().print(_run_guarded(datasets_table))


@data_app.command("show")
def data_show(
    source: str = typer.Argument(..., help="Builtin dataset name, dataset folder, or image file."),
    index: int = typer.Option(0, help="Case index within the split."),
    split: str = typer.Option("test", help="Split: train, val, test or all."),
    out: Path = typer.Option(Path("case.png"), help="Overlay PNG to write."),
    modality: Optional[str] = typer.Option(None, help="Modality when metadata does not say (CT, MR, microscopy, ...)."),
) -> None:
    """Write an overlay PNG of one case (labels in colour over the image) and print its facts."""
    from medagent.data.io import save_overlay_png
    from medagent.data.sources import open_dataset

    def run():
        ds = open_dataset(source, modality=modality)
        cases = ds.cases(split if split in ds.splits or split == "all" else next(iter(ds.splits)))
        if not 0 <= index < len(cases):
            _fail(f"--index {index} is outside 0..{len(cases) - 1} for {source} ({split})")
        case = cases[index]
        save_overlay_png(case, case.label, out)
        classes = {k: v for k, v in case.class_names.items() if k in set(case.foreground_classes())}
        _console().print(f"{case.id}: {case.modality}, shape {case.shape}, spacing {case.spacing} mm, "
                         f"subject {case.subject}, classes present {classes} -> {out}")

    _run_guarded(run)


@data_app.command("export")
def data_export(
    source: str = typer.Argument(..., help="Builtin dataset name or dataset folder."),
    to: Path = typer.Option(..., "--to", help="Output folder (nnU-Net v2 layout)."),
) -> None:
    """Export a dataset as an nnU-Net v2 folder (imagesTr/labelsTr/imagesTs/labelsTs, dataset.json)."""
    from medagent.data.export import export_nnunet
    from medagent.data.sources import open_dataset

    def run():
        ds = open_dataset(source)
        export_nnunet(ds, to)
        _console().print(f"wrote {sum(ds.counts().values())} cases of {ds.info.name} to {to}")

    _run_guarded(run)


# ---------------------------------------------------------------------------------------------- tool
@tool_app.command("list")
def tool_list() -> None:
    """List the registered tools, their kind and whether shipped weights are present."""
    from medagent.eval.catalog import tools_table

    _console().print(_run_guarded(tools_table))


@tool_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tool_run(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Tool name (see `medagent tool list`)."),
    image: Optional[Path] = typer.Option(None, help="Image file (NIfTI, NRRD, MHA, DICOM, PNG/JPEG/TIFF, NPY/NPZ)."),
    dataset: Optional[str] = typer.Option(None, help="Builtin dataset or folder to take the case from (with --index)."),
    index: int = typer.Option(0, help="Case index in --dataset's split."),
    split: str = typer.Option("test", help="Split of --dataset."),
    out: Path = typer.Option(Path("mask.nii.gz"), help="Mask to write, on the input grid (.nii.gz, .nrrd, .mha, .png, .npy)."),
    overlay: Optional[Path] = typer.Option(None, help="Also write an overlay PNG of the prediction."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint folder or file, or a Hub id hf://owner/name[@revision], instead of the shipped weights."),
    checkpoint_type: Optional[str] = typer.Option(None, help="Preprocessing of an official checkpoint: sam or medsam for sam's .pth, sam2 or medsam2 for sam2's .pt (default: from the file name)."),
    box: Optional[Tuple[int, int, int, int]] = typer.Option(None, help="Box X0 Y0 X1 Y1 in pixels (x = column), for promptable tools."),
    modality: Optional[str] = typer.Option(None, help="Modality when metadata does not say."),
    axis: Optional[int] = typer.Option(None, help="For 3D input to a 2D tool: slice axis (default: coarsest spacing)."),
    ref: Optional[List[Path]] = typer.Option(None, help="Few-shot tools: a reference image (repeatable, with --ref-mask)."),
    ref_mask: Optional[List[Path]] = typer.Option(None, help="Few-shot tools: the reference's binary mask (repeatable)."),
    mask: Optional[Path] = typer.Option(None, help="Refiners: the coarse binary mask to refine (on the image's grid)."),
    source: Optional[str] = typer.Option(None, help="Adaptive tools: the source model (e.g. mni-tissue) to adapt."),
    stream: Optional[Path] = typer.Option(None, help="Adaptive tools: a folder of images adapted to in sorted order; --out is then a folder."),
) -> None:
    """Run one tool on one image and write its mask on the input grid.

    Promptable tools also take clicks: --point X Y (positive) and --neg-point X Y (negative), repeatable,
    in pixels of the image as loaded (x = column, y = row).
    """
    import numpy as np

    from medagent.data.io import save_mask, save_overlay_png
    from medagent.data.sources import open_case, open_dataset
    from medagent.tools import load_tool

    def run():
        if stream is not None:
            from medagent.tools.tta.folder import adapt_folder

            written = adapt_folder(name, source or "mni-tissue", stream, out)
            _console().print(f"{name}: adapted over {len(written)} images of {stream} in order; masks in {out}")
            return
        if (image is None) == (dataset is None):
            _fail("give exactly one of --image FILE or --dataset NAME --index I")
        case = open_case(image, modality=modality) if image is not None else open_dataset(dataset).cases(split)[index]
        extra = {"checkpoint_type": checkpoint_type} if checkpoint_type else {}
        tool = load_tool(name, checkpoint=checkpoint, dataset=dataset or source, **extra)
        inputs = {}
        if box is not None:
            inputs["boxes"] = np.asarray([box], dtype=np.float32)
        clicks = _parse_clicks(ctx.args)
        if clicks:
            inputs["points"] = np.asarray([c[0] for c in clicks], dtype=np.float32)
            inputs["point_labels"] = np.asarray([c[1] for c in clicks], dtype=np.int64)
        if ref or ref_mask:
            if len(ref or []) != len(ref_mask or []):
                _fail(f"give one --ref-mask per --ref (got {len(ref or [])} images and {len(ref_mask or [])} masks)")
            from medagent.tools.cps import load_references

            inputs["references"] = load_references(list(ref), list(ref_mask))
        if mask is not None:
            from medagent.data.io import load_label

            inputs["mask"] = load_label(mask, like=case)
        prediction = tool.predict(case, axis=axis, **inputs)
        save_mask(prediction.mask, case, out)
        if overlay is not None:
            save_overlay_png(case, prediction.mask, overlay)
        labels, counts = np.unique(prediction.mask, return_counts=True)
        summary = ", ".join(f"{int(l)}: {int(c)} px" for l, c in zip(labels, counts) if l > 0) or "empty mask"
        _console().print(f"{tool.name} on {case.id} ({case.shape}) -> {out} [{summary}]")

    _run_guarded(run)


def _parse_clicks(args: List[str]) -> List[Tuple[Tuple[int, int], int]]:
    """['--point', '3', '4', '--neg-point', '5', '6'] -> [((3, 4), 1), ((5, 6), 0)]; anything else is an error."""
    clicks, i = [], 0
    while i < len(args):
        flag = args[i]
        if flag not in ("--point", "--neg-point"):
            _fail(f"unexpected argument {flag!r} (clicks are --point X Y / --neg-point X Y)")
        try:
            xy = (int(args[i + 1]), int(args[i + 2]))
        except (IndexError, ValueError):
            _fail(f"{flag} needs two integer pixel coordinates X Y")
        clicks.append((xy, 1 if flag == "--point" else 0))
        i += 3
    return clicks


# ---------------------------------------------------------------------------------------------- eval
def _announce_run(resume: Optional[Path], units: str):
    """The evaluators' `on_run`: print the run folder as soon as it exists, so a killed run can be resumed."""
    def on_run(path: Path) -> None:
        if resume is None:
            _console().print(f"run folder: {path} (if interrupted, rerun the same command with --resume {path})")
        else:
            from medagent.eval.resume import PARTIAL_NAME, UnitLog

            _console().print(f"resuming {path}: {len(UnitLog(path / PARTIAL_NAME))} finished {units} read back")

    return on_run


@eval_app.command("tool")
def eval_tool(
    name: str = typer.Argument(..., help="Tool name."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder (nnU-Net/MSD, images+labels, YOLO)."),
    dataset: Optional[str] = typer.Option(None, help="Builtin dataset name."),
    split: str = typer.Option("test", help="Split to evaluate."),
    prompt: Optional[str] = typer.Option(None, help="'box': one box per GT component (promptable tools)."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint folder or file, or a Hub id hf://owner/name[@revision], instead of the shipped weights."),
    max_cases: Optional[int] = typer.Option(None, help="Evaluate at most this many cases."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also copy results JSON here."),
    class_names: Optional[str] = typer.Option(None, help="Override class names: '1=liver,2=tumour'."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files and list them in the results."),
    seed: int = typer.Option(0, help="Seed (bootstrap, prompts)."),
    runs_dir: Path = typer.Option(Path("medagent-runs"), help="Where run folders go."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_FOLDER",
                                          help="Continue this interrupted run folder (rerun the same command with "
                                               "--resume added): finished cases are read back, not recomputed."),
) -> None:
    """Score a tool on a dataset: per-case Dice/IoU/HD95/NSD/ASSD and means with 95% bootstrap CIs."""
    from medagent.data.sources import open_dataset
    from medagent.eval.tool_eval import run_tool_eval

    def run():
        if (data is None) == (dataset is None):
            _fail("give exactly one of --data DIR or --dataset NAME")
        ds = open_dataset(data if data is not None else dataset, class_names=_parse_class_names(class_names),
                          skip_bad=skip_bad, seed=seed)
        results = run_tool_eval(name, ds, split=split, prompt=prompt, checkpoint=checkpoint, max_cases=max_cases,
                                json_out=json_out, run_root=runs_dir, seed=seed,
                                tool_config={"dataset": dataset} if dataset else {}, resume=resume,
                                on_run=_announce_run(resume, "cases"))
        _console().print(f"results: {results}")
        _console().print(f"report: {results.parent / 'report.html'}")

    _run_guarded(run)


@eval_app.command("interactive")
def eval_interactive(
    name: str = typer.Argument(..., help="Promptable tool (takes clicks; boxes unless --no-box), e.g. sam."),
    dataset: Optional[str] = typer.Option(None, help="Builtin dataset name, several comma-separated, or 'all'."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder (nnU-Net/MSD, images+labels, YOLO)."),
    split: str = typer.Option("test", help="Split to evaluate."),
    clicks: int = typer.Option(5, help="Clicks per object, k: after the box, or all of them with --no-box."),
    no_box: bool = typer.Option(False, "--no-box", help="Click-only: no box; the first click at the object's deepest pixel."),
    max_objects: Optional[int] = typer.Option(None, help="At most this many objects per dataset (seeded draw)."),
    min_area: int = typer.Option(16, help="Smallest object, pixels (voxels in 3D)."),
    no_logits: bool = typer.Option(False, "--no-logits", help="Do not send the tool's previous logits with each prompt."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint instead of the shipped weights."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also copy results JSON here."),
    seed: int = typer.Option(0, help="Seed (object draw, click tie-breaks, bootstrap)."),
    runs_dir: Path = typer.Option(Path("medagent-runs"), help="Where run folders go."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_FOLDER",
                                          help="Continue this interrupted run folder (rerun the same command with "
                                               "--resume added): finished objects are read back, not recomputed."),
) -> None:
    """The interactive protocol: a box, then simulated corrective clicks; Dice/NSD per step, AUCs, NoC@85/90.

    Each click goes to the distance-transform maximum of the largest error region (positive on a miss,
    negative on an over-segmentation). NoC clicks on up to 20 (failures count 20). Means with 95% bootstrap
    intervals per dataset and modality; see docs/evaluation.md.
    """
    from medagent.eval.interactive import evaluate_interactive, interactive_table

    def run():
        if (data is None) == (dataset is None):
            _fail("give exactly one of --data DIR or --dataset NAME")
        names = [d.strip() for d in dataset.split(",") if d.strip()] if dataset is not None else None
        report = evaluate_interactive(name, dataset=names, data_dir=data, split=split, clicks=clicks, box=not no_box,
                                      max_objects=max_objects, min_area=min_area, seed=seed, checkpoint=checkpoint,
                                      use_previous_logits=not no_logits, run_root=runs_dir, json_out=json_out,
                                      progress=_console().is_terminal, resume=resume,
                                      on_run=_announce_run(resume, "objects"))
        mode = "click-only" if no_box else "box"
        title = f"{name}: {mode} + {clicks} clicks on {split} (mean, 95% CI below; NoC up to 20 clicks)"
        _console().print(interactive_table(report, title=title))
        if report.skipped:
            _console().print(f"skipped {len(report.skipped)} (listed in the results)")
        _console().print(f"results: {report.results}")
        _console().print(f"report: {report.report}")

    _run_guarded(run)


# ---------------------------------------------------------------------------------------------- env
def _env_settings(dataset: Optional[str], data: Optional[Path], split: str, max_turns: int, image_size: int,
                  skip_bad: bool = False) -> dict:
    if dataset is not None and data is not None:
        _fail("give at most one of --dataset NAME or --data DIR")
    settings: dict = {"split": split, "max_turns": max_turns, "image_size": image_size}
    if data is not None:
        settings["data_dir"] = str(data)
        if skip_bad:
            settings["skip_bad"] = True
    elif dataset is not None:
        settings["dataset"] = dataset
    return settings


def _prompt_tool(prompt_tool: str, prompt_checkpoint: Optional[str]) -> Optional[dict]:
    """{name: tool} for `--prompt-tool` / `--prompt-checkpoint` (None for the default sam with its shipped weights),
    built here so a missing or bad checkpoint is one error line instead of failed calls in every episode."""
    if prompt_tool == "sam" and not prompt_checkpoint:
        return None
    from medagent.tools import load_tool

    return {prompt_tool: load_tool(prompt_tool, checkpoint=prompt_checkpoint or None)}


def _recipe_defaults(ctx: typer.Context, recipe: Optional[Path]) -> Optional[Path]:
    """`--recipe FILE`: a YAML mapping of the command's options (names with _ or -) used as their defaults, so
    flags on the command line still win (click's `default_map`); an unknown option name is an error."""
    if recipe is None:
        return None
    import yaml

    try:
        values = yaml.safe_load(Path(recipe).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read recipe {recipe}: {exc}") from exc
    if not isinstance(values, dict):
        raise typer.BadParameter(f"recipe {recipe}: expected a mapping of option names to values")
    names = {p.name for p in ctx.command.params if p.name != "recipe"}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise typer.BadParameter(f"recipe {recipe}: unknown option(s) {', '.join(unknown)}; "
                                 f"options: {', '.join(sorted(names))}")
    ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in values.items() if v is not None}}
    return recipe


@env_app.command("play")
def env_play(
    dataset: Optional[str] = typer.Option(None, help="Builtin dataset (default: the env's default)."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder."),
    split: str = typer.Option("test", help="Split episodes come from."),
    agent: str = typer.Option("expert", help="expert, oracle-box, mean-box, auto, random, or vlm (with --model)."),
    model: Optional[str] = typer.Option(None, help="For --agent vlm: the policy folder (e.g. an SFT run's model/)."),
    episodes: int = typer.Option(5, help="Episodes to play."),
    out: Optional[Path] = typer.Option(None, help="Folder for frames (per episode: step PNGs, final.png, actions.json)."),
    max_turns: int = typer.Option(5, help="Turns before truncation."),
    image_size: int = typer.Option(512, help="Side of the image the policy sees, pixels."),
    seed: int = typer.Option(0, help="Seed."),
    prompt_tool: str = typer.Option("sam", help="Promptable tool behind add_bbox / add_point (see `medagent tool list`), e.g. sam2 with --prompt-checkpoint."),
    prompt_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint of --prompt-tool (sam2: a SAM 2.1 or MedSAM2 .pt; sam: an official .pth), instead of its shipped weights."),
) -> None:
    """Play episodes with an agent; print per-episode Dice, turns and rewards."""
    from rich.table import Table

    from medagent.agents.play import play

    def run():
        agent_kwargs = {"model": model} if agent == "vlm" else {}
        if agent == "vlm" and model is None:
            _fail("--agent vlm needs --model FOLDER (a saved policy, e.g. an SFT run's model/ folder)")
        settings = _env_settings(dataset, data, split, max_turns, image_size)
        if prompt_tool != "sam" or prompt_checkpoint is not None:
            from medagent.tools import load_tool

            # built here, so a missing or bad checkpoint is one error line instead of failed calls in every episode
            settings.update(prompt_tool=prompt_tool, tools={prompt_tool: load_tool(prompt_tool, checkpoint=prompt_checkpoint)})
        rows = play(settings, agent=agent, episodes=episodes, out=out, seed=seed, agent_kwargs=agent_kwargs)
        table = Table(title=f"{agent} on {dataset or data or 'the default dataset'} ({split})")
        for col in ("episode", "case", "Dice", "IoU", "turns", "episode score", "sum of rewards", "actions"):
            table.add_column(col, overflow="fold")
        for r in rows:
            names = [a.split('"name": "')[1].split('"')[0] if '"name": "' in a else "?" for a in r["actions"]]
            table.add_row(str(r["episode"]), r["case"], f"{r['dice']:.3f}", f"{r['iou']:.3f}", str(r["turns"]),
                          f"{r['episode_score']:.3f}", f"{r['total_reward']:.3f}", " > ".join(names))
        _console().print(table)
        mean = sum(r["dice"] for r in rows) / max(len(rows), 1)
        _console().print(f"mean Dice {mean:.3f} over {len(rows)} episodes" + (f"; frames in {out}" if out else ""))

    _run_guarded(run)


# ---------------------------------------------------------------------------------------------- trajectories
@traj_app.command("generate")
def traj_generate(
    out: Path = typer.Option(..., help="Output folder (shards of a Hugging Face dataset on disk)."),
    agent: str = typer.Option("expert", help="Agent that plays."),
    dataset: Optional[str] = typer.Option(None, help="Builtin dataset."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder."),
    split: str = typer.Option("train", help="Split episodes come from."),
    episodes: int = typer.Option(100, help="Episodes."),
    workers: int = typer.Option(1, help="Worker processes (same seed -> same trajectories for any count)."),
    shard_size: int = typer.Option(16, help="Episodes per shard (the unit of atomic writes and resume)."),
    max_turns: int = typer.Option(5, help="Turns before truncation."),
    image_size: int = typer.Option(512, help="Policy image side, pixels."),
    seed: int = typer.Option(0, help="Seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted generation in OUT."),
) -> None:
    """Generate trajectories with an agent, stored durably and resumably."""
    import functools

    from medagent.envs import InteractiveSegEnv
    from medagent.trajectories import GenerateConfig, generate

    def run():
        settings = _env_settings(dataset, data, split, max_turns, image_size)
        config = GenerateConfig(agent=agent, episodes=episodes, seed=seed, shard_size=shard_size, workers=workers)
        path = generate(functools.partial(InteractiveSegEnv, **settings), out, config, resume=resume,
                        env_description=settings, progress=True)
        _console().print(f"trajectories in {path}")

    _run_guarded(run)


@traj_app.command("export")
def traj_export(
    path: Path = typer.Argument(..., help="Trajectory folder from `generate`."),
    out: Path = typer.Option(..., help="Output folder (datasets on disk: train and val)."),
    format: str = typer.Option("trl", help="Export format (trl: messages + images for SFTTrainer)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of subjects held out for validation."),
    min_score: Optional[float] = typer.Option(None, help="Keep only episodes scoring at least this."),
) -> None:
    """Export trajectories as TRL SFT data (split by subject: no subject in both splits)."""
    from medagent.trajectories import export_trl

    def run():
        if format != "trl":
            _fail(f"--format {format!r} is not supported; use trl")
        result = export_trl(path, out, val_fraction=val_fraction, min_score=min_score)
        _console().print(f"exported to {out}: {result}")

    _run_guarded(run)


@traj_app.command("show")
def traj_show(
    path: Path = typer.Argument(..., help="Trajectory folder."),
    index: int = typer.Option(0, help="Episode index."),
    out: Path = typer.Option(Path("episode-frames"), help="Folder for the frames."),
) -> None:
    """Write an episode's frames as PNGs plus its actions."""
    from medagent.trajectories import show

    def run():
        files = show(path, index, out)
        _console().print(f"wrote {len(files)} frames to {out}")

    _run_guarded(run)


# ---------------------------------------------------------------------------------------------- train
class _TrainToolCommand(click.Command):
    """`medagent train tool NAME`: every field of the trainer's config dataclass is a flag.

    Flags are built on first use (imports the config's module), so listing the trainers stays fast. Each
    flag is the field's name with dashes (`--max-steps`), typed by the field (`config_io.parse_value`),
    with the field's docstring entry as its help and the dataclass default shown.
    """

    #: shorter spellings, the same on every trainer that has the field (`medagent train sft` uses them too)
    SHORT_FLAGS = {"max_steps": ("--steps",), "output_dir": ("--out",), "data_dir": ("--data",)}
    OWN_FLAGS = ("--config", "--set", "--show-config", "--help")

    def __init__(self, trainer: str) -> None:
        from medagent.train.launch import TRAINERS

        self.trainer = trainer
        self._lazy_params: Optional[list] = None
        summary = TRAINERS[trainer].summary
        super().__init__(trainer, callback=self._invoke, help=f"Train {summary}.", short_help=f"Train {summary}.",
                         context_settings={"max_content_width": 120})

    @property
    def params(self) -> list:
        if self._lazy_params is None:
            self._lazy_params = self._build_params()
        return self._lazy_params

    @params.setter
    def params(self, value: list) -> None:  # click.Command.__init__ assigns its (empty) list
        self._lazy_params = list(value) or None

    def format_help_text(self, ctx, formatter) -> None:
        import inspect

        from medagent.train.launch import config_class, fixed_fields

        cls = config_class(self.trainer)
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
        fixed = ", ".join(f"{k}={v!r}" for k, v in fixed_fields(self.trainer).items())
        text = (f"{self.help}\n\n{cls.__name__}: {doc}\n\nEvery {cls.__name__} field is a flag below"
                + (f" (except {fixed}, which `{self.trainer}` fixes)" if fixed else "") + ".")
        formatter.write_paragraph()
        with formatter.indentation():
            for paragraph in text.split("\n\n"):
                formatter.write_text(paragraph)
                formatter.write_paragraph()

    def _build_params(self) -> list:
        import dataclasses

        from medagent.train.config_io import field_default, field_help, field_types
        from medagent.train.launch import config_class, fixed_fields

        cls = config_class(self.trainer)
        hints, helps, fixed = field_types(cls), field_help(cls), fixed_fields(self.trainer)
        params = []
        for f in dataclasses.fields(cls):
            if not f.init or f.name in fixed:
                continue
            hint, default = hints[f.name], field_default(f)
            flag = "--" + f.name.replace("_", "-")
            if flag in self.OWN_FLAGS or f"--no-{flag[2:]}" in self.OWN_FLAGS:
                raise RuntimeError(f"{cls.__name__}.{f.name} collides with the command's own {flag}")
            text = helps.get(f.name, "(undocumented)")
            if dataclasses.is_dataclass(hint):
                text += f" {hint.__name__} fields: {', '.join(g.name for g in dataclasses.fields(hint))}."
            text += f"  [default: {_show_default(default)}]"
            if hint is bool:
                params.append(click.Option([f.name, f"{flag}/--no-{flag[2:]}"], default=None, help=text))
            else:
                params.append(click.Option([f.name, flag, *self.SHORT_FLAGS.get(f.name, ())], type=_FieldType(cls, f.name),
                                           default=None, metavar=_metavar(hint), help=text))
        params += [
            click.Option(["config_file", "--config"], type=click.Path(exists=True), default=None, metavar="PATH",
                         help=f"Start from a saved {cls.__name__} (a config.json or a run folder; names from before the "
                              "rename to max_steps/output_dir are read); flags override it."),
            click.Option(["set_", "--set"], multiple=True, metavar="FIELD=VALUE",
                         help="Any field as text, the same as its flag: --set lr=0.001 (repeatable)."),
            click.Option(["show_config", "--show-config"], is_flag=True, default=False, help="Print the resolved config and exit."),
        ]
        return params

    def _invoke(self, config_file=None, set_=(), show_config=False, **flags) -> None:
        import dataclasses

        from click.core import ParameterSource

        from medagent.train.launch import make_config, train

        ctx = click.get_current_context()
        values = {k: v for k, v in flags.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}

        def run():
            config = make_config(self.trainer, values, texts=_parse_sets(list(set_)), config_file=config_file)
            if show_config:
                _console().print(dataclasses.asdict(config))
                return
            best = train(self.trainer, config)
            _console().print(f"trained: {best}  (use it with --checkpoint {best})")

        _run_guarded(run)


class _FieldType(click.ParamType):
    """A config field's value from the command line, typed by the field (`config_io.parse_value`)."""

    name = "value"

    def __init__(self, cls: type, field: str) -> None:
        self.cls, self.field = cls, field

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        from medagent.train.config_io import parse_value

        try:
            return parse_value(self.cls, self.field, value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _metavar(hint) -> str:
    import dataclasses
    import types
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return "|".join(_metavar(a) for a in rest) + "|none"
    if hint is bool:
        return "true|false"
    if typing.get_origin(hint) in (list, tuple):
        return "A,B,..|JSON"
    if typing.get_origin(hint) is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "JSON"
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(hint, "VALUE")


def _show_default(value) -> str:
    import dataclasses
    import json

    if value is None:
        return "none"
    if dataclasses.is_dataclass(value):
        return f"{type(value).__name__}()"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "empty"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


class _TrainToolGroup(TyperGroup):
    """The trainers of `medagent.train.launch.TRAINERS`, one generated command each."""

    def list_commands(self, ctx) -> list:
        from medagent.train.launch import TRAINERS

        return list(TRAINERS)

    def get_command(self, ctx, name):
        from medagent.train.launch import TRAINERS

        return _TrainToolCommand(name) if name in TRAINERS else None

    def resolve_command(self, ctx, args):
        from medagent.train.launch import TRAINERS

        if args and not args[0].startswith("-") and args[0] not in TRAINERS:
            _fail(f"no trainer for tool {args[0]!r}; trainable tools: {', '.join(TRAINERS)}")
        return super().resolve_command(ctx, args)


train_tool_app = typer.Typer(
    cls=_TrainToolGroup, no_args_is_help=True,
    help="Train a tool: `medagent train tool NAME --help` lists every field of its trainer's config as a flag "
         "(--max-steps, --output-dir, --seed, ...; resumes from the output folder).",
)
train_app.add_typer(train_tool_app, name="tool")


def _parse_sets(items: Optional[List[str]]) -> dict:
    """['lr=0.001', 'steps=3'] -> {'lr': '0.001', 'steps': '3'}."""
    overrides = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--set expects field=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    return overrides


def _given(ctx: typer.Context, names: Tuple[str, ...]) -> set:
    """The parameters among `names` given on the command line (not left at their defaults)."""
    from click.core import ParameterSource

    return {n for n in names if ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, None)}


@train_app.command("sft")
def train_sft_cmd(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Option(None, help="A YAML recipe (configs/sft/...): its fields first, then the "
                                          "flags given here, then --set."),
    data: Optional[List[str]] = typer.Option(None, help="TRL export folder(s) from `medagent trajectories export` "
                                             "(repeat for several; optional with --stage grounding)."),
    stage: str = typer.Option("trajectories", help="trajectories (multi-turn episodes) or grounding (image + "
                              "instruction -> one add_bbox with the target's box, drawn from the builtin train splits)."),
    model: Optional[str] = typer.Option(None, help="A local VLM folder (e.g. Qwen3-VL, or an earlier stage's model/); "
                                        "default: the tiny offline VLM."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: one epoch)."),
    lora: bool = typer.Option(False, help="Train LoRA adapters (peft) and merge them into model/ at the end."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "--out", help="Run folder."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the run folder (needs --output-dir)."),
    seed: int = typer.Option(0, help="Seed."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any other SFTRunConfig field: --set learning_rate=1e-4."),
) -> None:
    """Supervised fine-tuning of the policy (TRL SFTTrainer, assistant-only loss, tools through the chat template).

    Several processes or GPUs: `accelerate launch [--config_file configs/accelerate/...] -m medagent.train.sft
    --recipe FILE` (README, GPU section)."""
    from medagent.train.launch import config_from
    from medagent.train.sft import SFTRunConfig, run_sft

    def run():
        values = {"data": [str(d) for d in data or []], "stage": stage, "model": model, "output_dir": output_dir, "seed": seed,
                  "lora": lora, "resume": resume, "progress": True}
        if steps is not None:
            values["max_steps"] = steps
        if recipe is not None:
            from medagent.train.recipes import load_recipe

            given = _given(ctx, ("data", "stage", "model", "steps", "lora", "output_dir", "resume", "seed"))
            values = {k: v for k, v in values.items() if k in given or k == "progress" or (k == "max_steps" and "steps" in given)}
            config = load_recipe(recipe, values, _parse_sets(set_), trainer="sft")
        else:
            config = config_from(SFTRunConfig, values, _parse_sets(set_))
        folder = run_sft(config)
        _console().print(f"SFT run folder: {folder} (policy in {folder / 'model'})")

    _run_guarded(run)


@train_app.command("grpo")
def train_grpo_cmd(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Option(None, help="A YAML recipe (configs/grpo/...): its fields first, then the "
                                          "flags given here (--dataset, --data, --split, --image-size, --max-turns "
                                          "change those keys of its env; --generations sets num_generations only), "
                                          "then --set."),
    model: Optional[str] = typer.Option(None, help="The policy to start from (an SFT run's model/ folder, or a local "
                                        "Qwen3-VL); default: the tiny random VLM (for smoke tests only)."),
    dataset: str = typer.Option("mni-lesion", help="Builtin dataset of the training env."),
    data: Optional[Path] = typer.Option(None, help="A dataset folder instead of --dataset."),
    split: str = typer.Option("train", help="Split the prompts come from."),
    prompts: Optional[int] = typer.Option(256, help="Prompt rows (case, target) drawn from the split."),
    steps: int = typer.Option(20, help="Optimisation steps."),
    generations: int = typer.Option(4, help="Rollouts per prompt (the GRPO group; also the per-device batch)."),
    image_size: int = typer.Option(224, help="Policy image side, pixels."),
    max_turns: int = typer.Option(5, help="Env turns (= TRL's max_tool_calling_iterations)."),
    lora: bool = typer.Option(False, help="Train LoRA adapters (peft), merged into model/ at the end."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "--out", help="Run folder."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the run folder (needs --output-dir)."),
    seed: int = typer.Option(0, help="Seed."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any other GRPORunConfig field: --set beta=0.04, "
                                             "--set 'term_weights={\"overshoot\": 0.5}'."),
) -> None:
    """RLVR in the environment: TRL GRPOTrainer, rollouts through the env's TRL adapter, verifiable rewards.

    Several processes or GPUs, vLLM rollouts: `accelerate launch [--config_file configs/accelerate/...] -m
    medagent.train.grpo --recipe FILE` (README, GPU section)."""
    from medagent.train.grpo import GRPORunConfig, run_grpo
    from medagent.train.launch import config_from

    def run():
        if recipe is not None:
            from medagent.train.recipes import load_recipe, read_recipe

            given = _given(ctx, ("model", "dataset", "data", "split", "prompts", "steps", "generations", "image_size",
                                 "max_turns", "lora", "output_dir", "resume", "seed"))
            if "dataset" in given and "data" in given:
                _fail("give at most one of --dataset NAME or --data DIR")
            env = dict(read_recipe(recipe).get("env") or {})
            for flag, key, value in (("split", "split", split), ("image_size", "image_size", image_size),
                                     ("max_turns", "max_turns", max_turns)):
                if flag in given:
                    env[key] = value
            if "dataset" in given:
                env.pop("data_dir", None)
                env["dataset"] = dataset
            if "data" in given:
                env.pop("dataset", None)
                env["data_dir"] = str(data)
            named = {"model": model, "prompts": prompts, "max_steps": steps, "num_generations": generations,
                     "lora": lora, "output_dir": output_dir, "resume": resume, "seed": seed}
            flags = {"max_steps": "steps", "num_generations": "generations"}
            values = {k: v for k, v in named.items() if flags.get(k, k) in given}
            values["env"] = env
            config = load_recipe(recipe, values, _parse_sets(set_), trainer="grpo")
        else:
            env = _env_settings(dataset, data, split, max_turns, image_size)
            values = {"model": model, "env": env, "prompts": prompts, "max_steps": steps, "num_generations": generations,
                      "per_device_train_batch_size": generations, "lora": lora, "output_dir": output_dir,
                      "resume": resume, "seed": seed}
            config = config_from(GRPORunConfig, values, _parse_sets(set_))
        folder = run_grpo(config)
        _console().print(f"GRPO run folder: {folder} (policy in {folder / 'model'})")

    _run_guarded(run)


@train_app.command("policy")
def train_policy_cmd(
    output_dir: str = typer.Option("medagent-runs/policy", "--output-dir", "--out",
                                   help="Recipe folder (rerun the same command to continue)."),
    ship_it: bool = typer.Option(False, "--ship", help="Copy the final policy into medagent/weights/policy-tiny."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any PolicyRecipeConfig field: --set sft_steps=800."),
) -> None:
    """The shipped policy's whole recipe: teacher trajectories -> grounding SFT -> trajectory SFT -> GRPO."""
    from medagent.train.launch import config_from
    from medagent.train.policy_recipe import PolicyRecipeConfig, run_recipe, ship

    def run():
        config = config_from(PolicyRecipeConfig, {"output_dir": output_dir}, _parse_sets(set_))
        final = run_recipe(config)
        _console().print(f"policy: {final}")
        if ship_it:
            from medagent.eval.agent_eval import card_rows

            _console().print(f"shipped: {ship(config, card_rows)}")

    _run_guarded(run)


@eval_app.command("agent")
def eval_agent(
    agents: str = typer.Option("expert,oracle-box,mean-box,auto,random", help="Comma-separated agent names."),
    dataset: Optional[str] = typer.Option(None, help="Builtin dataset (default: the env's default)."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder."),
    split: str = typer.Option("test", help="Split episodes come from."),
    episodes: int = typer.Option(20, help="Episodes per agent (the same episodes for every agent)."),
    model: Optional[str] = typer.Option(None, help="Policy folder for the 'vlm' agent."),
    policy: str = typer.Option("shipped", help="The 'policy' agent's model: 'shipped' (medagent/weights/policy-tiny), "
                               "a local VLM folder, or a Hugging Face Hub id (owner/name[@revision], downloaded once)."),
    max_turns: int = typer.Option(5, help="Turns before truncation."),
    image_size: int = typer.Option(128, help="Policy image side, pixels (the shipped policy was trained at 128)."),
    prompt_profile: str = typer.Option("medagent", help="Prompt format of the policy/vlm agents: medagent, or "
                                       "medsam-agent (MedSAM-Agent's released policy; needs --prompt-source)."),
    prompt_source: Optional[str] = typer.Option(None, help="For --prompt-profile medsam-agent: a MedSAM-Agent clone "
                                                "(its prompt texts are read from it; default $MEDAGENT_MEDSAM_AGENT)."),
    prompt_tool: str = typer.Option("sam", help="Promptable tool behind add_bbox / add_point (e.g. sam2 with "
                                    "--prompt-checkpoint)."),
    prompt_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint of --prompt-tool (sam2: a SAM 2.1 or "
                                                    "MedSAM2 .pt) instead of its shipped weights."),
    max_new_tokens: int = typer.Option(64, help="Generation budget per turn of the policy/vlm agents, tokens."),
    dtype: Optional[str] = typer.Option(None, help="Weights' dtype of the policy/vlm agents: auto, bfloat16, float16 "
                                        "or float32 (default: float32, the stored dtype on CUDA)."),
    device: Optional[str] = typer.Option(None, help="Torch device of the policy/vlm agents (e.g. cuda; default cpu)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", is_eager=True, callback=_recipe_defaults,
                                          help="YAML of this command's options (e.g. configs/eval/medsam-agent.yaml); "
                                               "flags given here override it."),
    record_turns: int = typer.Option(2, help="Episodes per agent kept turn by turn for the report's trajectory viewer."),
    volume: Optional[bool] = typer.Option(None, "--volume/--no-volume",
                                          help="Volumes: one episode per slice holding the target, reassembled and "
                                               "scored in 3D (default when the split's cases are 3D); --no-volume plays "
                                               "one random labelled slice per episode."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="With --data: leave unreadable files out and list them "
                                  "in the results and the report."),
    max_slices: Optional[int] = typer.Option(None, help="Volume episodes play at most this many slices (a contiguous "
                                             "run around the target's largest; 3D metrics over that slab)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also copy results JSON here."),
    seed: int = typer.Option(0, help="Seed."),
    runs_dir: Path = typer.Option(Path("medagent-runs"), help="Where run folders go."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_FOLDER",
                                          help="Continue this interrupted run folder (rerun the same command with "
                                               "--resume added): finished episodes are read back, not recomputed."),
) -> None:
    """Score agents in the environment on the same episodes: Dice, IoU, turns, episode score (95% CIs).

    On volumes (NIfTI, NRRD, MHA, ... folders) each episode plays every slice holding its target and adds 3D Dice,
    IoU, NSD and HD95 of the reassembled mask. The run folder's report.html shows the tables, Dice per turn and
    the recorded episodes turn by turn."""
    from medagent.eval.agent_eval import agents_table, run_agent_eval

    def run():
        names = [a.strip() for a in agents.split(",") if a.strip()]
        if "vlm" in names and model is None:
            _fail("the vlm agent needs --model FOLDER")
        vlm_kwargs = {"profile": prompt_profile, "prompt_source": prompt_source, "max_new_tokens": max_new_tokens,
                      "dtype": dtype, "device": device}
        kwargs = {"vlm": {"model": model, **vlm_kwargs}} if model else {}
        kwargs["policy"] = {"policy": policy, **vlm_kwargs}
        settings, tools = _env_settings(dataset, data, split, max_turns, image_size, skip_bad), _prompt_tool(prompt_tool, prompt_checkpoint)
        if tools:
            settings["prompt_tool"] = prompt_tool
        path, df = run_agent_eval(settings, names, tools=tools, episodes=episodes,
                                  seed=seed, agent_kwargs=kwargs, json_out=str(json_out) if json_out else None,
                                  run_root=str(runs_dir), record_turns=record_turns, resume=resume,
                                  on_run=_announce_run(resume, "episodes"), volumes=volume, max_slices=max_slices)
        _console().print(agents_table(df, title="Agents on the same episodes (reads GT = oracle, not a policy)"))
        _console().print(f"results: {path}")
        _console().print(f"report: {path.parent / 'report.html'}")

    _run_guarded(run)


@eval_app.command("ctta")
def eval_ctta(
    dataset: str = typer.Option("mni-tissue", help="Builtin dataset with a shipped source model (mni-tissue, nuclei)."),
    methods: str = typer.Option("noadapt,tent,cotta,vptta,mgipt", help="Comma-separated methods (also mgipt-reduced)."),
    rounds: int = typer.Option(3, help="Repetitions of the centre sequence."),
    centres: Optional[str] = typer.Option(None, help="Centres in stream order, e.g. B,C,D,E (default)."),
    severity: Optional[float] = typer.Option(None, help="Shift severity 1-5 (default per dataset)."),
    max_cases: Optional[int] = typer.Option(None, help="Cases per centre (seeded subsample)."),
    episodic: bool = typer.Option(False, help="Reset every method at each centre change (comparison mode)."),
    checkpoint: Optional[str] = typer.Option(None, help="Source segmenter checkpoint (folder or Hub id hf://owner/name[@revision]) instead of the shipped one."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also copy results JSON here."),
    seed: int = typer.Option(0, help="Seed."),
    runs_dir: Path = typer.Option(Path("medagent-runs"), help="Where run folders go."),
) -> None:
    """Continual test-time adaptation over a multi-centre stream: Dice per centre and round, degradation, forgetting, cost."""
    from medagent.eval.ctta_report import ctta_table
    from medagent.eval.ctta import evaluate_ctta

    def run():
        names = [m.strip() for m in methods.split(",") if m.strip()]
        order = [c.strip() for c in centres.split(",")] if centres else None
        report = evaluate_ctta(dataset, names, rounds=rounds, centres=order, seed=seed, episodic=episodic,
                               json_out=json_out, run_root=runs_dir, severity=severity, max_cases=max_cases,
                               checkpoint=checkpoint)
        title = f"Continual TTA on {dataset} ({'episodic' if episodic else 'continual'}, {rounds} rounds)"
        _console().print(ctta_table(report.ctta, names, title=title))
        _console().print(f"results: {report.results}")
        _console().print(f"report: {report.report}")

    _run_guarded(run)


@eval_app.command("report")
def eval_report(
    run_folder: Path = typer.Argument(..., help="A run folder: an evaluation (results.json) or a training run (metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, help="Where to write it (default RUN_FOLDER/report.html)."),
) -> None:
    """(Re)write the self-contained HTML report of a run folder: tables, plots, trajectories or training curves."""
    from medagent.eval.report import write_report

    _run_guarded(lambda: _console().print(f"report: {write_report(run_folder, out=out)}"))


@eval_app.command("compare")
def eval_compare(
    run_a: Path = typer.Argument(..., help="The first run folder (or its results.json): the reference."),
    run_b: Path = typer.Argument(..., help="The second run folder (or its results.json); differences are B - A."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metrics (default: dice, iou, nsd, hd95, assd, "
                                                     "episode_score, turns, and on volume agent runs dice_3d, iou_3d, "
                                                     "nsd_3d, hd95_3d, those both runs have)."),
    method_a: Optional[str] = typer.Option(None, help="Method of run A to compare, when the runs' method names do not pair."),
    method_b: Optional[str] = typer.Option(None, help="Method of run B to compare."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison rows as JSON here."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """Paired per-case differences of two runs (B - A) on the cases both hold, with 95% bootstrap intervals."""
    from rich.table import Table

    from medagent.eval.compare import compare_runs

    def run():
        names = tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics else None
        df = compare_runs(run_a, run_b, metrics=names, method_a=method_a, method_b=method_b, seed=seed)
        table = Table(title=f"{run_b} - {run_a} (paired cases, 95% bootstrap over subjects)")
        for column in ("A", "B", "dataset", "metric", "n", "mean A", "mean B", "B - A [95% CI]"):
            table.add_column(column, justify="right" if column in ("n", "mean A", "mean B") else "left")
        for r in df.itertuples():
            cell = "-" if r.diff is None else f"{r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]"
            table.add_row(r.method_a, r.method_b, r.dataset, r.metric, str(r.n),
                          "-" if r.mean_a is None else f"{r.mean_a:.3f}", "-" if r.mean_b is None else f"{r.mean_b:.3f}", cell)
        _console().print(table)
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(df.to_json(orient="records", indent=2))

    _run_guarded(run)


# ---------------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo(
    out: Path = typer.Option(Path("medagent-runs"), help="Where the demo's run folder goes."),
    quick: bool = typer.Option(False, help="Fewer cases (for tests)."),
) -> None:
    """The main job on the embedded default: builtin datasets, each tool, the environment, agents and the shipped policy.

    Everything lands in one run folder with a self-contained report.html; its path is printed at the end."""
    from medagent.demo import run_demo

    _run_guarded(lambda: run_demo(out, quick=quick, console=_console()))


if __name__ == "__main__":  # pragma: no cover
    app()
