"""The shipped completion scripts are generated from the app and must not go stale."""

import shutil
import subprocess
from pathlib import Path

import pytest

from sitscli.cli.completions import scripts

COMPLETIONS = Path(__file__).resolve().parents[1] / "completions"


@pytest.mark.parametrize("name", ["sits.bash", "_sits", "sits.fish"])
def test_completion_scripts_are_up_to_date(name):
    shipped = (COMPLETIONS / name).read_text()
    assert shipped == scripts()[name], f"completions/{name} is stale: run `make completions`"


def _bash_complete(words: list[str]) -> list[str]:
    """Run the bash completion function as bash would for the command line `words`."""
    line = " ".join(words)
    script = (
        f"source {COMPLETIONS / 'sits.bash'}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        "_sits; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_bash_completes_top_level_options():
    assert "--version" in _bash_complete(["sits", "--ver"])


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_script_parses():
    subprocess.run(["fish", "--no-execute", str(COMPLETIONS / "sits.fish")], check=True)
