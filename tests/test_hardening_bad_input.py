"""Bad input to every public function of the families (attribution, features, synthesis,
dissection, metrics, render) is refused with a ValueError or TypeError that names the
argument, in the project's one template: "The 'x' parameter of f must be ... Got ... instead."

``CASES`` holds at least one case per public callable; ``test_every_public_callable_has_a_case``
fails when a new public function arrives without one.
"""
import functools
import inspect

import numpy as np
import pytest

import convscope
from convscope import attribution as A
from convscope import dissection as D
from convscope import features as F
from convscope import metrics as M
from convscope import render as R
from convscope import synthesis as S

pytest.importorskip("torch")
pytestmark = pytest.mark.backend("torch")


@functools.lru_cache(None)
def model():
    return convscope.load(convscope.data.demo_model("torch"))


@functools.lru_cache(None)
def data():
    return convscope.data.shapes(6, seed=2)


def x(n=2):
    return data().images[:n]


def maps(n=2):
    return np.random.default_rng(0).random((n, 64, 64), dtype=np.float32)


def dissection():
    return D.dissect(model(), "relu4", convscope.data.shapes(4, seed=1), progress=False, skip_empty=True)


def template(param, owner):
    return rf"The '{param}' parameter of {owner} must "


V, T = ValueError, TypeError

#: (public name, call, exception, the owner whose parameter the message names or None for the
#: function itself, the parameter). A callable may appear more than once.
CASES = [
    # ------------------------------------------------------------------ attribution
    ("saliency", lambda: A.saliency(model(), x(), variant="sideways"), V, None, "variant"),
    ("saliency", lambda: A.saliency(model(), x()[0]), V, None, "x"),
    ("smoothgrad", lambda: A.smoothgrad(model(), x(), samples=0), V, None, "samples"),
    ("smoothgrad", lambda: A.smoothgrad(model(), x(), noise=-1.0), V, None, "noise"),
    ("integrated_gradients", lambda: A.integrated_gradients(model(), x(), steps=0), V, None, "steps"),
    ("integrated_gradients", lambda: A.integrated_gradients(model(), x(), method="simpson"), V, None, "method"),
    ("integrated_gradients", lambda: A.integrated_gradients(model(), x(), baseline=np.zeros((5, 5))), V, None,
     "baseline"),
    ("input_x_gradient", lambda: A.input_x_gradient(model(), x(), target="cat"), T, None, "target"),
    ("deconvnet", lambda: A.deconvnet(model(), x(), neuron=(1, 2)), V, None, "neuron"),
    ("guided_backprop", lambda: A.guided_backprop(model(), x(), layer=3), T, None, "layer"),
    ("guided_backprop", lambda: A.guided_backprop(model(), x(), 99, layer="relu4"), V, None, "target"),
    ("occlusion", lambda: A.occlusion(model(), x(), window=0), V, None, "window"),
    ("occlusion", lambda: A.occlusion(model(), x(), window=100), V, None, "window"),
    ("occlusion", lambda: A.occlusion(model(), x(), fill="purple"), V, None, "fill"),
    ("occlusion", lambda: A.occlusion(model(), x(), perturbations_per_eval=0), V, None, "perturbations_per_eval"),
    ("cam", lambda: A.cam(model(), x(), layer="relu9"), V, None, "layer"),
    ("grad_cam", lambda: A.grad_cam(model(), x(), layer="fc"), V, None, "layer"),
    ("grad_cam_pp", lambda: A.grad_cam_pp(model(), x(), 7), V, None, "target"),
    ("score_cam", lambda: A.score_cam(model(), x(), output="logit"), V, None, "output"),
    ("score_cam", lambda: A.score_cam(model(), x(), batch_size=0), V, None, "batch_size"),
    ("layer_cam", lambda: A.layer_cam(model(), np.ones((2, 3, 8)), layer="relu4"), V, None, "x"),
    ("eigen_cam", lambda: A.eigen_cam(model(), (x() * 255).astype(np.uint8)), T, None, "x"),
    ("guided_grad_cam", lambda: A.guided_grad_cam(model(), x(), [0]), V, None, "target"),
    ("AttributionMaps", lambda: A.saliency(model(), x()).styled(alpha=2.0), V, "AttributionMaps.styled", "alpha"),
    ("AttributionMaps", lambda: A.saliency(model(), x()).normalized("loud"), V, "AttributionMaps.normalized", "tone"),
    ("AttributionMaps", lambda: A.saliency(model(), x()).styled(cmap="rainbow"), V, "AttributionMaps.styled", "cmap"),
    ("AttributionMaps", lambda: A.saliency(model(), x()).styled(percentile=101), V, "AttributionMaps.styled",
     "percentile"),
    # ------------------------------------------------------------------ features
    ("filters", lambda: F.filters(model(), "relu1"), V, None, "layer"),
    ("filters", lambda: F.filters(model(), "conv1", scale="loud"), V, None, "scale"),
    ("activation_maps", lambda: F.activation_maps(model(), x(), "relu2", channels=[99]), V, None, "channels"),
    ("activation_maps", lambda: F.activation_maps(model(), x(), "relu2", tile=0), V, None, "tile"),
    ("receptive_field", lambda: F.receptive_field(model(), "relu4", 99, 0), V, None, "y"),
    ("receptive_field", lambda: F.receptive_field(model(), "fc", 0, 0), V, None, "layer"),
    ("top_patches", lambda: F.top_patches(model(), data(), "relu3", k=0, progress=False), V, None, "k"),
    ("top_patches", lambda: F.top_patches(model(), data(), "relu9", k=2, progress=False), V, None, "layer"),
    ("layer_features", lambda: F.layer_features(model(), data(), "relu4", pool="median", progress=False), V, None,
     "pool"),
    ("layer_features", lambda: F.layer_features(model(), 42, "relu4", progress=False), T, "layer_features", "data"),
    ("nearest_neighbors", lambda: F.nearest_neighbors(model(), data(), [0], "relu4", metric="manhattan",
                                                      progress=False), V, None, "metric"),
    ("nearest_neighbors", lambda: F.nearest_neighbors(model(), data(), [0], "relu4", k=100, progress=False), V, None,
     "k"),
    ("embed", lambda: F.embed(np.ones((4, 3)), method="mds"), V, None, "method"),
    ("embed", lambda: F.embed(np.ones(4)), V, None, "features"),
    ("TSNE", lambda: F.TSNE(perplexity=-1).fit(np.random.rand(10, 3)), V, None, "perplexity"),
    ("pca", lambda: F.pca(np.random.rand(5, 3), n_components=0), V, None, "n_components"),
    ("grid_assignment", lambda: F.grid_assignment(np.random.rand(10, 2), 2, 2), V, None, "points"),
    ("grid_assignment", lambda: F.grid_assignment(np.random.rand(3, 2), 0, 2), V, None, "rows"),
    # ------------------------------------------------------------------ synthesis
    ("visualize", lambda: S.visualize(model(), S.class_logit(0), steps=0), V, None, "steps"),
    ("visualize", lambda: S.visualize(model(), "cat"), T, None, "objective"),
    ("visualize", lambda: S.visualize(model(), S.class_logit(0), size=4), V, None, "size"),
    ("evaluate", lambda: S.evaluate(model(), "relu2", x()), T, None, "objective"),
    ("evaluate", lambda: S.evaluate(model(), S.channel("relu2", 0), x()[0]), V, None, "images"),
    ("neuron", lambda: S.neuron("relu2", -1), V, None, "channel"),
    ("channel", lambda: S.channel(3, 0), T, None, "layer"),
    ("layer_l2", lambda: S.layer_l2(None), T, None, "layer"),
    ("class_logit", lambda: S.class_logit(-1), V, None, "cls"),
    ("class_probability", lambda: S.class_probability("a"), T, None, "cls"),
    ("direction", lambda: S.direction("relu4", [0.0, 0.0]), V, None, "vector"),
    ("weighted", lambda: S.weighted([S.class_logit(0), S.class_logit(1)], [1.0]), V, None, "weights"),
    ("as_objective", lambda: S.as_objective(3), T, None, "value"),
    ("Objective", lambda: S.class_logit(0) * "two", T, "Objective.__mul__", "weight"),
    ("Sum", lambda: S.Sum([(1.0, "cat")]), T, None, "terms"),
    ("Objective", lambda: S.class_logit(0) + 1.5, T, "Objective.__add__", "other"),
    ("diversity", lambda: S.diversity(5), T, None, "layer"),
    ("gram", lambda: S.gram(np.ones(3)), V, None, "a"),
    ("gram_similarity", lambda: S.gram_similarity(np.ones(3)), V, None, "a"),
    ("ImageParam", lambda: S.ImageParam((1, 3, 8, 8), spatial="dct"), V, "visualize", "param"),
    ("ImageParam", lambda: S.ImageParam((3, 8, 8)), V, None, "shape"),
    ("Transforms", lambda: S.Transforms(scales=()), V, "visualize", "scales"),
    ("Adam", lambda: S.Adam(lr=-1.0), V, None, "lr"),
    ("Adam", lambda: S.Adam(betas=(1.5, 0.9)), V, None, "betas"),
    ("SGD", lambda: S.SGD(lr=0), V, None, "lr"),
    ("SGD", lambda: S.SGD(momentum=1.5), V, None, "momentum"),
    ("FrameRecorder", lambda: S.FrameRecorder(every=0), V, None, "every"),
    ("save_gif", lambda: S.save_gif([], "never.gif"), V, None, "pictures"),
    ("save_gif", lambda: S.save_gif([np.zeros((4, 4, 3))], "never.gif", scale=0), V, None, "scale"),
    ("deepdream", lambda: S.deepdream(model(), x(1), "relu9"), V, None, "layer"),
    ("deepdream", lambda: S.deepdream(model(), x(1), "relu3", octaves=0), V, None, "octaves"),
    ("invert", lambda: S.invert(model(), x(2), ["relu2"]), V, None, "x"),
    ("invert", lambda: S.invert(model(), x(1), []), V, None, "layers"),
    ("psnr", lambda: S.psnr(np.zeros((2, 2)), np.zeros((3, 3))), V, None, "b"),
    ("psnr", lambda: S.psnr(np.zeros(2), np.ones(2), value_range=(1, 0)), V, None, "value_range"),
    ("texture", lambda: S.texture(model(), x(1), steps=0), V, None, "steps"),
    ("style_transfer", lambda: S.style_transfer(model(), x(1), x(1), start="blank"), V, None, "start"),
    ("style_loss", lambda: S.style_loss(model(), x(), x(1), []), V, None, "layers"),
    ("efros_leung", lambda: S.efros_leung(np.random.rand(3, 16, 16), window=4), V, None, "window"),
    ("efros_leung", lambda: S.efros_leung(np.random.rand(16, 16)), V, None, "exemplar"),
    ("fool", lambda: S.fool(model(), x(), method="cw"), V, None, "method"),
    ("fool", lambda: S.fool(model(), x(), epsilon=0), V, None, "epsilon"),
    ("fool", lambda: S.fool(model(), x(), target=[0, 1, 2]), V, None, "target"),
    # ------------------------------------------------------------------ dissection
    ("dissect", lambda: D.dissect(model(), "relu3", data(), quantile=1.5, progress=False), V, None, "quantile"),
    ("dissect", lambda: D.dissect(model(), "relu9", data(), progress=False), V, None, "layer"),
    ("dissect", lambda: D.dissect(model(), "relu3", 42, progress=False), T, None, "concepts"),
    ("compare", lambda: D.compare({}), V, None, "dissections"),
    ("compare", lambda: D.compare({"a": 3}), T, None, "dissections"),
    ("label_changes", lambda: D.label_changes(dissection(), "later"), T, None, "after"),
    ("Broden", lambda: D.Broden("no_such_folder", size=0), V, None, "size"),
    ("ConceptArrays", lambda: D.ConceptArrays(np.zeros((2, 3, 8, 8)), np.zeros((3, 1, 8, 8)), ["a"]), V, None,
     "masks"),
    ("concept_source", lambda: D.concept_source(42), T, "dissect", "concepts"),
    ("segment", lambda: D.segment(maps(), method="watershed"), V, None, "method"),
    ("segment", lambda: D.segment(maps(), fraction=-1), V, None, "fraction"),
    ("segmentation_iou", lambda: D.segmentation_iou(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool)), V, None,
     "truth"),
    ("segmentation_iou", lambda: D.segmentation_iou(np.zeros(4, bool), np.zeros(4, bool)), V, None, "pred"),
    ("centre_box", lambda: D.centre_box((2, 8, 8), fraction=1.5), V, None, "fraction"),
    ("centre_box", lambda: D.centre_box((8, 8)), V, None, "shape"),
    ("Dissection", lambda: dissection().top_images(99), V, "Dissection.top_images", "unit"),
    # ------------------------------------------------------------------ metrics
    ("pointing_game", lambda: M.pointing_game(maps(), np.zeros((2, 64, 64), np.int32)), V, None, "masks"),
    ("pointing_game", lambda: M.pointing_game(maps(), np.zeros((2, 64, 64), bool), tolerance=-1), V, None,
     "tolerance"),
    ("pointing_game", lambda: M.pointing_game(maps(), np.zeros((2, 64, 64), bool), per_sample="yes"), T, None,
     "per_sample"),
    ("deletion", lambda: M.deletion(model(), x(), maps(3)), V, None, "maps"),
    ("deletion", lambda: M.deletion(model(), x(), maps(), steps=0), V, None, "steps"),
    ("insertion", lambda: M.insertion(model(), x(), maps(), output="logit"), V, None, "output"),
    ("insertion", lambda: M.insertion(model(), x(), maps(), fill="purple"), V, None, "fill"),
    ("PerturbationCurve", lambda: M.deletion(model(), x(), np.ones((2, 64))), V, "deletion", "maps"),
    # ------------------------------------------------------------------ rule-based, sampling, more CAMs
    ("lrp", lambda: A.lrp(model(), x(), composite="EpsilonMinus"), V, None, "composite"),
    ("lrp", lambda: A.lrp(model(), x(), rules={"conv1": "epsilonn"}), V, None, "rules"),
    ("deeplift", lambda: A.deeplift(model(), x(), baseline=np.zeros((5, 5))), V, None, "baseline"),
    ("deeplift_shap", lambda: A.deeplift_shap(model(), x(), baselines=np.zeros((2, 3, 8, 8))), V, None, "baselines"),
    ("gradient_shap", lambda: A.gradient_shap(model(), x(), baselines=x(), samples=0), V, None, "samples"),
    ("noise_tunnel", lambda: A.noise_tunnel(model(), x(), kind="meangrad"), V, None, "kind"),
    ("noise_tunnel", lambda: A.noise_tunnel(model(), x(), samples=0), V, None, "samples"),
    ("rise", lambda: A.rise(model(), x(), masks=0), V, None, "masks"),
    ("rise", lambda: A.rise(model(), x(), p=1.5), V, None, "p"),
    ("rise_masks", lambda: A.rise_masks(0, (8, 8)), V, None, "count"),
    ("feature_ablation", lambda: A.feature_ablation(model(), x(), features=np.zeros((5, 5), int)), V, None,
     "features"),
    ("feature_ablation", lambda: A.feature_ablation(model(), x(), features=64 * 64 + 1), V, None, "features"),
    ("shapley_sampling", lambda: A.shapley_sampling(model(), x(), features=np.zeros((64, 64), int), samples=0), V,
     None, "samples"),
    ("kernel_shap", lambda: A.kernel_shap(model(), x(), features=np.zeros((64, 64), int), baseline=np.ones(5)), V,
     None, "baseline"),
    ("lime", lambda: A.lime(model(), x(), features=np.zeros((64, 64), int), kernel_width=0), V, None, "kernel_width"),
    ("hires_cam", lambda: A.hires_cam(model(), x(), layer="relu9"), V, None, "layer"),
    ("xgrad_cam", lambda: A.xgrad_cam(model(), x(), 7), V, None, "target"),
    ("eigen_grad_cam", lambda: A.eigen_grad_cam(model(), x(), aug_smooth="yes"), T, None, "aug_smooth"),
    ("ablation_cam", lambda: A.ablation_cam(model(), x(), batch_size=0), V, None, "batch_size"),
    ("full_grad", lambda: A.full_grad(model(), x()[0]), V, None, "x"),
    ("multi_layer_cam", lambda: A.multi_layer_cam(model(), x(), reduce="median"), V, None, "reduce"),
    ("make_cam", lambda: A.make_cam("mine", lambda p: p.grads.mean((2, 3)), mode="sideways"), V, None, "mode"),
    # ------------------------------------------------------------------ concept vectors
    ("learn_cav", lambda: F.learn_cav(model(), "relu3", x(2), x(2)), V, None, "concept_images"),
    ("tcav", lambda: F.tcav(model(), x(), concept="tartan"), V, None, "concept"),
    ("concept_examples", lambda: F.concept_examples("tartan"), V, None, "concept"),
    ("random_examples", lambda: F.random_examples(0), V, None, "n"),
    # ------------------------------------------------------------------ metrics
    ("evaluate_metric", lambda: M.evaluate_metric("deletin", maps=maps()), V, None, "name"),
    ("get_metric", lambda: M.get_metric("pointing_gam"), V, "compare", "metrics"),
    ("compare", lambda: M.compare(model(), ["grad_cam"], ["pointing_gam"], x()), V, None, "metrics"),
    ("road", lambda: M.road(model(), x(), maps(), order="middle"), V, None, "order"),
    ("faithfulness_correlation", lambda: M.faithfulness_correlation(model(), x(), maps(), samples=1), V, None,
     "samples"),
    ("irof", lambda: M.irof(model(), x(), maps(), segments=np.zeros((5, 5), int)), V, None, "segments"),
    ("infidelity", lambda: M.infidelity(model(), x(), maps(), perturbation="wobble"), V, None, "perturbation"),
    ("completeness", lambda: M.completeness(model(), x(), maps(3)), V, None, "maps"),
    ("non_sensitivity", lambda: M.non_sensitivity(model(), x(), maps(), features_in_step=0), V, None,
     "features_in_step"),
    ("input_invariance", lambda: M.input_invariance(model(), x(), "salience"), V, None, "method"),
    ("max_sensitivity", lambda: M.max_sensitivity(model(), x(), "saliency", radius=-1.0), V, None, "radius"),
    ("avg_sensitivity", lambda: M.avg_sensitivity(model(), x(), "saliency", samples=0), V, None, "samples"),
    ("local_lipschitz_estimate", lambda: M.local_lipschitz_estimate(model(), x(), "saliency", radius=-1.0), V, None,
     "radius"),
    ("model_randomisation", lambda: M.model_randomisation(model(), x(), "saliency", order="sideways"), V, None,
     "order"),
    ("random_logit", lambda: M.random_logit(model(), x(), "saliency", similarity="cosine"), V, None, "similarity"),
    ("relevance_mass_accuracy", lambda: M.relevance_mass_accuracy(maps(), np.ones((2, 5, 7), bool)), V, None,
     "masks"),
    ("relevance_rank_accuracy", lambda: M.relevance_rank_accuracy(maps(), np.ones((3, 64, 64), bool)), V, None,
     "masks"),
    ("top_k_intersection", lambda: M.top_k_intersection(maps(), np.ones((2, 64, 64), bool), k=0), V, None, "k"),
    ("mask_auc", lambda: M.mask_auc(maps(), np.full((2, 64, 64), 255, np.uint8)), V, None, "masks"),
    ("energy_pointing_game", lambda: M.energy_pointing_game(np.ones((2, 64)), np.ones((2, 64, 64), bool)), V, None,
     "maps"),
    ("sparseness", lambda: M.sparseness(np.full((2, 4, 4), np.nan)), V, None, "maps"),
    ("complexity", lambda: M.complexity(np.ones((4, 4))), V, None, "maps"),
    ("effective_complexity", lambda: M.effective_complexity(maps(), eps=-1.0), V, None, "eps"),
    ("normal_like", lambda: M.normal_like("conv1", {"weight": "heavy"}, np.random.default_rng(0)), T, None,
     "weights"),
    ("register_metric", lambda: M.register_metric("mine", "beauty", higher_is_better=True, needs=("maps",)), V,
     None, "family"),
    # ------------------------------------------------------------------ render
    ("bar_chart", lambda: R.bar_chart(["a", "b"], {"s": [1.0]}), V, None, "series"),
    ("normalize", lambda: R.normalize(maps(), "loud"), V, None, "mode"),
    ("normalize", lambda: R.normalize(maps(), "percentile", percentile=0), V, None, "percentile"),
    ("colormap", lambda: R.colormap("rainbow"), V, None, "name"),
    ("colormap", lambda: R.colormap("jet", n=1), V, None, "n"),
    ("apply_colormap", lambda: R.apply_colormap(maps(), "rainbow"), V, None, "name"),
    ("to_rgb", lambda: R.to_rgb(np.ones((2, 2, 2, 2))), V, None, "image"),
    ("overlay", lambda: R.overlay(x()[0], maps(1)[0], alpha=2.0), V, None, "alpha"),
    ("overlay", lambda: R.overlay(x()[0], maps(1)), V, None, "heat"),
    ("heatmap", lambda: R.heatmap(maps(1)[0], "rainbow"), V, None, "cmap"),
    ("overlay", lambda: R.overlay(x()[0], maps(1)[0], cmap="rainbow"), V, None, "cmap"),
    ("grid", lambda: R.grid([]), V, None, "tiles"),
    ("grid", lambda: R.grid([np.zeros((4, 4, 3))], ncols=0), V, None, "ncols"),
    ("grid", lambda: R.grid([np.zeros((4, 4, 3))], pad=-1), V, None, "pad"),
    ("resize", lambda: R.resize(maps(), (0, 4)), V, None, "size"),
    ("resize", lambda: R.resize(maps(), (4, 4), order=3), V, None, "order"),
    ("resize", lambda: R.resize(np.ones(5), (4, 4)), V, None, "array"),
    ("save_png", lambda: R.save_png(np.zeros((4, 4, 3)), "never.png", scale=0), V, None, "scale"),
    ("png_bytes", lambda: R.png_bytes(np.zeros((4, 4, 3)), scale=0), V, None, "scale"),
    ("Picture", lambda: R.Picture(np.ones(5)), V, "to_rgb", "image"),
    ("Renderable", lambda: R.Picture(np.zeros((4, 4, 3))).save("never.png", scale=-2), V, "save_png", "scale"),
    ("Report", lambda: R.Report("r").picture(np.zeros((4, 4, 3)), scale=0), V, "png_bytes", "scale"),
]

#: Public names that are constants or plain result records (built by the functions above,
#: not by users), so have no arguments of their own to check.
NOT_CALLED_BY_USERS = {"SCALES", "TONE_MODES", "COLORMAPS", "Filters", "ActivationMaps", "ReceptiveField",
                       "TopPatches", "Features", "Neighbors", "Embedding", "Visualization", "Dream", "Inversion",
                       "Texture", "StyleTransfer", "Fooling", "CAV", "TCAVResult", "MetricScores",
                       "RandomisationResult", "Comparison",
                       "registered_cams"}  # no arguments: the names of the CAMs made with make_cam


def _id(case):
    return case[0]


@pytest.mark.parametrize("name, call, error, owner, param", CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES])
def test_bad_input_is_refused_naming_the_argument(name, call, error, owner, param, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a call that wrongly succeeds must not write into the repository
    with pytest.raises(error, match=template(param, owner or name)) as info:
        call()
    assert " Got " in str(info.value) and str(info.value).rstrip().endswith(("instead.", "instead")) or \
        "closest:" in str(info.value) or "known:" in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_every_public_callable_has_a_case():
    covered = {c[0] for c in CASES}
    missing = []
    for family in (A, F, S, D, M, R):
        for name in family.__all__:
            obj = getattr(family, name)
            if name in NOT_CALLED_BY_USERS or not callable(obj):
                continue
            if name not in covered:
                missing.append(f"{family.__name__}.{name}")
    assert not missing, f"public callables without a bad-input case: {missing}"


def test_every_case_names_a_real_parameter():
    """A message must name an argument the user can find in the signature."""
    families = {}  # a name may be public in two families (dissection.compare, metrics.compare)
    for fam in (A, F, S, D, M, R):
        for name in fam.__all__:
            families.setdefault(name, []).append(getattr(fam, name))
    for name, _, _, owner, param in CASES:
        if owner is not None:
            continue  # the message names a method or a callee (checked by its own case)
        assert any(param in inspect.signature(f).parameters for f in families[name]), \
            f"{name} has no parameter {param!r}"
