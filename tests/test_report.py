"""The HTML report of every run folder, read as text (no browser; tests/test_report_browser.py opens one)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fake_tools import SquareClicks
from medagent.envs.testing import fake_tools, make_dataset
from medagent.errors import ConfigError
from medagent.eval.report import write_report, write_training_report
from medagent.tools.base import Prediction, Tool

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_URI = "data:image/png;base64,"


def assert_self_contained(text: str) -> None:
    """Nothing the page would fetch: no http(s) or protocol-relative src/href, no stylesheet link, no external script."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert "@import" not in text and "url(" not in text
    for src in re.findall(r"""\bsrc\s*=\s*["']([^"']*)""", text):
        assert src.startswith(PNG_URI), src[:60]


def _mean(cell: dict) -> str:
    return f"{cell['mean']:.3f}"


class ErodedTruth(Tool):
    """Automatic: the ground truth with every class eroded once (good, not perfect)."""

    name = "eroded"
    class_names = {0: "background", 1: "square", 2: "disk", 3: "lesion"}

    def predict_2d(self, case):
        from scipy import ndimage

        out = np.zeros_like(case.label)
        for c in (1, 2, 3):
            out[ndimage.binary_erosion(case.label == c)] = c
        return Prediction(mask=out)


def test_tool_eval_report_has_the_summary_tables_and_distributions(tmp_path):
    from medagent.eval.results import load_results
    from medagent.eval.tool_eval import run_tool_eval

    results_path = run_tool_eval(ErodedTruth(), make_dataset(n_test=3), run_root=tmp_path, progress=False, n_resamples=200)
    report = results_path.parent / "report.html"
    assert report.exists()
    text = report.read_text(encoding="utf-8")
    assert_self_contained(text)
    results = load_results(results_path)
    for class_name, cell in results.summary["eroded"]["toy"].items():
        assert class_name in text
        for metric in ("dice", "iou", "nsd"):
            lo, hi = cell[metric]["ci95"]
            assert f"{_mean(cell[metric])} [{lo:.3f}, {hi:.3f}]" in text, (class_name, metric)
        assert f"{cell['hd95']['mean']:.2f}" in text and f"{cell['assd']['mean']:.2f}" in text
    for heading in ("Summary", "By dataset and modality", "Dice distributions", "Skipped", "per method and modality",
                    "s / case", "HD95 mm", "ASSD mm"):
        assert heading in text, heading
    assert results.cases["modality"].eq("MR").all()  # the per-case table names each case's modality
    assert text.count(f'src="{PNG_URI}') >= 1  # the Dice distribution plot


def test_agent_eval_report_has_agent_numbers_dice_per_turn_and_the_trajectory_viewer(tmp_path):
    from medagent.eval.agent_eval import run_agent_eval

    settings = {"dataset": make_dataset(), "image_size": 32, "load_tools": False, "min_area": 9}
    path, df = run_agent_eval(settings, ["expert", "random"], episodes=3, seed=0, run_root=tmp_path, tools=fake_tools(),
                              record_turns=2)
    text = (path.parent / "report.html").read_text(encoding="utf-8")
    assert_self_contained(text)
    for heading in ("Agents", "invalid-action rate", "tool calls", "s / episode", "Mean Dice after each call", "Trajectories",
                    "per agent and modality"):
        assert heading in text, heading
    summary = json.loads(path.read_text())["summary"]
    for agent in ("expert", "random"):
        assert _mean(summary[agent]["toy"]["episode target"]["dice"]) in text
    # two recorded episodes per agent, each a viewer with a frame per turn (plus the start) and the final / GT pair
    index = json.loads((path.parent / "episodes" / "episodes.json").read_text())
    assert [(e["agent"], e["episode"]) for e in index] == [("expert", 0), ("expert", 1), ("random", 0), ("random", 1)]
    viewers = re.findall(r"<script type='application/json' class='frames'>(.*?)</script>", text, re.S)
    assert len(viewers) == 4
    for entry, frames_text in zip(index, viewers):
        frames = json.loads(frames_text)
        row = df[(df.agent == entry["agent"]) & (df.episode == entry["episode"])].iloc[0]
        assert len(frames) == len(entry["turns"]) + 1 == row["calls"] + int(row["format_failed"]) + 1
        assert all(f["src"].startswith(PNG_URI) for f in frames)
        assert frames[-1]["label"] == f"turn {len(entry['turns'])} of {len(entry['turns'])}"
        turns = entry["turns"]
        assert turns[-1]["dice"] == pytest.approx(row["dice"])  # the last turn's Dice is the episode's
        assert sum(t["reward"] for t in turns) == pytest.approx(row["episode_score"], abs=1e-9)  # rewards add up to the score
        assert all("score" in t["terms"] and "outcome" in t["terms"] for t in turns)
        called = Counter(t["call"].split("(")[0] for t in turns if t["outcome"] != "format_failed")
        assert called == Counter(json.loads(row["tool_counts"]))  # the recorded calls are the episode's calls
    assert text.count("class='viewer'") == 4 and "ground truth (magenta)" in text


def test_evaluate_agents_records_only_when_asked():
    from medagent.eval.agent_eval import evaluate_agents

    settings = {"dataset": make_dataset(), "image_size": 32, "load_tools": False, "min_area": 9}
    with pytest.raises(ConfigError, match="record_dir"):
        evaluate_agents(settings, ["random"], episodes=1, tools=fake_tools(), record_turns=1)
    df = evaluate_agents(settings, ["expert"], episodes=2, tools=fake_tools())
    assert df["modality"].eq("MR").all() and df["instruction"].str.len().gt(0).all()
    per_turn = [json.loads(v) for v in df["dice_per_turn"]]
    assert [len(v) for v in per_turn] == list(df["calls"]) and [v[-1] for v in per_turn] == pytest.approx(list(df["dice"]))


def test_interactive_report_has_the_protocol_tables_and_the_click_curves(tmp_path):
    from medagent.eval.interactive import evaluate_interactive

    report = evaluate_interactive(SquareClicks(), dataset=make_dataset(n_test=3), clicks=2, max_objects=4, run_root=tmp_path,
                                  progress=False, n_resamples=100)
    assert report.report == report.run_dir / "report.html"
    text = report.report.read_text(encoding="utf-8")
    assert_self_contained(text)
    cell = report.by_dataset["toy"]["metrics"]
    for name in ("dice_0", "dice_1", "dice_2", "dsc_auc", "nsd_auc", "final_dice"):
        assert _stat_text(cell[name]) in text, name
    for heading in ("Interactive protocol", "Dice vs click per dataset", "NSD vs click per dataset", "Final Dice distributions",
                    "Dice box", "Dice c1", "DSC-AUC", "NoC@85", "per modality"):
        assert heading in text, heading
    assert text.count(f'src="{PNG_URI}') >= 3  # Dice and NSD curves, the final Dice distribution


def _stat_text(cell: dict) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def test_ctta_report_has_the_stream_table_and_plot(tmp_path):
    from medagent.eval.ctta import evaluate_ctta

    report = evaluate_ctta("nuclei", methods=["noadapt", "tent"], rounds=2, centres=["B", "D"], max_cases=1,
                           run_root=tmp_path, progress=False, forgetting=False)
    text = report.report.read_text(encoding="utf-8")
    assert_self_contained(text)
    for method in ("noadapt", "tent"):
        assert f"{report.ctta[method]['overall']:.3f}" in text
    for heading in ("Continual test-time adaptation", "centre B", "round 2", "degradation", "cost x noadapt",
                    "Dice along the stream", "Dice per centre"):
        assert heading in text, heading


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_reports_show_loss_reward_and_validation_curves(tmp_path):
    sft, grpo, tool = tmp_path / "sft", tmp_path / "grpo", tmp_path / "tool"
    for folder, command in ((sft, "train sft"), (grpo, "train grpo"), (tool, "train tool")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"command": command, "seed": 0}))
    # the formats the trainers write: TRL log lines (SFT, GRPO, the closing summary line), the tool trainer's validations
    _write_jsonl(sft / "metrics.jsonl", [{"step": s, "loss": 3.0 / s, "grad_norm": 1.0, "learning_rate": 1e-4,
                                          "mean_token_accuracy": 0.1 * s, "epoch": s / 10} for s in range(1, 6)]
                 + [{"step": 5, "train_runtime": 3.2, "train_loss": 1.1, "epoch": 0.5}])
    _write_jsonl(grpo / "metrics.jsonl", [{"step": s, "loss": 0.0, "reward": 0.1 * s, "reward_std": 0.05,
                                           "rewards/term_outcome/mean": 0.2 * s, "rewards/term_format/mean": 1.0,
                                           "learning_rate": 1e-5} for s in range(1, 5)])
    _write_jsonl(tool / "metrics.jsonl", [{"step": s, "train_loss": 1.0 / s, "val": {"dice": {"nucleus": 0.2 * s},
                                           "mean_dice": 0.2 * s}, "best": 0.2 * s, "seconds": s} for s in (10, 20, 30)])
    expected = {sft: ("Loss", "Token accuracy", "Learning rate", "Gradient norm"),
                grpo: ("Loss", "Reward", "Reward terms", "rewards/term_outcome/mean"),
                tool: ("Loss", "train_loss", "Validation", "val/mean_dice", "val/dice/nucleus")}
    for folder, headings in expected.items():
        path = write_training_report(folder)
        assert path == folder / "report.html"
        text = path.read_text(encoding="utf-8")
        assert_self_contained(text)
        assert "Training curves" in text and text.count(f'src="{PNG_URI}') >= len([h for h in headings if "/" not in h]) - 1
        for heading in headings:
            assert heading in text, (folder.name, heading)
    assert "train_runtime" not in (sft / "report.html").read_text()  # the closing summary line is not a curve point
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_jsonl(empty / "metrics.jsonl", [{"step": None, "event": "evaluated", "seconds": 1.0}])
    with pytest.raises(ConfigError, match="no training curves"):
        write_training_report(empty)


def test_a_run_folder_shows_its_nested_runs_and_the_cli_rewrites_the_report(tmp_path):
    from typer.testing import CliRunner

    from medagent.cli import app
    from medagent.eval.agent_eval import run_agent_eval
    from medagent.eval.runs import RunFolder

    parent = RunFolder.create("demo", config={"quick": True}, seed=0, root=tmp_path)
    settings = {"dataset": make_dataset(), "image_size": 32, "load_tools": False, "min_area": 9}
    run_agent_eval(settings, ["oracle-box"], episodes=1, run_root=parent.path, tools=fake_tools(), record_turns=1)
    (parent.path / "sft").mkdir()
    (parent.path / "sft" / "config.json").write_text(json.dumps({"command": "train sft"}))
    _write_jsonl(parent.path / "sft" / "metrics.jsonl", [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    (parent.path / "trajectories").mkdir()  # not a run folder: no section
    result = CliRunner().invoke(app, ["eval", "report", str(parent.path)])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (parent.path / "report.html").exists()
    text = (parent.path / "report.html").read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "(eval-agent)" in text and "(train sft)" in text and "Training curves" in text and "class='viewer'" in text
    assert "trajectories (" not in text
    with pytest.raises(ConfigError):
        write_report(tmp_path / "missing")


def test_eval_commands_print_the_report_path(tmp_path):
    from typer.testing import CliRunner

    from medagent.cli import app

    runner = CliRunner()
    runs = tmp_path / "runs"
    for args in (["eval", "tool", "unet", "--dataset", "nuclei", "--max-cases", "2"],
                 ["eval", "agent", "--dataset", "phantom", "--agents", "oracle-box", "--episodes", "2", "--record-turns", "1"]):
        result = runner.invoke(app, [*args, "--runs-dir", str(runs)])
        assert result.exit_code == 0, result.stdout
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("report: ")]
        path = Path(line.split("report: ", 1)[1].strip())
        assert path.name == "report.html" and path.exists() and path.parent.parent == runs
        assert_self_contained(path.read_text(encoding="utf-8"))
    (agent_run,) = [p for p in runs.iterdir() if p.name.startswith("eval-agent")]
    assert len(json.loads((agent_run / "episodes" / "episodes.json").read_text())) == 1
