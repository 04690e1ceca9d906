from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_dreambooth_recipe_validates_offline_and_says_how_to_run_it(cli):
    recipe = ROOT / "recipes" / "dreambooth.yaml"
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# editkit run recipes/dreambooth.yaml")
    done = cli("recipes", "validate", recipe, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert "use: dreambooth" in done.stdout and "prior_loss_weight: 1.0" in done.stdout
