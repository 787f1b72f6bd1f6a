"""The four studies on a real refusing chat model: Qwen2.5-Coder-0.5B-Instruct with HarmBench's categorised
behaviours (``make studies-real``; 89 minutes on 2 CPU cores shared with other jobs, 2026-12-06, cache warm).

Each study runs through ``steerfold run`` on the real-weights cache and keeps its folder under
``$STEERFOLD_STUDIES_OUT`` (default ``runs/studies-real``), whose results.json files README "Studies" quotes. A
claim measured not to hold on this model stays visible as a strict expected failure (``NOT_REPRODUCED``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from test_studies import CLAIM_COUNTS, REAL_STUDIES, assert_claim_holds, claim_cases
from realweights.fetch import qwen_coder_checkpoint

pytestmark = pytest.mark.realstudies

# (study, claim index) pairs measured not to hold on Qwen2.5-Coder-0.5B-Instruct; see README.md, "Studies".
NOT_REPRODUCED: set[tuple[str, int]] = {
    # the compliant system prompt alone leaves 45.3% of the 47.2% refusal: no gate to locate (the vector does cut it)
    ("persona-gating", 1), ("persona-gating", 2),
    *(("harm-categories", i) for i in range(1, 6)),  # no category's own component removes its refusal
    ("ablation-vs-inlp", 0),  # INLP flipping leaves 54.7% where difference-in-means ablation leaves 13.2%
    # no α of the conditional map, nor the own-component ablation, moves the target category alone
    *(("targeted-control", i) for i in range(3)),
}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    """Run every real-model study once (a finished study folder is reused: delete it to measure again)."""
    out = Path(os.environ.get("STEERFOLD_STUDIES_OUT", "runs/studies-real"))
    model, runs = qwen_coder_checkpoint(), {}
    for path in REAL_STUDIES:
        folder = out / path.stem
        if not (folder / "results.json").is_file():
            result = CliRunner().invoke(cli, ["run", str(path), "--model", str(model), "--out", str(folder), "--overwrite"])
            assert result.exit_code == 0, result.output
        runs[path.stem] = {"results": json.loads((folder / "results.json").read_text()), "folder": folder}
    return runs


def test_every_real_study_writes_its_claims_from_measured_figures(results):
    assert set(results) == set(CLAIM_COUNTS)
    for name, run in results.items():
        claims = run["results"]["claims"]
        assert len(claims) == CLAIM_COUNTS[name]
        assert all(c["figures"] and all(isinstance(v, (int, float)) for v in c["figures"].values()) for c in claims)
        counts = run["results"]["prompts"]
        assert counts["harmful test"] >= 50 and counts["harmless test"] == 71, counts


def test_the_gate_profile_is_drawn_over_the_real_model_depth(results):
    study = results["persona-gating"]
    (profile,) = study["results"]["Where the gate is: the ablation one window of layer indices at a time"]
    windows = [k for k in profile if k.startswith("layer")]
    assert windows[0] == "layers 1-2" and windows[-1] == "layers 23-24" and len(windows) == 12
    assert (study["folder"] / "profile.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("study,index", claim_cases(NOT_REPRODUCED, "the real model"))
def test_claim_holds_on_the_real_model(results, study, index):
    assert_claim_holds(results, study, index)
