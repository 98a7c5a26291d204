"""The report of a real 3-turn episode in a real headless browser: Debian's chromium driven by playwright.

No browser is downloaded: playwright (the `test` extra) is pointed at the system's chromium, which `make test`
installs with apt-get where it is missing. The test is required (it fails, never skips, when chromium or
playwright is missing) under CI (`CI` set), with `MEDAGENT_REQUIRE_BROWSER=1`, and wherever apt-get exists
(there `make test` has installed chromium); elsewhere it skips with the reason. Outside CI,
`MEDAGENT_REQUIRE_BROWSER=0` turns the requirement off. `MEDAGENT_UPDATE_SCREENSHOT=1` also copies the screenshot to
docs/report-screenshot.png (the one docs/evaluation.md shows).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from medagent.agents import Agent
from medagent.envs.coords import convert_coords
from medagent.envs.parsing import format_call

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "report-screenshot.png"


def _required() -> str | None:
    """Why the browser test must run here (None: it may skip)."""
    flag = os.environ.get("MEDAGENT_REQUIRE_BROWSER", "")
    if os.environ.get("CI"):
        return "CI is set"
    if flag == "1":
        return "MEDAGENT_REQUIRE_BROWSER=1"
    if flag == "0":
        return None
    if shutil.which("apt-get"):
        return "apt-get is available, so `make test` installs chromium"
    return None


def _unavailable(reason: str) -> None:
    required = _required()
    if required:
        pytest.fail(f"{reason}, and the browser test is required here ({required}): run `make test` (it installs "
                    f"chromium with apt-get) or `apt-get install chromium`, and `pip install playwright`", pytrace=False)
    pytest.skip(f"{reason}: install Debian's chromium and playwright to run the report's browser test")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class ThreeTurns(Agent):
    """A scripted 3-turn episode from the ground truth: a loose box (over-segments), a negative click on the false
    positive farthest from the target, then the tight box; the env truncates after the third call."""

    name = "three-turns"
    uses_ground_truth = True

    def act(self, observation, env):
        ep = self.episode(env)
        ys, xs = np.nonzero(ep.gt)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        if ep.turns == 0:
            w, h = x1 - x0 + 1, y1 - y0 + 1
            box = [max(0, x0 - w), max(0, y0 - h), min(ep.width - 1, x1 + w), min(ep.height - 1, y1 + h)]
            return format_call("add_bbox", {"bbox_2d": convert_coords(box, ep.width, ep.height, to="frame").tolist()})
        if ep.turns == 1:
            wrong = ep.mask & ~ep.gt
            yy, xx = np.nonzero(wrong) if wrong.any() else (np.array([0]), np.array([0]))
            k = int(np.argmax((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2))
            point = convert_coords([int(xx[k]), int(yy[k])], ep.width, ep.height, to="frame").tolist()
            return format_call("add_point", {"point_2d": point, "point_type": "negative"})
        return format_call("add_bbox", {"bbox_2d": convert_coords([x0, y0, x1, y1], ep.width, ep.height, to="frame").tolist()})


def test_report_trajectory_viewer_steps_through_a_real_episode_in_chromium(tmp_path):
    executable = _chromium()
    if executable is None:
        _unavailable("no chromium on PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    from medagent.eval.agent_eval import run_agent_eval

    started = time.perf_counter()
    settings = {"dataset": "mni-lesion", "split": "test", "image_size": 128, "max_turns": 3}  # the shipped tiny SAM
    results, df = run_agent_eval(settings, [ThreeTurns()], episodes=1, record_turns=1, run_root=tmp_path)
    assert int(df["turns"].iloc[0]) == 3
    report = results.parent / "report.html"
    text = report.read_text(encoding="utf-8")
    frames = json.loads(re.search(r"<script type='application/json' class='frames'>(.*?)</script>", text, re.S)
                        .group(1))
    assert len(frames) == 4  # the start and the three turns
    assert len({f["src"] for f in frames}) == 4  # every turn changed the mask, so every frame differs

    problems: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: fetched.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri())
            viewer = page.locator(".viewer").first
            image, counter = viewer.locator("img.turn-image"), viewer.locator(".turn-counter")
            previous, following = viewer.locator("button.prev"), viewer.locator("button.next")
            assert counter.inner_text() == "turn 0 of 3" and previous.is_disabled() and not following.is_disabled()
            assert image.get_attribute("src") == frames[0]["src"]
            assert image.evaluate("img => img.complete && img.naturalWidth") == 128  # the PNG decoded
            calls = []
            for turn in (1, 2, 3):
                before = image.get_attribute("src")
                following.click()
                assert counter.inner_text() == f"turn {turn} of 3"
                src = image.get_attribute("src")
                assert src == frames[turn]["src"] and src != before  # the image changed with the turn
                calls.append(viewer.locator(".turn-info code").inner_text().split("(")[0])
                assert "reward term" in viewer.locator(".turn-info").inner_text()
            assert calls == ["add_bbox", "add_point", "add_bbox"]
            assert following.is_disabled()
            viewer.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            viewer.screenshot(path=str(tmp_path / "viewer.png"))
            previous.click()
            assert counter.inner_text() == "turn 2 of 3" and image.get_attribute("src") == frames[2]["src"]
        finally:
            browser.close()
    assert not problems, problems
    assert not fetched, f"the report fetched {fetched}"
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (tmp_path / "viewer.png").stat().st_size > 10_000
    if os.environ.get("MEDAGENT_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "report.png", DOCS_SCREENSHOT)
    assert time.perf_counter() - started < 120
