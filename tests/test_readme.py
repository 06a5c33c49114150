"""The README's promises: its example runs, its set-up commands are the ones CI uses."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def readme():
    if not README.exists():
        pytest.skip("not run from a checkout")
    return README.read_text()


def test_the_example_runs(readme, monkeypatch, capsys):
    monkeypatch.setenv("GPUBP_BACKEND", "numpy")
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README example", "exec"), {})
    assert capsys.readouterr().out.startswith("numpy ")


def test_two_setup_commands_and_ci_runs_the_test_one(readme):
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert commands == ['pip install . && gpubp bench --quick', 'pip install ".[test]" && pytest']
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_every_kernel_file_is_in_the_table(readme):
    for cu in (ROOT / "kernels").glob("*.cu"):
        assert f"`kernels/{cu.name}`" in readme
