"""Study: difference-in-means ablation against INLP counterfactual flipping and INLP nullspace projection.

All three are fitted at the same (layer, position) from the same prompts (the difference-of-means selection
chooses it) and folded into every writer; the table gives held-out harmful and harmless refusal and the
harmless first-token KL. The research finding: flipping is competitive with ablation, nullspace projection weaker.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from steerfold.edit.edits import ablation_edit
from steerfold.directions.methods.contrast import Contrast
from steerfold.directions.methods.estimators import contrast_labels
from steerfold.edit.edits import counterfactual_edit, subspace_edit
from steerfold.directions.methods.inlp import inlp_basis
from steerfold.research.studies.inputs import StudyInputs
from steerfold.research.studies import Claim, StudyResult
from steerfold.research.studies.common import harmless_kl, last_token_states, refusal_rates


class MethodsSpec(BaseModel):
    """Recipe parameters of the methods comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["ablation-vs-inlp"]
    iterations: int = Field(default=4, gt=0, description="INLP probes (the nullspace's rank)")
    competitive_points: float = Field(default=0.1, ge=0, le=1, description="refusal gap that still counts as competitive")
    system: str | None = Field(default=None, description="system prompt of every prompt (none: the chat template's default)")


def run(model, tokenizer, spec: MethodsSpec, inputs: StudyInputs) -> StudyResult:
    from steerfold.directions.fit import fit_refusal_direction

    default = spec.system
    train = inputs.records("harmful", "train"), inputs.records("harmless", "train")
    fit = fit_refusal_direction(model, tokenizer, *train, inputs.records("harmful", "val"), inputs.records("harmless", "val"),
                                system=default)
    layer = fit.chosen.layer
    states = [last_token_states(model, tokenizer, records, default, fit.chosen.position)[:, layer] for records in train]
    basis = inlp_basis(*contrast_labels(Contrast(*states)), spec.iterations)
    if float(basis[0] @ fit.file.directions[layer]) < 0:  # neither edit depends on the sign; it only makes the cosines readable
        basis[0] = -basis[0]
    layers = list(range(model.config.num_hidden_layers + 1))
    edits = {
        "difference-in-means ablation": ablation_edit(fit.file.directions[layer], layers),
        "INLP counterfactual flipping": counterfactual_edit(basis[0], layers),
        f"INLP nullspace projection (rank {len(basis)})": subspace_edit(basis, layers),
    }
    harmful, harmless = inputs.records("harmful", "test"), inputs.records("harmless", "test")

    def rate(records, edit=None) -> float:
        return refusal_rates(model, tokenizer, records, default, edit, inputs.max_new_tokens)["overall"]

    table = [{"edit": "none", "harmful refusal": rate(harmful), "harmless refusal": rate(harmless), "first-token KL": 0.0}]
    for name, edit in edits.items():
        table.append({"edit": name, "harmful refusal": rate(harmful, edit), "harmless refusal": rate(harmless, edit),
                      "first-token KL": harmless_kl(model, tokenizer, harmless, edit, default)})
    ablation, flipping, nullspace = (row["harmful refusal"] for row in table[1:])
    kl_ablation, kl_flipping = table[1]["first-token KL"], table[2]["first-token KL"]
    claims = [
        Claim(f"INLP counterfactual flipping is competitive with difference-in-means ablation (harmful refusal within "
              f"{100 * spec.competitive_points:.0f} points)", abs(flipping - ablation) <= spec.competitive_points,
              {"ablation_refusal": ablation, "flipping_refusal": flipping}),
        Claim("INLP nullspace projection is weaker than difference-in-means ablation (more harmful refusal left)",
              nullspace > ablation, {"ablation_refusal": ablation, "nullspace_refusal": nullspace}),
        Claim("Flipping reflects harmless prompts too, so it moves them more than ablation does (higher harmless "
              "first-token KL)", kl_flipping > kl_ablation,
              {"ablation_kl": kl_ablation, "flipping_kl": kl_flipping, "flipping_harmless_refusal": table[2]["harmless refusal"]}),
    ]
    cosines = [float(torch.nn.functional.cosine_similarity(basis[i], fit.file.directions[layer], dim=0)) for i in range(len(basis))]
    return StudyResult("Difference-in-means ablation vs INLP flipping vs nullspace projection", claims, table,
                       {"layer": layer, "position": fit.chosen.position, "prompts": inputs.counts(), "inlp_cosine_with_diff_in_means": cosines})
