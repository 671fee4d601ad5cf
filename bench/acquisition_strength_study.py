"""Stronger or longer acquisition changes: do they take the demo's fine-tune further toward #16's targets?

Protocol, fixed before any of its test figures was seen (thirtieth session), after ``bench/acquisition_study.py``
(same session): there validation turned ``data.acquisition_augment`` down (mean NLL after temperature 0.080 against
0.115), while on the test films it lowered ECE after the prior shift in every seed (mean 0.102 -> 0.051) and raised
mean AUROC (0.948 -> 0.961), short of #16's 0.03 and 0.97. Augmentation of this kind usually wants wider ranges or
more epochs than a plain fit; both are asked here. Arms, each the demo's config (Lite2, 48 px, inverse-frequency
class weights, stem and blocks 0-2 frozen), on all 4,708 training films, ``train.seed`` 0, 1, 2:

- ``fine_tune``: the demo's fine-tune, unchanged (3 epochs);
- ``acquisition x2``: ``data.acquisition_augment=true``, ``data.acquisition_strength=2`` (gamma up to 2.25,
  contrast ±60 %, blur σ up to 2 px, noise up to 10 %, zoom ±20 %, shift ±10 %);
- ``acquisition, 5 epochs``: ``data.acquisition_augment=true``, ``train.epochs=5``.

The choice, made and printed before the test split is opened, by the rule of the earlier studies: the candidate with
the lower mean validation NLL after temperature replaces the demo's fine-tune only if that NLL is below
``fine_tune``'s and its mean validation AUROC is no lower, and ``medtl demo`` with it then runs within 10 minutes.
Then, whatever they show: every model's test AUROC with CI, specificity, ECE after temperature and after the prior
shift, each arm's means, and per seed each arm's paired test difference against ``fine_tune``.

    python bench/acquisition_strength_study.py [--seeds 3] [--bootstrap 1000] [--train-limit N]
"""

from __future__ import annotations

from calibration_levers import sealed_study

ACQUISITION = "data.acquisition_augment=true"
ARMS: dict[str, tuple[str, list[str]]] = {
    "fine_tune": ("fine_tune", []),
    "acquisition x2": ("fine_tune", [ACQUISITION, "data.acquisition_strength=2"]),
    "acquisition, 5 epochs": ("fine_tune", [ACQUISITION, "train.epochs=5"]),
}
CANDIDATES = ("acquisition x2", "acquisition, 5 epochs")

if __name__ == "__main__":
    sealed_study(ARMS, CANDIDATES)
