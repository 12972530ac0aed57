"""The manual stays true: README's and docs/'s links and anchors resolve, README's option table names every
option of `xaibatch run`, and the screenshot script still imports.

Anchors follow GitHub's rule: the heading lowercased, characters other than letters, digits, `-`, `_` and spaces
dropped, spaces turned into `-`, a repeated heading numbered `-1`, `-2`, ...
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from helpers import REPO

DOCS = [REPO / "README.md", REPO / "models" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(md: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _without_code_blocks(md.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _links(md: Path) -> list[str]:
    text = _without_code_blocks(md.read_text(encoding="utf-8"))
    return [u for u in re.findall(r"\]\(([^)\s]+)\)", text) if not u.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(md):
    broken = []
    for link in _links(md):
        path, _, anchor = link.partition("#")
        target = (md.parent / path) if path else md
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no such heading")
    assert not broken, broken


def test_the_anchor_rule_matches_githubs():
    # the README's own contents line relies on these two shapes: parentheses and a colon with code
    anchors = _anchors(REPO / "README.md")
    assert {"set-up-two-commands", "one-image-at-a-time-xaibatch-serve"} <= anchors


def test_readme_option_table_names_every_run_option():
    from xaibatch.cli.run import run

    section = REPO.joinpath("README.md").read_text(encoding="utf-8").split("### `xaibatch run INPUT_DIR`")[1]
    section = section.split("\n## ")[0]
    options = [o for p in run.params for o in p.opts if o.startswith("--") and o != "--help"]
    missing = [o for o in options if not re.search(re.escape(o) + r"(?![\w-])", section)]
    assert not missing, f"README's `xaibatch run` table lacks {missing}"


def test_screenshot_script_imports():
    spec = importlib.util.spec_from_file_location("make_screenshots", REPO / "docs" / "make_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its imports only; main() is not run
    assert callable(module.main) and callable(module.shoot)


def _explain_example(md: Path) -> str:
    """The first Python block of ``md`` that calls ``xaibatch.explain``."""
    blocks = re.findall(r"^```python\n(.*?)^```", md.read_text(encoding="utf-8"), flags=re.S | re.M)
    return next(b for b in blocks if "xaibatch.explain(" in b)


# a line of an example that says what its value is: `out.maps["gradcam"].shape   # torch.Size([4, 64, 64]): ...`,
# `out.overlay(0, "gradcam")   # ... over the model's input (64 x 64), ...`
SAID_SHAPE = re.compile(r"^(?P<expr>[^#\s][^#]*?)\s+#.*?(?P<said>torch\.Size\(\[[\d, ]+\]\))")
SAID_PICTURE = re.compile(r"^(?P<expr>[^#\s][^#]*?)\s+#.*?\((?P<w>\d+) x (?P<h>\d+)\)")


@pytest.mark.slow  # LIME on a few images: a minute on a busy 2-core box
@pytest.mark.parametrize("md", [REPO / "README.md", REPO / "docs" / "notebook.md"], ids=lambda p: p.name)
def test_the_explain_example_runs_and_its_values_are_what_its_comments_say(md, tmp_path, monkeypatch):
    block = _explain_example(md)
    monkeypatch.chdir(tmp_path)  # it saves into outputs/
    names: dict = {}
    exec(compile(block, str(md), "exec"), names)
    said = []
    for line in block.splitlines():
        if m := SAID_SHAPE.match(line):
            said.append((line, str(eval(m["expr"], names)), m["said"]))
        elif m := SAID_PICTURE.match(line):
            said.append((line, eval(m["expr"], names).size, (int(m["w"]), int(m["h"]))))
    assert said, "no line of the example says its value"
    wrong = [f"{line.strip()}: {got}" for line, got, want in said if got != want]
    assert not wrong, wrong


def test_every_log_json_event_is_named_in_readme_and_in_help():
    from xaibatch.cli.run import run

    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "xaibatch").rglob("*.py"))
    events = set(re.findall(r"\"event\": \"(\w+)\"", source)) | set(re.findall(r"self\.emit\(\"(\w+)\"", source))
    assert {"start", "plan", "failure", "end"} <= events  # the patterns still find the events
    row = next(
        line
        for line in REPO.joinpath("README.md").read_text(encoding="utf-8").splitlines()
        if "`--log-json`" in line[:16]
    )
    text = next(p.help for p in run.params if "--log-json" in p.opts)
    missing = {
        "README": sorted(e for e in events if f"`{e}`" not in row),
        "--help": sorted(e for e in events if not re.search(rf"\b{e}\b", text)),
    }
    assert missing == {"README": [], "--help": []}, missing


# options the docs name that belong to other tools (pip, ray start, docker, systemctl, timeout, rsync, timm's
# train.py, ruff), or that show a wrong option on purpose
OTHER_TOOLS_OPTIONS = {
    "--help", "--index-url", "--address", "--head", "--cpus", "--shm-size", "--now", "--preserve-status",
    "--delete", "--use-ema", "--check", "--bogus",
}  # fmt: skip


def test_every_option_the_manual_names_is_an_option_of_a_command():
    from xaibatch.cli import cli

    ours: set[str] = set()
    commands = [cli]
    while commands:
        command = commands.pop()
        ours.update(o for p in command.params for o in (*p.opts, *p.secondary_opts))
        commands.extend(getattr(command, "commands", {}).values())
    manual = [REPO / "README.md", REPO / "ARCHITECTURE.md"]
    manual += [REPO / "docs" / f"{n}.md" for n in ("methods", "notebook", "report", "robustness", "serve", "ray")]
    manual += [REPO / "docs" / "development.md"]
    unknown = {}
    for md in manual:
        for name in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", md.read_text(encoding="utf-8"))):
            if name.endswith("-"):  # `--lime-*`: a family of options
                known = any(o.startswith(name) for o in ours)
            else:
                known = name in ours or name in OTHER_TOOLS_OPTIONS
            if not known:
                unknown.setdefault(md.name, []).append(name)
    assert not unknown, unknown


def test_readme_run_table_defaults_are_the_options_defaults():
    """Where a row of README's `xaibatch run` table gives one plain default per option (`1000, 2000`, `off`,
    `gradcam`), it is the option's default; descriptions (`bundled model`, `automatic`) are left to the eye."""
    from xaibatch.cli.run import run

    by_name = {o: p for p in run.params for o in p.opts}
    section = REPO.joinpath("README.md").read_text(encoding="utf-8").split("### `xaibatch run INPUT_DIR`")[1]
    checked, wrong = 0, []
    for row in section.split("\n## ")[0].splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        if len(cells) != 3 or not cells[0].startswith("`-"):
            continue
        names = [re.search(r"--[a-z][a-z0-9-]*", o)[0] for o in re.findall(r"`([^`]+)`", cells[0])]
        said = [d.strip() for d in cells[1].split(",")]  # a value: `gradcam`, 1000, off or none; else a description
        if len(names) != len(said) or not all(re.fullmatch(r"`[\w.]+`|[\d.]+|off|none", d) for d in said):
            continue
        for name, default in zip(names, (d.strip("`") for d in said)):
            value = by_name[name].default
            value = value[0] if isinstance(value, tuple) and len(value) == 1 else value
            if default in ("off", "none"):
                ok = not isinstance(value, (int, float, str, tuple)) or value is False
            else:
                ok = str(value) == default or (isinstance(value, float) and value == float(default))
            checked += 1
            if not ok:
                wrong.append(f"{name}: README {default!r}, the option {value!r}")
    assert checked >= 15, checked  # the table still has rows of this shape
    assert not wrong, wrong


def test_readme_output_layout_and_csv_columns_are_what_a_run_writes(tmp_path, tiny_ckpt, labeled_dir):
    from helpers import CLASSES, quiet, run_opts
    from xaibatch.pipeline import run

    out = tmp_path / "out"
    run(run_opts(labeled_dir, out, tiny_ckpt, ["gradcam", "cam:gradcam++"]), log=quiet)
    section = REPO.joinpath("README.md").read_text(encoding="utf-8").split("## Output layout")[1]
    layout = section.split("```")[1].splitlines()[2:]  # after the fence's language line and "OUT/"
    stem = "FAKE/" + sorted(p.stem for p in (labeled_dir / "FAKE").glob("*.png"))[0]
    named = [name for line in layout for name in re.split(r",\s*", line.split("  ")[0].strip())]
    pages = re.search(r"summary \(open this\); (.*): its pages", section)[1].split(", ")
    missing = []
    for name in [*named, *pages]:
        if name.startswith(("thumbs/", "flagged/")):  # only for pictures over 128 px; made by serve
            continue
        for folder in ("gradcam", "cam-gradcampp"):  # `<folder>`: the method's name made portable
            path = name.replace("<folder>", folder).replace("<stem>", stem)
            if not (out / path).exists():
                missing.append(path)
    assert not missing, missing
    said = re.search(r"predictions\.csv\s+(?:one row an image: )?(path,.*?)(?:\.\.\.)? \(", section, flags=re.S)[1]
    columns = []
    for column in re.split(r",\s*", said):
        if column == "p_<class>...":
            columns += [f"p_{c}" for c in CLASSES]
        elif column == "npy_<method>":
            columns += ["npy_cam:gradcam++", "npy_gradcam"]  # in the methods' order by name
        else:
            columns.append(column)
    with (out / "predictions.csv").open(encoding="utf-8") as f:
        assert f.readline().strip().split(",") == columns


def test_development_md_names_every_test_file_and_every_test_the_docs_name_exists():
    development = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in sorted((REPO / "tests").glob("test_*.py")) if p.name not in development]
    assert not unlisted, f"docs/development.md's table of test files lacks {unlisted}"
    named = set()
    for md in [*DOCS, REPO / "ARCHITECTURE.md"]:
        if md.name == "benchmarks.md":  # measurements of their day, with the commands of their day
            continue
        named |= set(re.findall(r"(test_\w+\.py)(?:::(\w+))?", md.read_text(encoding="utf-8")))
    gone = []
    for file, test in sorted(named):
        path = REPO / "tests" / file
        if not path.exists() or (test and not re.search(rf"def {test}\b", path.read_text(encoding="utf-8"))):
            gone.append(f"{file}::{test}" if test else file)
    assert not gone, gone
