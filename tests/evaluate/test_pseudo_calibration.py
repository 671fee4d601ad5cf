"""PseudoCal's temperature from unlabelled cases: the mixtures it makes, the labels it gives them, and the fit,
checked against a hand reconstruction of every mixture the model was shown."""

import itertools

import numpy as np
import torch
from PIL import Image
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from medtl.config import Config
from medtl.models.checkpoint import ModelBundle
from medtl.models.predictor import Predictor
from medtl.pseudo_calibration import LAMBDA, REPEATS, InBatchMixup, pseudo_temperature


class Brightness(torch.nn.Module):
    """Logit of 'lesion' linear in a film's mean intensity, so a mixture's logit is the mixture of its films'; keeps
    every mean it is shown, so a test can tell which films each mixture was made of."""

    def __init__(self, gain: float, centre: float) -> None:
        super().__init__()
        self.gain, self.centre, self.seen = gain, centre, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        self.seen.append(m.detach().double().numpy().copy())
        z = self.gain * (m - self.centre)
        return torch.stack([-z / 2, z / 2], 1)


def flat_films(folder, n: int = 12):
    """Films of one grey each (but a black corner), 20 apart: a 65:35 mixture of two of them names the pair, and
    which came first."""
    folder.mkdir()
    items = []
    for i in range(n):
        film = np.full((8, 8), 10 + 20 * i, np.uint8)
        film[0, 0] = 0  # not blank, which a case must not be
        Image.fromarray(film).save(folder / f"{i}.png")
        items.append({"case_id": str(i), "image": str(folder / f"{i}.png")})  # unlabelled: PseudoCal reads no label
    return items


def predictor_of(model: torch.nn.Module, batch_size: int = 6) -> Predictor:
    cfg = Config.model_validate({"data": {"image_size": [8, 8], "modality": "none", "classes": ["normal", "lesion"]},
                                 "tracking": {"enabled": False}})
    return Predictor.of(ModelBundle(model, cfg, ["normal", "lesion"]), torch.device("cpu"), batch_size=batch_size)


def test_the_temperature_fits_mixtures_of_differently_called_films_labelled_with_the_first(tmp_path):
    items = flat_films(tmp_path / "films")
    model = Brightness(gain=0.2, centre=115.0)  # films 0-5 called normal, 6-11 lesion
    got = pseudo_temperature(predictor_of(model), items, seed=4)
    plain, mixed = model.seen[0:2], np.concatenate(model.seen[2:])  # 12 films in batches of 6, then the rounds
    means = np.concatenate(plain)
    assert len(mixed) == REPEATS * len(items)
    called = (means > 115.0).astype(int)
    pair_of = {LAMBDA * means[a] + (1 - LAMBDA) * means[b]: (a, b) for a, b in itertools.product(range(12), repeat=2)}
    pairs = [pair_of[min(pair_of, key=lambda v: abs(v - m))] for m in mixed]
    assert all(abs(LAMBDA * means[a] + (1 - LAMBDA) * means[b] - m) < 1e-3 for (a, b), m in zip(pairs, mixed))
    cross = [(a, b) for a, b in pairs if called[a] != called[b]]
    assert got is not None and got.pairs == len(cross) > 0
    z = np.array([0.2 * (LAMBDA * means[a] + (1 - LAMBDA) * means[b] - 115.0) for a, b in cross])
    logits, y = np.stack([-z / 2, z / 2], 1), np.array([called[a] for a, _ in cross])

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    expected = float(np.exp(minimize_scalar(nll, bounds=np.log([0.05, 20.0]), method="bounded").x))
    assert abs(got.temperature - expected) < 1e-3 * expected
    assert pseudo_temperature(predictor_of(Brightness(0.2, 115.0)), items, seed=4) == got  # the same draws for a seed


def test_a_model_that_calls_every_film_alike_gets_no_temperature(tmp_path):
    items = flat_films(tmp_path / "films")
    assert pseudo_temperature(predictor_of(Brightness(0.2, 1000.0)), items) is None


def test_in_batch_mixup_mixes_within_the_batch_and_numbers_partners_across_batches():
    mix = InBatchMixup(0.65, seed=1)
    first, second = torch.arange(4.0).view(4, 1), torch.arange(4.0, 7.0).view(3, 1)
    out = [mix(first), mix(second)]
    partners = np.concatenate(mix.partners)
    both = torch.cat([first, second])
    assert sorted(partners[:4]) == [0, 1, 2, 3] and sorted(partners[4:]) == [4, 5, 6]
    assert torch.allclose(torch.cat(out), 0.65 * both + 0.35 * both[torch.as_tensor(partners)])


def test_an_evaluation_with_site_temperature_recalibrates_without_changing_a_call(tmp_path):
    import pandas as pd

    from medtl.config import EvaluateConfig
    from medtl.evaluate.run import evaluate_table

    items = flat_films(tmp_path / "films")
    labels = ["lesion" if i >= 6 else "normal" for i in range(12)]
    labels[5], labels[6] = "lesion", "normal"  # two the model gets wrong, so no temperature is at a bound
    table = pd.DataFrame({"case_id": [it["case_id"] for it in items], "image_path": [it["image"] for it in items],
                          "label": labels, "patient_id": [f"p{i}" for i in range(12)]})
    cfg = Config.model_validate({"data": {"image_size": [8, 8], "modality": "none", "classes": ["normal", "lesion"]},
                                 "tracking": {"enabled": False}})
    model = ModelBundle(Brightness(0.2, 115.0), cfg, ["normal", "lesion"], temperature=0.5, threshold=0.3)
    plain = evaluate_table(model, table, tmp_path / "plain", EvaluateConfig(bootstrap=0, figures=False))
    site = evaluate_table(model, table, tmp_path / "site", EvaluateConfig(bootstrap=0, figures=False, site_temperature=True))
    fitted = pseudo_temperature(predictor_of(Brightness(0.2, 115.0), batch_size=32), items, seed=0)  # as evaluation batches
    m = site.metrics
    assert m["temperature"] == fitted.temperature != 0.5 and m["model_temperature"] == 0.5
    assert m["ece_model_temperature"] == plain.metrics["ece_calibrated"]
    means = np.array([(63 * (10 + 20 * i)) / 64 for i in range(12)])
    z = 0.2 * (means - 115.0)
    assert np.allclose(site.predictions["prob_lesion"], 1 / (1 + np.exp(-z / fitted.temperature)))
    assert list(site.predictions["predicted"]) == list(plain.predictions["predicted"])  # every case called as before
    assert "PseudoCal" in (tmp_path / "site" / "report.md").read_text()
