"""Linear probe, then fine-tune (LP-FT): does starting from a fitted head carry the model better to the test films?

Protocol, fixed before any of its test figures was seen (fourteenth session). The test films were collected apart
from the training pool, and every earlier study found the demo's fine-tuned model less sure-footed there than on
validation. Kumar et al. (2022, "Fine-tuning can distort pretrained features and underperform out-of-distribution")
trace part of that to the start of fine-tuning: a randomly initialised head sends large, arbitrary gradients into
the pretrained layers and moves them away from the features that generalise. Their remedy, LP-FT, fits the head on
the frozen features first (a linear probe) and only then fine-tunes; it raised out-of-distribution accuracy in
their benchmarks without costing in-distribution accuracy. In medtl it is ``transfer.probe_first``. Arms, each the
demo's config (Lite2, 48 px, 3 epochs, inverse-frequency class weights, stem and blocks 0-2 frozen), on all 4,708
training films, ``train.seed`` 0, 1, 2:

- ``fine_tune``: the demo's fine-tune, unchanged;
- ``lp_ft``: the same with ``transfer.probe_first=true`` (the probe: scikit-learn's logistic regression, C = 1,
  with the same class weights, on the frozen backbone's features of the training films);
- ``probe``: the linear probe alone (``transfer.strategy=feature_extraction``, ``transfer.head=logistic``),
  descriptive: it is where ``lp_ft`` starts, and it trains no network, so its seeds agree.

The choice, made and printed before the test split is opened: ``lp_ft`` replaces the demo's fine-tune only if its
mean validation NLL after temperature is below ``fine_tune``'s and its mean validation AUROC is no lower, and
``medtl demo`` with it then runs within 10 minutes. Then, whatever they show: every model's test AUROC with CI,
specificity, ECE after temperature and after the prior shift (EM's prevalence from the unlabelled test scores),
and each arm's paired test difference against ``fine_tune`` of the same seed.

    python bench/lp_ft_study.py [--seeds 3] [--bootstrap 1000] [--train-limit N]
"""

from __future__ import annotations

from calibration_levers import sealed_study

ARMS: dict[str, tuple[str, list[str]]] = {
    "fine_tune": ("fine_tune", []),
    "lp_ft": ("fine_tune", ["transfer.probe_first=true"]),
    "probe": ("feature_extraction", ["transfer.head=logistic"]),
}

if __name__ == "__main__":
    sealed_study(ARMS, ("lp_ft",))
