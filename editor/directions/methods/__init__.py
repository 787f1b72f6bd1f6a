"""Fitting methods: their registry (``registry``), options (``options``) and the math behind them.

- ``means``: difference of means over prompts and persona vectors over responses (activation-level helpers);
- ``contrast``: one candidate's refusing/complying activations, and turning an estimate into a stored vector;
- ``estimators``: mean difference, PCA of paired differences, logistic probe, ridge mean difference;
- ``inlp``: iterative nullspace projection and its two edits; ``categories``: per-category directions and report;
- ``scorers``: refusal-confidence scorers (markers, a judge model) that weight the ridge method's means.

Importing the package is light (no torch): the CLI and recipe validation list and check method names without
loading the model stack.
"""
