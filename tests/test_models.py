"""The Residual U-ViT: shapes, identity at initialisation, conditioning, T = 1, frame-wise mode,
dropout, scan/remat, mixed precision, sharding specs.

CPU time goes into compiling, so the tests share a few compiled functions: one width everywhere
keeps the number of distinct initialiser shapes small, models that need no true initialisation
are filled with NumPy noise on an `eval_shape` skeleton, and test_flops covers unequal widths.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sid2video import checkpoint
from sid2video.models import layers, temporal_taps, uvit, uvit_config

# 3 nested levels (16², 8², 4²): ResBlocks with factorized convs, factorized attention at 4².
VIDEO = dict(num_frames=8, resolution=16, channels=(32, 32, 32),
             block_types=("resnet", "resnet", "transformer"), encoder_blocks=(1, 0, 1),
             decoder_blocks=(1, 1, 0), num_heads=2, emb_channels=32, conv="factorized",
             attention="factorized", frame_conditioning=True)
# The same with nothing that crosses frames.
FRAMEWISE = dict(VIDEO, conv="2d", attention="spatial")
# T = 1 although "3d" / "factorized" are asked for: must build the 2D network. Dropout from
# the 4² level (the second), with 2×2 patches.
IMAGE = dict(num_frames=1, resolution=16, patch_size=2, channels=(32, 32),
             block_types=("resnet", "transformer"), encoder_blocks=(1, 1), decoder_blocks=(1, 1),
             num_heads=2, emb_channels=32, conv="3d", attention="factorized", num_classes=10,
             dropout=0.5, dropout_from_resolution=4)
B = 2
# Tests compile many small programs: skip LLVM's optimisations (about half the compile time).
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


def _noise_like(params, seed, scale):
    rng = np.random.default_rng(seed)
    out = {}
    for path, var in nnx.to_flat_state(params):
        shape = var.shape
        noise = rng.standard_normal(shape).astype(np.float32)
        if len(shape) >= 2:  # kernels: about unit gain
            noise /= math.sqrt(math.prod(shape[:-1]))
        else:
            noise *= scale
            if path[-1] == "scale":
                noise += 1.0
        out[path] = noise
    return out


def perturbed(model, seed=1, scale=0.3):
    """A copy of `model` with every parameter moved away from its initial value."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    noise = _noise_like(params, seed, scale)
    flat = {p: v[...] + scale * noise[p] for p, v in nnx.to_flat_state(params)}
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def init_model(cfg, seed=0):
    """`uvit.create(cfg, seed)`, run as one jitted program (a few seconds less on CPU than
    running every initialiser eagerly); the parameters are the same."""
    graphdef = nnx.graphdef(uvit.abstract(cfg))
    state = jax.jit(lambda: nnx.state(uvit.create(cfg, seed)), **FAST)()
    return nnx.merge(graphdef, state)


def random_model(cfg, seed=2, scale=0.3):
    """A model with random parameters built without running the initialisers."""
    graphdef, params, rest = nnx.split(uvit.abstract(cfg), nnx.Param, ...)
    assert not jax.tree.leaves(rest), "only for models without dropout rng state"
    flat = {p: jnp.asarray(v) for p, v in _noise_like(params, seed, scale).items()}
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def jitted(model, deterministic=True):
    """jit of model(z, logsnr, cond=, cond_mask=, label=) as a function of the model's state."""
    graphdef = nnx.graphdef(model)

    @functools.partial(jax.jit, **FAST)
    def f(state, z, logsnr, cond, cond_mask, label):
        m = nnx.merge(graphdef, state)
        return m(z, logsnr, cond=cond, cond_mask=cond_mask, label=label,
                 deterministic=deterministic)

    return lambda m, *args: f(nnx.state(m), *args)


def video_inputs(cfg, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    shape = (B, cfg["num_frames"], cfg["resolution"], cfg["resolution"], 3)
    z = jax.random.normal(k1, shape)
    cond = jax.random.uniform(k2, shape, minval=-1, maxval=1)
    mask = jnp.zeros((B, cfg["num_frames"])).at[:, :3].set(1.0)
    return z, jnp.array([-3.0, 4.0]), cond, mask


def image_inputs():
    z = jax.random.normal(jax.random.key(0), (B, 1, 16, 16, 3))
    return z, jnp.array([0.0, 2.0])


@pytest.fixture(scope="module")
def video():
    model = init_model(VIDEO)
    return model, perturbed(model), jitted(model)


@pytest.fixture(scope="module")
def image():
    model = init_model(IMAGE)
    return model, perturbed(model), jitted(model)


def test_video_output_shape_and_zero_initial_prediction(video):
    """T = 8 with 3 conditioning frames; the zero-initialised output head predicts exactly 0."""
    model, pert, f = video
    z, logsnr, cond, mask = video_inputs(VIDEO)
    out = f(model, z, logsnr, cond, mask, None)
    assert out.shape == z.shape == (2, 8, 16, 16, 3) and out.dtype == z.dtype
    np.testing.assert_array_equal(out, 0.0)
    out = f(pert, z, logsnr, cond, mask, None)
    assert np.isfinite(np.asarray(out)).all() and float(jnp.abs(out).max()) > 0


def test_image_output_shape(image):
    _, pert, f = image
    z, logsnr = image_inputs()
    out = f(pert, z, logsnr, None, None, jnp.array([1, 2]))
    assert out.shape == z.shape == (2, 1, 16, 16, 3)
    assert np.isfinite(np.asarray(out)).all() and float(jnp.abs(out).max()) > 0


def test_trunk_is_exactly_the_identity_at_init(video):
    """The trunk (all levels between the patch embedding and the output head) maps h to h."""
    model, pert, _ = video
    cfg = model.config
    s = cfg.level_resolutions[0]
    h = jax.random.normal(jax.random.key(3), (B, cfg.tokens_t, s, s, cfg.channels[0]))
    emb = jax.random.normal(jax.random.key(4), (B, cfg.emb_channels))
    graphdef = nnx.graphdef(model)
    run = jax.jit(lambda state, h, emb: nnx.merge(graphdef, state).trunk(h, emb), **FAST)
    np.testing.assert_array_equal(run(nnx.state(model), h, emb), h)
    # The check has teeth: away from init the trunk is not the identity.
    assert float(jnp.abs(run(nnx.state(pert), h, emb) - h).max()) > 1e-2


def test_model_sees_the_conditioning_frames(video):
    _, pert, f = video
    z, logsnr, cond, mask = video_inputs(VIDEO)
    out = f(pert, z, logsnr, cond, mask, None)
    # Change one conditioning frame (frame 1), z_t fixed: the predicted frames (3..7) change.
    cond2 = cond.at[:, 1].set(-cond[:, 1])
    out2 = f(pert, z, logsnr, cond2, mask, None)
    assert float(jnp.abs(out2[:, 3:] - out[:, 3:]).max()) > 1e-3
    # Change a frame the mask marks as not conditioning: it is ignored, bit for bit.
    cond3 = cond.at[:, 5].set(7.0)
    np.testing.assert_array_equal(f(pert, z, logsnr, cond3, mask, None), out)
    # Which frames condition is data: another subset per example gives another prediction.
    mask2 = jnp.zeros_like(mask).at[0, jnp.array([0, 4, 6])].set(1.0).at[1, 7].set(1.0)
    out4 = f(pert, z, logsnr, cond, mask2, None)
    assert float(jnp.abs(out4 - out).max()) > 1e-3
    # No conditioning at all (mask 0, the dropped-condition case) is valid, per example.
    dropped = mask.at[0].set(0.0)
    out5 = f(pert, z, logsnr, cond, dropped, None)
    out6 = f(pert, z, logsnr, cond, jnp.zeros_like(mask), None)
    assert np.isfinite(np.asarray(out6)).all()
    np.testing.assert_allclose(out5[0], out6[0], atol=1e-6)
    np.testing.assert_allclose(out5[1], out[1], atol=1e-6)


def test_cond_fill_last_gives_each_frame_the_latest_given_frame():
    """cond_fill='last': the cond channels of a frame without conditioning hold the latest given
    frame before it (zeros before the first); given frames and the mask channel are unchanged.
    Checked against a plain loop over frames."""
    cfg = uvit.UViTConfig.from_config({**VIDEO, "cond_fill": "last"})
    model = nnx.eval_shape(lambda: uvit.UViT(cfg, rngs=nnx.Rngs(0)))
    z, _, cond, _ = video_inputs(VIDEO)
    mask = jnp.array([[1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0, 0]], jnp.float32)
    x = np.asarray(uvit.UViT.inputs(model, z, cond, mask))
    c = np.asarray(cond)
    for b in range(B):
        last = None
        for t in range(cfg.num_frames):
            if mask[b, t]:
                last = t
            want = c[b, last] if last is not None else np.zeros_like(c[b, t])
            np.testing.assert_array_equal(x[b, t, ..., 3:6], want)
            np.testing.assert_array_equal(x[b, t, ..., 6], float(mask[b, t]))
    np.testing.assert_array_equal(x[..., :3], z)
    # The default fill leaves the frames without conditioning at zero.
    zeros = np.asarray(uvit.UViT.inputs(nnx.eval_shape(lambda: uvit.UViT(
        uvit.UViTConfig.from_config(VIDEO), rngs=nnx.Rngs(0))), z, cond, mask))
    np.testing.assert_array_equal(zeros[1, 3, ..., 3:6], 0.0)
    with pytest.raises(ValueError, match="cond_fill"):
        uvit.UViTConfig.from_config({**VIDEO, "cond_fill": "first"})


def _last_given_loop(cond, mask):
    """The latest given frame before each frame without conditioning, zeros elsewhere (a loop)."""
    c, m = np.asarray(cond), np.asarray(mask)
    out = np.zeros_like(c)
    for b in range(c.shape[0]):
        last = None
        for t in range(c.shape[1]):
            if m[b, t]:
                last = t
            elif last is not None:
                out[b, t] = c[b, last]
    return out


@pytest.mark.parametrize("mean_type", ["v", "eps", "x"])
def test_frame_residual_runs_the_plain_network_on_the_change(video, mean_type):
    """frame_residual: the same parameters give the plain network's output on z − α·last, moved
    back by −σ·last (v), 0 (ε) or +last (x); `last` is recomputed by a loop over frames."""
    from sid2video.diffusion import parametrization

    model, pert, f = video
    cfg = {**VIDEO, "frame_residual": True, "mean_type": mean_type}
    residual = nnx.merge(nnx.graphdef(uvit.abstract(cfg)), nnx.state(pert))
    z, logsnr, cond, _ = video_inputs(VIDEO)
    mask = jnp.array([[1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0, 0]], jnp.float32)
    last = _last_given_loop(cond, mask)
    alpha = np.sqrt(1 / (1 + np.exp(-np.asarray(logsnr))))[:, None, None, None, None]
    sigma = np.sqrt(1 / (1 + np.exp(np.asarray(logsnr))))[:, None, None, None, None]
    out = jitted(residual)(residual, z, logsnr, cond, mask, None)
    plain = np.asarray(f(pert, z - alpha * last, logsnr, cond, mask, None))
    shift = {"v": -sigma * last, "eps": 0.0, "x": last}[mean_type]
    np.testing.assert_allclose(np.asarray(out), plain + shift, atol=2e-5)
    assert np.abs(shift).max() > 0.1 or mean_type == "eps"
    if mean_type == "v":
        # Untrained (zero output head): x̂ = α z + σ² last, i.e. copy-last-frame at high noise.
        init = nnx.merge(nnx.graphdef(residual), nnx.state(model))
        low = jnp.array([-20.0, -20.0])
        x_hat = parametrization.predictions(jitted(init)(init, z, low, cond, mask, None), z, low, "v")[0]
        np.testing.assert_allclose(np.asarray(x_hat)[mask == 0], last[np.asarray(mask) == 0], atol=1e-3)
        assert uvit_config.MEAN_TYPES == parametrization.MEAN_TYPES
    with pytest.raises(ValueError, match="frame_residual.*frame_conditioning"):
        uvit.UViTConfig.from_config({**cfg, "frame_conditioning": False})


def test_null_label(image):
    model, pert, f = image
    z, logsnr = image_inputs()
    assert model.null_label == IMAGE["num_classes"]
    real = f(pert, z, logsnr, None, None, jnp.array([3, 3]))
    null = f(pert, z, logsnr, None, None, jnp.array([10, 10]))  # all-null batch is valid
    assert np.isfinite(np.asarray(null)).all()
    assert float(jnp.abs(real - null).max()) > 1e-3
    # Per-example dropping to the null class: dropped examples equal the all-null output.
    dropped = jnp.array([model.null_label, 3])
    mixed = f(pert, z, logsnr, None, None, dropped)
    np.testing.assert_allclose(mixed[0], null[0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], real[1], atol=1e-6)
    # label=None means the null class.
    np.testing.assert_array_equal(pert.embed(logsnr), pert.embed(logsnr, jnp.array([10, 10])))


def _param_shapes(model):
    return {"/".join(map(str, p)): v.shape
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("t", [1, 2, 5])
def test_temporal_conv_as_shifted_matmuls_equals_the_3d_convolution(t):
    """temporal_taps.temporal_conv against flax's own 3×1×1 'SAME' convolution with the same kernel."""
    conv = nnx.Conv(4, 6, (3, 1, 1), padding="SAME", rngs=nnx.Rngs(0))
    conv.kernel[...] = jax.random.normal(jax.random.PRNGKey(1), conv.kernel.shape)
    conv.bias[...] = jax.random.normal(jax.random.PRNGKey(2), conv.bias.shape)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, t, 3, 5, 4))
    np.testing.assert_allclose(temporal_taps.temporal_conv(x, conv), conv(x), rtol=1e-5, atol=1e-5)
    # Frame 0 sees only frames 0 and 1: the padding is zeros, not a wrap-around.
    if t >= 3:
        y = x.at[:, -1].set(100.0)
        np.testing.assert_allclose(temporal_taps.temporal_conv(y, conv)[:, 0], conv(x)[:, 0], rtol=1e-5, atol=1e-5)


def test_t1_builds_no_temporal_parameters(image):
    model = image[0]
    shapes = _param_shapes(model)
    assert not [p for p in shapes if "temporal" in p or "pos_time" in p]
    kernels = {p: s for p, s in shapes.items() if "conv" in p and p.endswith("kernel")}
    assert kernels and all(s[:2] == (3, 3) and len(s) == 4 for s in kernels.values())
    assert len(model.trunk.inner.encoder.blocks[0].attention) == 1  # spatial attention only
    # Exactly the 2D network: the same parameters as asking for 2D explicitly.
    flat = _param_shapes(uvit.abstract(dict(IMAGE, conv="2d", attention="spatial")))
    assert flat == shapes
    # ...while the same config with 4 frames has temporal taps, attention and embeddings.
    video = _param_shapes(uvit.abstract(dict(IMAGE, num_frames=4)))
    assert any(len(s) == 5 for p, s in video.items() if "conv" in p and p.endswith("kernel"))
    assert any("pos_time" in p for p in video)
    assert any("attention/1/" in p for p in video)


def test_framewise_model_is_permutation_equivariant_over_frames(video):
    model = random_model(FRAMEWISE)
    z, logsnr, cond, _ = video_inputs(FRAMEWISE)
    mask = jnp.array([[1.0, 0, 1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0, 1]])
    perm = jnp.array([2, 0, 3, 1, 7, 5, 4, 6])
    f = jitted(model)
    out = f(model, z, logsnr, cond, mask, None)
    out_p = f(model, z[:, perm], logsnr, cond[:, perm], mask[:, perm], None)
    np.testing.assert_allclose(out_p, out[:, perm], atol=2e-5)
    # Control: with temporal mixing (the video model) the same permutation does not commute.
    _, mixing, g = video
    out = g(mixing, z, logsnr, cond, mask, None)
    out_p = g(mixing, z[:, perm], logsnr, cond[:, perm], mask[:, perm], None)
    assert float(jnp.abs(out_p - out[:, perm]).max()) > 1e-3


def test_dropout_only_below_the_top_level_and_only_in_training(image):
    model, pert, f = image
    top = model.trunk
    assert all(b.dropout is None for b in list(top.encoder.blocks) + list(top.decoder.blocks))
    assert all(b.mlp.dropout is not None for b in top.inner.encoder.blocks)
    z, logsnr = image_inputs()
    label = jnp.array([1, 2])
    graphdef = nnx.graphdef(pert)

    @functools.partial(jax.jit, **FAST)
    def train(state, z):  # returns the state with the dropout rng stream advanced
        m = nnx.merge(graphdef, state)
        return m(z, logsnr, label=label, deterministic=False), nnx.state(m)

    a, state = train(nnx.state(pert), z)
    b = f(pert, z, logsnr, None, None, label)
    assert float(jnp.abs(a - b).max()) > 1e-4
    a2, _ = train(state, z)  # the rng stream has moved on: a new mask
    assert float(jnp.abs(a2 - a).max()) > 1e-4
    np.testing.assert_array_equal(f(pert, z, logsnr, None, None, label), b)
    with pytest.raises(ValueError, match="dropout_from_resolution=8"):
        uvit.UViTConfig.from_config(dict(IMAGE, dropout_from_resolution=8))  # the top level


def _copy_into_scanned(loop_model, scan_model):
    """Write a loop model's parameters into the scanned one (stacking the blocks)."""
    src = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(loop_model, nnx.Param))}
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(scan_model, nnx.Param)):
        if path in src:
            out[path] = src[path]
            continue
        i = path.index("blocks") + 1
        out[path] = jnp.stack([src[path[:i] + (j,) + path[i:]] for j in range(var.shape[0])])
    graphdef, _, rest = nnx.split(scan_model, nnx.Param, ...)
    return nnx.merge(graphdef, nnx.from_flat_state(out), rest)


@pytest.mark.parametrize("kind", ["resnet", "transformer"])
def test_scan_and_remat_give_the_loop_function(kind):
    cfg = dict(IMAGE, patch_size=4, channels=(32,), block_types=(kind,), encoder_blocks=(3,),
               decoder_blocks=(0,), dropout=0.0, dropout_from_resolution=0)
    loop = random_model(cfg)
    scan = _copy_into_scanned(loop, uvit.abstract(dict(cfg, scan_blocks=True, remat=True)))
    assert scan.trunk.encoder.scan and scan.trunk.encoder.remat
    z, logsnr = image_inputs()
    label = jnp.array([1, 10])
    # Same parameters, same function.
    np.testing.assert_allclose(jitted(scan)(scan, z, logsnr, None, None, label),
                               jitted(loop)(loop, z, logsnr, None, None, label), atol=1e-5)
    if kind == "transformer":
        return  # gradients through scan + remat once (ResBlocks: the cheaper compile)

    def value_and_grad(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            m = nnx.merge(graphdef, params, rest)
            return jnp.mean(m(z, logsnr, label=label) ** 2)

        return jax.jit(jax.value_and_grad(loss), **FAST)(params)

    lv, gl = value_and_grad(loop)
    sv, gs = value_and_grad(scan)
    np.testing.assert_allclose(sv, lv, rtol=1e-5)
    blocks_loop, blocks_scan = gl["trunk"]["encoder"]["blocks"], gs["trunk"]["encoder"]["blocks"]
    g_loop = jnp.stack([blocks_loop[j]["conv1"]["spatial"]["kernel"][...] for j in range(3)])
    assert float(jnp.abs(g_loop).max()) > 0
    np.testing.assert_allclose(blocks_scan["conv1"]["spatial"]["kernel"][...], g_loop,
                               rtol=1e-4, atol=1e-6)


def test_scanned_blocks_with_dropout_train_and_run_inside_a_loop():
    """The paper configs' structure: scanned (and rematerialised) blocks with dropout.

    Training reseeds every block's dropout stream with its own key; a deterministic call made
    from inside a jax.lax loop that closes over the parameters (what a sampler does) is the loop
    model's function."""
    # Dropout applies below the top level only: a 2-level net with 3 + 2 dropout blocks at 2².
    cfg = dict(IMAGE, patch_size=4, channels=(16, 32), block_types=("resnet", "transformer"),
               encoder_blocks=(1, 3), decoder_blocks=(1, 2), dropout=0.5, dropout_from_resolution=2)
    loop = perturbed(init_model(cfg))  # away from the identity at initialisation
    scan = _copy_into_scanned(loop, uvit.abstract(dict(cfg, scan_blocks=True, remat=True)))
    graphdef, _, rest = nnx.split(scan, nnx.Param, ...)
    scan = nnx.merge(graphdef, nnx.state(scan, nnx.Param), checkpoint.fresh_state(rest))
    z, logsnr = image_inputs()
    label = jnp.array([1, 10])
    graphdef, state = nnx.split(scan)

    @jax.jit
    def in_loop(state):
        def body(i, acc):  # the parameters are closed over from outside the loop
            return acc + nnx.merge(graphdef, state)(z, logsnr, label=label)
        return jax.lax.fori_loop(0, 2, body, jnp.zeros_like(z)) / 2

    np.testing.assert_allclose(in_loop(state), jitted(loop)(loop, z, logsnr, None, None, label), atol=1e-5)

    @jax.jit
    def train_mode(state, key):
        m = nnx.merge(graphdef, state)
        nnx.reseed(m, dropout=key, policy="match_shape")
        keys = nnx.state(m.trunk.inner.encoder.blocks, nnx.RngKey)
        return m(z, logsnr, label=label, deterministic=False), jax.tree.leaves(keys)

    out_a, keys = train_mode(state, jax.random.key(1))
    out_b, _ = train_mode(state, jax.random.key(2))
    again, _ = train_mode(state, jax.random.key(1))
    stacked = jax.random.key_data(keys[0]).reshape(3, -1)
    assert len({tuple(np.asarray(k)) for k in stacked}) == 3  # one key per block
    np.testing.assert_array_equal(out_a, again)  # reproducible from the step's key
    assert float(jnp.abs(out_a - out_b).max()) > 1e-4  # and different for another key
    assert bool(jnp.all(jnp.isfinite(out_a)))


def test_bfloat16_compute_with_float32_parameters(image):
    _, pert, f = image
    graphdef = nnx.graphdef(uvit.abstract(dict(IMAGE, dtype="bfloat16")))
    low = nnx.merge(graphdef, nnx.state(pert))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(low, nnx.Param)))
    z, logsnr = image_inputs()
    label = jnp.array([1, 2])
    ref = f(pert, z, logsnr, None, None, label)
    out = jitted(low)(low, z, logsnr, None, None, label)
    assert out.dtype == jnp.float32
    err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    assert 0 < err < 0.1, err  # bf16 rounding, nothing worse


def test_logsnr_embedding_is_defined_beyond_the_base_range():
    # Shifted schedules move λ outside the (−10, 10) used to scale the embedding's input.
    lam = jnp.array([-20.0, -16.0, -15.5, 0.0, 15.5, 20.0])
    feats = layers.logsnr_features(lam, 32, (-10.0, 10.0))
    assert np.isfinite(np.asarray(feats)).all()
    d = np.asarray(jnp.abs(feats[:, None] - feats[None]).max(-1)) + np.eye(len(lam))
    assert d.min() > 1e-3  # no clipping: every λ embeds differently
    # A fixed function of λ alone: the same λ embeds the same wherever it sits in the batch.
    np.testing.assert_array_equal(layers.logsnr_features(lam[::-1], 32, (-10.0, 10.0)),
                                  feats[::-1])


def test_partition_specs_for_data_parallel_and_fsdp():
    model = uvit.abstract(dict(IMAGE, channels=(64, 128), emb_channels=128))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    dp = jax.tree.leaves(uvit.partition_specs(model, jax.sharding.AbstractMesh((4,), ("data",))))
    assert len(dp) == len(params) and all(s == jax.sharding.PartitionSpec() for s in dp)
    mesh = jax.sharding.AbstractMesh((2, 4), ("data", "fsdp"))
    fsdp = jax.tree.leaves(uvit.partition_specs(model, mesh))
    assert len(fsdp) == len(params)
    sharded = 0
    for p, s in zip(params, fsdp):
        assert len(s) in (0, len(p.shape))
        for dim, name in zip(p.shape, s):
            if name == "fsdp":
                assert dim % 4 == 0
                sharded += 1
        if math.prod(p.shape) >= 2**14 and len(p.shape) >= 2:
            assert "fsdp" in tuple(s), p.shape  # every big matrix is split
    assert sharded > 0
    with pytest.raises(ValueError, match="mesh axes"):
        uvit.partition_specs(model, jax.sharding.AbstractMesh((4,), ("model",)))


def test_bad_inputs_raise_clear_errors(image, video):
    model = image[0]
    with pytest.raises(ValueError, match="z has shape"):
        model(jnp.zeros((1, 2, 16, 16, 3)), jnp.zeros(1))
    with pytest.raises(ValueError, match="frame_conditioning=False"):
        model(jnp.zeros((1, 1, 16, 16, 3)), jnp.zeros(1), cond_mask=jnp.ones((1, 1)))
    vmodel = video[0]
    with pytest.raises(ValueError, match="num_classes=0"):
        vmodel(jnp.zeros((1, 8, 16, 16, 3)), jnp.zeros(1), label=jnp.zeros(1, jnp.int32))
    with pytest.raises(ValueError, match="cond_mask has shape"):
        vmodel(jnp.zeros((1, 8, 16, 16, 3)), jnp.zeros(1), cond_mask=jnp.ones((1, 4)))
