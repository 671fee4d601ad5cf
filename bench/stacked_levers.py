"""The levers that each helped on the test films, stacked: do they add up to #16's targets?

Protocol, fixed before any of its test figures was seen (twenty-sixth session). Each of LP-FT (fourteenth session),
mixup (thirteenth) and the moving average of the weights (twenty-sixth) raised test AUROC or lowered test ECE after
the prior shift in most seeds, and validation turned each down. Together they may add up, or overlap. Arms, each
the demo's config (Lite2, 48 px, 3 epochs, inverse-frequency class weights, stem and blocks 0-2 frozen), on all
4,708 training films, ``train.seed`` 0, 1, 2:

- ``fine_tune``: the demo's fine-tune, unchanged;
- ``LP-FT + EMA``: ``transfer.probe_first=true``, ``train.ema_epochs=1``;
- ``LP-FT + EMA + mixup``: the same with ``train.mixup_alpha=0.2``.

The choice, made and printed before the test split is opened, by the rule of the earlier studies: the candidate with
the lower mean validation NLL after temperature replaces the demo's fine-tune only if that NLL is below
``fine_tune``'s and its mean validation AUROC is no lower, and ``medtl demo`` with it then runs within 10 minutes.
Then, whatever they show: every model's test AUROC with CI, specificity, ECE after temperature and after the prior
shift, each arm's means, and per seed each arm's paired test difference against ``fine_tune``.

    python bench/stacked_levers.py [--seeds 3] [--bootstrap 1000] [--train-limit N]
"""

from __future__ import annotations

from calibration_levers import sealed_study

STACK = ["transfer.probe_first=true", "train.ema_epochs=1"]
ARMS: dict[str, tuple[str, list[str]]] = {
    "fine_tune": ("fine_tune", []),
    "LP-FT + EMA": ("fine_tune", STACK),
    "LP-FT + EMA + mixup": ("fine_tune", [*STACK, "train.mixup_alpha=0.2"]),
}
CANDIDATES = ("LP-FT + EMA", "LP-FT + EMA + mixup")

if __name__ == "__main__":
    sealed_study(ARMS, CANDIDATES)
