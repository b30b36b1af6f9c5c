"""Make the pictures of docs/synthesis.md:  python docs/images/synthesis_pictures.py

Everything runs on the torch demo model (64 x 64 input, four classes) in about a minute.
"""
from pathlib import Path

import numpy as np

import convscope
from convscope import synthesis as S
from convscope.data import DEMO_CLASSES, demo_model, shapes
from convscope.render import grid, save_png
from convscope._imageops import resize_images

OUT = Path(__file__).parent
SCALE = 3


def save(rgb, name):
    save_png(rgb, OUT / name, scale=SCALE)
    print("wrote", name)


def mosaic(images):
    """A 2 x 2 wallpaper of half-size dataset images: a texture exemplar."""
    small = resize_images(images[:4], (32, 32))
    top, bottom = np.concatenate([small[0], small[1]], 2), np.concatenate([small[2], small[3]], 2)
    return np.concatenate([top, bottom], 1)[None]


def main():
    backend = convscope.load(demo_model("torch"))
    data = shapes(32, seed=3)
    kw = dict(size=64, progress=False)

    classes = [S.visualize(backend, S.class_logit(c), steps=256, **kw) for c in range(4)]
    save(grid([r.to_rgb() for r in classes], ncols=4), "synthesis_classes.png")
    for c, r in zip(range(4), classes):
        print(DEMO_CLASSES[c], r.outputs.round(1))

    logit = classes[2]
    prob = S.visualize(backend, S.class_probability(2), steps=256, **kw)
    for name, r in (("logit", logit), ("probability", prob)):
        z = backend.forward(r.images)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        print(f"triangle {name}: logits {z.round(1)}, p(triangle) {p[0, 2]:.4f}")
    save(grid([logit.to_rgb(), prob.to_rgb()], ncols=2), "synthesis_probability.png")

    obj = S.channel("relu3", 5)
    pixels = dict(param="pixel", colour="rgb", squash="none", transforms="none", lr=0.02)
    naive = S.visualize(backend, obj, steps=128, **pixels, **kw)
    yosinski = S.visualize(backend, obj, steps=128, **pixels, l2=1.0, blur_every=4, blur_sigma=0.6, clip_norm=20,
                           clip_contribution=20, **kw)
    robust = S.visualize(backend, obj, steps=128, param="pixel", colour="rgb", **kw)
    lucid = S.visualize(backend, obj, steps=128, **kw)
    runs = (naive, yosinski, robust, lucid)
    print("params: objective", [round(float(S.evaluate(backend, obj, r.images)[0]), 2) for r in runs])
    save(grid([r.to_rgb() for r in runs], ncols=4), "synthesis_params.png")

    tiles = [S.visualize(backend, S.channel(layer, c), steps=128, **kw).to_rgb()
             for layer in ("bn2", "bn3", "bn4") for c in range(8)]
    save(grid(tiles, ncols=8), "synthesis_channels.png")

    plain = S.visualize(backend, obj, batch=4, steps=128, seed=1, **kw)
    diverse = S.visualize(backend, obj, batch=4, steps=128, seed=1, diversity=0.2, **kw)
    for name, r in (("plain", plain), ("diverse", diverse)):
        acts = backend.activations(r.images, ["relu3"])["relu3"]
        print(f"diversity {name}: Gram similarity {S.gram_similarity(acts):.3f}, "
              f"objective {S.evaluate(backend, obj, r.images).mean():.3f}")
    save(grid([plain.to_rgb(), diverse.to_rgb()], ncols=1), "synthesis_diversity.png")

    recorder = S.FrameRecorder(every=3)
    S.visualize(backend, S.class_logit(3), steps=96, callback=recorder, **kw)
    recorder.save_gif(OUT / "synthesis_optimisation.gif", duration=80, scale=2)
    print("wrote synthesis_optimisation.gif")

    dreams = [S.deepdream(backend, data.images[i:i + 1], layer, octaves=3, steps=8, step_size=0.015,
                          progress=False).to_rgb() for i, layer in ((0, "relu2"), (6, "relu3"))]
    save(grid(dreams, ncols=1), "synthesis_deepdream.png")

    inversion = S.invert(backend, data.images[1:2], ["relu1", "relu2", "relu3", "relu4"], steps=300, tv=2.0,
                         progress=False)
    print(inversion, inversion.feature_error)
    save(inversion.to_rgb(), "synthesis_inversion.png")

    rows = []
    for idx in ((0, 1, 2, 3), (4, 5, 6, 7)):
        exemplar = mosaic(data.images[list(idx)])
        gatys = S.texture(backend, exemplar, steps=300, tv=0.5, progress=False)
        efros = S.efros_leung(exemplar, (64, 64), window=9, seed=0, progress=False)
        print(gatys)
        rows.append(grid([exemplar[0], gatys.image[0], efros.image[0]], ncols=3, pad=2))
    save(grid(rows, ncols=1), "synthesis_texture.png")

    style = mosaic(data.images[[8, 9, 10, 11]])
    st = S.style_transfer(backend, data.images[2:3], style, steps=300, style_weight=10.0, progress=False)
    print(st)
    save(st.to_rgb(), "synthesis_style.png")

    x, y = data.images[:4], data.labels[:4]
    adv = S.fool(backend, x, (y + 1) % 4, epsilon=12 / 255, steps=40, progress=False)
    print(adv, adv.predictions, (y + 1) % 4)
    save(adv.to_rgb(), "synthesis_fooling.png")
    noise = np.random.default_rng(0).uniform(0.3, 0.7, (4, 3, 64, 64)).astype(np.float32)
    fooling = S.fool(backend, noise, [0, 1, 2, 3], epsilon=None, confidence=0.999, steps=200, progress=False)
    print(fooling, fooling.probabilities.max(1))
    save(grid(list(fooling.adversarial), ncols=4), "synthesis_fooling_noise.png")


if __name__ == "__main__":
    main()
