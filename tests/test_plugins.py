"""Third-party tools through the `medagent.tools` entry points: a small tool package written into tmp_path with a
`*.dist-info/entry_points.txt` (what pip installs), put on sys.path; listed, run standalone (Python and CLI),
and reachable from the env as an `auto_segment` model. sys.path, the registry and the module cache are restored
after every test."""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medagent.errors import ToolError
from medagent.tools import registry

PLUGIN_MODULE = "medagent_demo_plugin"

PLUGIN_SOURCE = '''
"""A third-party tool package: intensity bands of the toy dataset (medagent.envs.testing) as classes."""
import numpy as np

from medagent.tools.base import Prediction, Tool, ToolKind
from medagent.tools.spec import ToolSpec


class BandTool(Tool):
    name = "demo-bands"
    kind = ToolKind.AUTOMATIC
    class_names = {0: "background", 1: "square", 2: "disk", 3: "lesion"}

    def predict_2d(self, case):
        # the toy images are label * 40 + noise: the nearest multiple of 40 is the class
        return Prediction(mask=np.clip(np.rint(case.image[0] / 40.0), 0, 3).astype(np.uint8))


def build(checkpoint=None, **config):
    return BandTool()


SPEC = ToolSpec("demo-bands", ToolKind.AUTOMATIC, "Demo plugin: intensity bands as classes.", module=__name__)


def promptable_spec():  # an entry point may also be a callable returning the ToolSpec
    return ToolSpec("demo-box", ToolKind.PROMPTABLE, "Demo plugin: fills the box.", module=__name__, builder="build_box")


class BoxTool(Tool):
    name = "demo-box"
    kind = ToolKind.PROMPTABLE
    inputs = frozenset({"boxes", "points", "point_labels", "mask_logits"})

    def predict_2d(self, case, boxes=None, points=None, point_labels=None, mask_logits=None):
        mask = np.zeros(case.shape, np.uint8)
        x0, y0, x1, y1 = (int(v) for v in np.asarray(boxes).reshape(-1, 4)[0])
        mask[y0:y1 + 1, x0:x1 + 1] = 1
        return Prediction(mask=mask)


def build_box(checkpoint=None, **config):
    return BoxTool()


def not_a_spec():
    return "nope"
'''


def _dist(site, name: str, version: str, entry_points: str) -> None:
    """A `<name>-<version>.dist-info` folder, as pip writes it, with the given entry_points.txt body."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A site folder holding the plugin module and its distribution, on sys.path for one test."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    _dist(site, "medagent-demo-plugin", "0.1", f"""
        [medagent.tools]
        demo-bands = {PLUGIN_MODULE}:SPEC
        demo-box = {PLUGIN_MODULE}:promptable_spec
        [console_scripts]
        unrelated = {PLUGIN_MODULE}:build
        """)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry.reset_plugins()
    yield site
    registry.reset_plugins()  # the fixture's sys.path entry goes with monkeypatch; forget its tools too
    sys.modules.pop(PLUGIN_MODULE, None)
    importlib.invalidate_caches()


@pytest.fixture(autouse=True)
def _restore_registry():
    """Every test leaves the registry as it found it (entries and the entry-point cache)."""
    before, origins = dict(registry.TOOL_REGISTRY), dict(registry._ORIGINS)
    yield
    registry.reset_plugins()
    registry.TOOL_REGISTRY.clear()
    registry.TOOL_REGISTRY.update(before)
    registry._ORIGINS.clear()
    registry._ORIGINS.update(origins)


def test_entry_point_tools_are_listed_and_run(plugin_site, square_case):
    from medagent.tools import list_tools, load_tool

    names = [spec.name for spec in list_tools()]
    assert {"demo-bands", "demo-box", "sam", "otsu"} <= set(names) and names == sorted(names)
    assert "medagent-demo-plugin 0.1" in registry.tool_origin("demo-bands")
    assert registry.tool_origin("sam") == "built-in"
    assert set(registry.external_tools()) == {"demo-bands", "demo-box"}
    pred = load_tool("demo-bands", dataset="toy").predict(square_case.replace(image=square_case.image * 40))
    assert (pred.mask == square_case.label).mean() > 0.99
    pred = load_tool("demo-box").predict(square_case, boxes=[10, 8, 21, 19])
    assert (pred.mask == square_case.label).all()


def test_cli_lists_and_runs_an_entry_point_tool(plugin_site, tmp_path):
    from medagent.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["tool", "list"])
    assert result.exit_code == 0, result.stdout
    assert "demo-bands" in result.stdout and "Demo plugin: intensity bands" in result.stdout and "demo-box" in result.stdout
    image = np.zeros((24, 32), np.uint8)
    image[4:12, 6:20] = 80  # class 2 (disk) of the toy bands
    Image.fromarray(image).save(tmp_path / "img.png")
    out = tmp_path / "mask.npy"
    result = runner.invoke(app, ["tool", "run", "demo-box", "--image", str(tmp_path / "img.png"), "--box", "6", "4", "19", "11",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.stdout
    mask = np.load(out).squeeze()
    assert mask.shape == (24, 32) and mask.sum() == 8 * 14 and mask[4:12, 6:20].all()


def test_an_entry_point_automatic_tool_reaches_the_policy(plugin_site):
    from medagent.envs import InteractiveSegEnv, format_call, parsing, tool_schema
    from medagent.envs.testing import fake_tools, make_dataset
    from medagent.envs.tool_specs import AUTO_MODELS, TOOL_SPECS, auto_models, tool_specs

    assert auto_models() == (*AUTO_MODELS, "demo-bands")  # the promptable demo-box is not an auto_segment model
    schema = {s["function"]["name"]: s["function"] for s in tool_schema()}
    assert schema["auto_segment"]["parameters"]["properties"]["model"]["enum"] == ["unet", "ifunet", "allukan", "demo-bands"]
    assert [s.name for s in tool_specs()] == [s.name for s in TOOL_SPECS]  # only the enum grew: no new tool names
    assert isinstance(parsing.validate_call("auto_segment", {"model": "demo-bands"}), parsing.ToolCall)
    assert isinstance(parsing.dict_action_to_call({"tool": 3, "model": 3}), parsing.ToolCall)

    tools = {k: v for k, v in fake_tools().items() if k != "unet"}  # everything else faked; demo-bands from the registry
    env = InteractiveSegEnv(dataset=make_dataset(), tools=tools, image_size=32, min_area=9, load_tools=True)
    assert env.tool_schema() == tool_schema()
    from medagent.envs import list_targets

    square = [t.class_name for t in list_targets(env.cases[0], 9)].index("square")
    env.reset(seed=0, options={"case_index": 0, "target_index": square})
    _, _, _, _, info = env.step(format_call("auto_segment", {"model": "demo-bands"}))
    assert info["outcomes"] == ["segment"] and info["dice"] > 0.9, info


def test_without_plugins_the_schema_is_the_frozen_one():
    from medagent.envs.tool_specs import AUTO_MODELS, TOOL_SPECS, auto_models, tool_schema, tool_specs

    registry.reset_plugins()
    assert auto_models() == AUTO_MODELS and tool_specs() is TOOL_SPECS
    assert tool_schema() == [spec.json_schema() for spec in TOOL_SPECS]


def test_a_broken_entry_point_is_skipped_with_a_warning_naming_its_distribution(plugin_site):
    from medagent.cli import app

    _dist(plugin_site, "medagent-broken-plugin", "2.0", """
        [medagent.tools]
        missing = no_such_module_anywhere:SPEC
        wrong-type = medagent_demo_plugin:not_a_spec
        """)
    registry.reset_plugins()
    with pytest.warns(registry.PluginWarning) as caught:
        names = {spec.name for spec in registry.list_tools()}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("medagent-broken-plugin 2.0" in m for m in messages), messages
    assert any("No module named 'no_such_module_anywhere'" in m for m in messages)
    assert any("gave str, not a medagent.tools.spec.ToolSpec" in m for m in messages)
    assert {"demo-bands", "demo-box", "otsu"} <= names and not {"missing", "wrong-type"} & names

    registry.reset_plugins()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.PluginWarning)
        result = CliRunner().invoke(app, ["tool", "list"])
    assert result.exit_code == 0 and "demo-bands" in result.stdout


def test_a_name_clash_with_a_builtin_tool_is_an_error_naming_both(plugin_site):
    _dist(plugin_site, "medagent-otsu-clone", "1.0", f"""
        [medagent.tools]
        otsu = {PLUGIN_MODULE}:clash_spec
        """)
    (plugin_site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE + textwrap.dedent('''
        def clash_spec():
            return ToolSpec("otsu", ToolKind.AUTOMATIC, "my otsu", module=__name__)
        '''))
    registry.reset_plugins()
    with pytest.raises(ToolError) as info:
        registry.list_tools()
    message = str(info.value)
    assert "medagent-otsu-clone 1.0" in message and "built-in tool 'otsu'" in message
    assert "medagent.tools.intensity_baseline" in message  # the built-in's own module
    with pytest.raises(ToolError, match="medagent-otsu-clone"):  # and again on the next call: not cached away
        registry.get_spec("sam")

    from medagent.cli import app

    result = CliRunner().invoke(app, ["tool", "list"])
    assert result.exit_code == 2 and "medagent-otsu-clone" in result.stdout  # one red line, no traceback


def test_register_tool_automatic_tools_join_the_enum_too():
    from medagent.envs.tool_specs import AUTO_MODELS, auto_models
    from medagent.tools.spec import ToolKind, ToolSpec

    registry.register_tool(ToolSpec("my-seg", ToolKind.AUTOMATIC, "mine", module="my.module"))
    assert registry.tool_origin("my-seg") == "register_tool"
    assert auto_models() == (*AUTO_MODELS, "my-seg")
    with pytest.raises(ToolError, match="registered twice"):
        registry.register_tool(ToolSpec("my-seg", ToolKind.AUTOMATIC, "another", module="my.other"))
