"""Training on other acquisitions of the same films: does it carry to the separately collected test films?

Protocol, fixed before any of its test figures was seen (thirtieth session). Every study here found the demo's
fine-tune near-perfect on validation (AUROC 0.996) and far less sure of the test films (0.93-0.97), calling many of
their normal films pneumonia; EM then reads their prevalence as 0.69-0.75 (true 0.625), which keeps ECE after the
prior shift above #16's 0.03. The test films were collected apart from the training ones, so part of that gap may be
how they were taken. Domain generalisation by stacked acquisition changes (BigAug, Zhang et al., IEEE TMI 2020:
gamma, contrast, blur, noise, field of view, each on half the images) is the standard lever for that and was not
tried here: the demo's in-memory films get only a ±10 % intensity scale and a ±0.05 shift. It is now
``data.acquisition_augment``. Arms, each the demo's config (Lite2, 48 px, 3 epochs, inverse-frequency class
weights, stem and blocks 0-2 frozen), on all 4,708 training films, ``train.seed`` 0, 1, 2:

- ``fine_tune``: the demo's fine-tune, unchanged;
- ``acquisition``: ``data.acquisition_augment=true``;
- ``LP-FT + EMA + acquisition``: the same with ``transfer.probe_first=true`` and ``train.ema_epochs=1``, the
  48 px recipe that did best on the test films before (twenty-sixth session).

The choice, made and printed before the test split is opened, by the rule of the earlier studies: the candidate with
the lower mean validation NLL after temperature replaces the demo's fine-tune only if that NLL is below
``fine_tune``'s and its mean validation AUROC is no lower, and ``medtl demo`` with it then runs within 10 minutes.
Then, whatever they show: every model's test AUROC with CI, specificity, ECE after temperature and after the prior
shift, each arm's means, and per seed each arm's paired test difference against ``fine_tune``.

    python bench/acquisition_study.py [--seeds 3] [--bootstrap 1000] [--train-limit N]
"""

from __future__ import annotations

from calibration_levers import sealed_study

ACQUISITION = "data.acquisition_augment=true"
ARMS: dict[str, tuple[str, list[str]]] = {
    "fine_tune": ("fine_tune", []),
    "acquisition": ("fine_tune", [ACQUISITION]),
    "LP-FT + EMA + acquisition": ("fine_tune", [ACQUISITION, "transfer.probe_first=true", "train.ema_epochs=1"]),
}
CANDIDATES = ("acquisition", "LP-FT + EMA + acquisition")

if __name__ == "__main__":
    sealed_study(ARMS, CANDIDATES)
