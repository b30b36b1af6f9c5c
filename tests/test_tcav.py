"""CAVs and TCAV (Kim et al. 2018): a planted stripe unit gets a high, significant score for the
class it feeds and random concepts do not; the CAV against scikit-learn's logistic regression
on the same activations; the directional derivatives against torch autograd; the t-test
against scipy; the same scores from the Keras and ONNX demo files; bad input."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import convscope
from convscope.data import demo_model, demo_path, shapes
from convscope.features import concept_vectors as cv
from convscope.features import learn_cav, tcav

X = shapes(20, seed=3).images


class PlantedStripes(nn.Module):
    """Units 0 and 1: a (6, 1) filter of horizontal-stripe frequency, both signs, rectified;
    unit 2: brightness. Class 0's score is the stripe units' mean, class 1's the brightness."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, (6, 1), bias=False)
        k = torch.zeros(3, 3, 6, 1)
        k[0, :, :3], k[0, :, 3:] = 1, -1
        k[1], k[2] = -k[0], 1
        self.conv.weight.data = k / 18
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3, 2)
        self.fc.weight.data = torch.tensor([[1., 1, 0], [0., 0, 1]])
        self.fc.bias.data.zero_()

    def forward(self, x):
        return self.fc(self.flatten(self.gap(self.pool(self.relu(self.conv(x))))))


def striped(n, seed):
    """Images of the generated dataset under horizontal stripes of period 6 and zero mean (the
    planted concept: the brightness the other class reads is left as it was, up to clipping)."""
    rows = (np.arange(64) // 3) % 2 * 0.4 - 0.2
    return np.clip(shapes(n, seed=seed).images + rows[None, None, :, None], 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    return PlantedStripes().eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_planted_stripe_unit_gets_a_high_significant_score(net, seed):
    r = tcav(net, X, [0, 1], concept=striped(30, 5 + seed), layer="pool", seed=seed)
    assert r.score[0] > 0.9 and r.significant[0] and r.p_value[0] < 0.05
    assert (r.accuracies > 0.95).all()  # the stripes are linearly separable at the stripe units


def test_random_concepts_are_not_significant(net):
    significant = [tcav(net, X, 0, concept=cv.random_examples(30, seed=500 + s), layer="pool", seed=s,
                        random_concepts=6).significant[0] for s in range(6)]
    assert sum(significant) <= 1, significant


def test_the_dataset_concept_stripes_reaches_the_stripe_class(net):
    r = tcav(net, X, 0, concept="stripes", layer="pool")  # stripes at any angle, inside the object only
    assert r.concept == "stripes" and r.score[0] >= 0.8 and r.significant[0], r
    assert "TCAVResult('stripes' at 'pool'" in repr(r)


def test_scores_are_the_fraction_of_positive_directional_derivatives_by_autograd(net):
    r = tcav(net, X, [0, 1], concept=striped(30, 5), layer="pool", random_concepts=3)
    acts = {}
    h = net.pool.register_forward_hook(lambda m, i, o: (o.retain_grad(), acts.__setitem__("pool", o))[1])
    try:
        for row, k in enumerate([0, 1]):
            out = net(torch.tensor(X))
            out[:, k].sum().backward()
            g = acts["pool"].grad.double().numpy().reshape(len(X), -1)
            for cavs, got in ((r.cavs, r.scores[row]), (r.random_cavs, r.random_scores[row])):
                ref = [(g @ c.vector.astype(np.float64) > 0).mean() for c in cavs]
                np.testing.assert_array_equal(got, ref)
    finally:
        h.remove()


def test_the_cav_is_the_normal_of_a_logistic_regression(net):
    sklearn = pytest.importorskip("sklearn.linear_model")
    concept, rand = striped(30, 5), cv.random_examples(30, seed=1)
    cav = learn_cav(net, "pool", concept, rand)
    feats = lambda x: net.pool(net.relu(net.conv(torch.tensor(x)))).detach().double().numpy().reshape(len(x), -1)
    f = np.concatenate([feats(concept), feats(rand)])
    y = np.r_[np.ones(30), np.zeros(30)]
    mu, sd = f.mean(0), f.std(0)
    ref = sklearn.LogisticRegression(C=1e3, max_iter=5000).fit((f - mu) / sd, y).coef_[0] / sd
    cosine = cav.vector @ ref / np.linalg.norm(ref)
    assert abs(np.linalg.norm(cav.vector) - 1) < 1e-5 and cosine > 0.9, cosine
    assert cav.accuracy == 1.0 and cav.layer == "pool"


def test_student_t_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for na, nb, shift in [(5, 5, 0.0), (10, 10, 1.0), (7, 12, 3.0), (3, 4, -0.5)]:
        a, b = rng.normal(size=na), rng.normal(shift, 2.0, size=nb)
        np.testing.assert_allclose(cv.student_t_test(a, b), stats.ttest_ind(a, b).pvalue, rtol=1e-9, atol=1e-14)
    assert cv.student_t_test([1.0] * 5, [1.0] * 5) == 1.0 and cv.student_t_test([1.0] * 5, [0.0] * 5) == 0.0


def test_concept_examples_show_the_concept():
    imgs = cv.concept_examples("stripes", 8, seed=2)
    pool = shapes(64, seed=2)
    shown = pool.images[pool.mask("stripes").any(axis=(1, 2))][:8]
    np.testing.assert_array_equal(imgs, shown)
    assert len(imgs) == 8 and imgs.dtype == np.float32


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_other_backends_give_torchs_scores(kind):
    other = convscope.load(demo_model("keras") if kind == "keras" else demo_path("onnx"))
    x = shapes(12, seed=9).images
    a = tcav(demo_model("torch"), x, [0, 1], concept="red", layer="relu4", random_concepts=3, n_examples=16)
    b = tcav(other, x, [0, 1], concept="red", layer="relu4", random_concepts=3, n_examples=16)
    for ca, cb in zip(a.cavs, b.cavs):
        assert ca.vector @ cb.vector > 0.999
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_allclose(a.p_value, b.p_value, atol=1e-6)


def test_bad_input_names_the_argument(net):
    few = striped(3, 0)
    with pytest.raises(ValueError, match="'concept_images' parameter of learn_cav must be at least 6"):
        learn_cav(net, "pool", few, cv.random_examples(10))
    with pytest.raises(ValueError, match="'concept' parameter of tcav must be at least 6"):
        tcav(net, X, 0, concept=few, layer="pool")
    with pytest.raises(ValueError, match="'concept' parameter of tcav must be one of"):
        tcav(net, X, 0, concept="stripy", layer="pool")
    with pytest.raises(ValueError, match=r"'target' parameter of tcav must be a class index in \[0, 1\]"):
        tcav(net, X, 2, concept="red", layer="pool")
    with pytest.raises(ValueError, match="'alpha' parameter of tcav"):
        tcav(net, X, 0, concept="red", layer="pool", alpha=1.5)
    with pytest.raises(ValueError, match="'random_concepts' parameter of tcav"):
        tcav(net, X, 0, concept="red", layer="pool", random_concepts=1)
    with pytest.raises(ValueError, match="'classifier' parameter of learn_cav"):
        learn_cav(net, "pool", striped(8, 0), cv.random_examples(8), classifier="svm")
    with pytest.raises(ValueError, match="'concept' parameter of concept_examples"):
        cv.concept_examples("nope")


@pytest.mark.slow
def test_the_docs_example_runs(capsys):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(block, "docs/concepts.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert "class 0: 0.71 (p=0.0198, significant)" in out[0] and "class 0: 0.56 (p=0.213)" in out[1], out
    assert out[2] == "3 circle detectors at relu3", out
