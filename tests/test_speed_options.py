"""The model's speed options compute the plain path's function: conv_impl (how the temporal conv
taps run), remat_policy (what a rematerialised block keeps) and attention_impl (which attention
kernel), each against the reference path with the same parameters (outputs and gradients).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sid2video.models import layers, uvit

FAST = dict(compiler_options={"xla_backend_optimization_level": 0})

# Two ResBlock levels with 3×3×3 convs (2 blocks each, so they scan) and factorized attention.
VIDEO = dict(num_frames=3, resolution=4, channels=(8, 8), block_types=("resnet", "transformer"),
             encoder_blocks=(2, 2), decoder_blocks=(0, 0), num_heads=2, emb_channels=8,
             conv="3d", attention="factorized")


def _conv(kind, impl, seed=0):
    conv = layers.Conv(4, 6, kind, impl=impl, rngs=nnx.Rngs(seed))
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(conv, nnx.Param))):
        var[...] = jax.random.normal(jax.random.key(10 + i), var.shape) * 0.3
    return conv


def _value_and_grads(conv, x):
    graphdef, params = nnx.split(conv)

    def loss(params, x):
        y = nnx.merge(graphdef, params)(x)
        return jnp.sum(jnp.sin(y))  # a nonlinear loss: every output position gets its own weight

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), **FAST)(params, x)


@pytest.mark.parametrize("kind", ["3d", "factorized"])
@pytest.mark.parametrize("impl", ["stacked", "shifted"])
@pytest.mark.parametrize("t", [1, 4])
def test_conv_impls_equal_the_lax_convolution(kind, impl, t):
    """Same parameters, same outputs and the same gradients (parameters and input) as 'lax'."""
    ref, alt = _conv(kind, "lax"), _conv(kind, impl)
    x = jax.random.normal(jax.random.key(3), (2, t, 5, 3, 4))
    np.testing.assert_allclose(alt(x), ref(x), rtol=1e-5, atol=1e-5)
    (v_ref, (gp_ref, gx_ref)), (v_alt, (gp_alt, gx_alt)) = (_value_and_grads(ref, x),
                                                            _value_and_grads(alt, x))
    np.testing.assert_allclose(v_alt, v_ref, rtol=1e-5)
    np.testing.assert_allclose(gx_alt, gx_ref, rtol=1e-4, atol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(gp_alt), nnx.to_flat_state(gp_ref)):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-5, err_msg=str(path))
    if t >= 3:  # the first frame sees frames 0 and 1 only: zero padding, no wrap-around
        y = x.at[:, -1].set(100.0)
        np.testing.assert_allclose(alt(y)[:, 0], ref(x)[:, 0], rtol=1e-5, atol=1e-5)


def test_the_stacked_3d_conv_is_one_2d_convolution_of_depth_3c():
    conv = _conv("3d", "stacked")
    x = jax.random.normal(jax.random.key(3), (1, 3, 4, 4, 4))
    jaxpr = str(jax.make_jaxpr(conv)(x))
    assert jaxpr.count("conv_general_dilated") == 1
    assert "f32[3,3,12,6]" in jaxpr  # the kernel reshaped to [3, 3, 3C, D]


def _random_params(model, seed=0):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    params = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape) * 0.2, params)
    return graphdef, params, rest


def _model_loss(cfg, seed=0):
    """(loss(params), params) for a model of `cfg` with random parameters (independent of scan)."""
    graphdef, params, rest = _random_params(uvit.abstract(dict(cfg, scan_blocks=False)), seed)
    z = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 3))
    logsnr = jnp.array([-2.0, 3.0])
    target = uvit.abstract(cfg)
    t_graphdef, t_params, t_rest = nnx.split(target, nnx.Param, ...)
    flat = dict(nnx.to_flat_state(params))
    out = {}
    for path, var in nnx.to_flat_state(t_params):  # stack loop blocks where the target scans
        if path in flat:
            out[path] = flat[path][...]
        else:
            i = path.index("blocks") + 1
            out[path] = jnp.stack([flat[path[:i] + (j,) + path[i:]][...]
                                   for j in range(var.shape[0])])
    t_rest = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), t_rest)

    def loss(p):
        m = nnx.merge(t_graphdef, p, t_rest)
        return jnp.mean(jnp.sin(m(z, logsnr)) ** 2)

    return loss, nnx.from_flat_state(out)


def _block_kernel_grads(grads):
    """The first ResBlock conv kernel's gradient, stacked over blocks (scan or loop layout)."""
    blocks = grads["trunk"]["encoder"]["blocks"]
    if 0 in blocks:
        return jnp.stack([blocks[j]["conv1"]["spatial"]["kernel"][...] for j in range(2)])
    return blocks["conv1"]["spatial"]["kernel"][...]


@pytest.fixture(scope="module")
def plain():
    loss, params = _model_loss(VIDEO)
    value, grads = jax.jit(jax.value_and_grad(loss), **FAST)(params)
    return value, grads


@pytest.mark.parametrize("scan", [False, True])
def test_save_dots_remat_gives_the_plain_loss_and_gradients(plain, scan):
    cfg = dict(VIDEO, remat=True, remat_policy="save_dots", scan_blocks=scan)
    loss, params = _model_loss(cfg)
    value, grads = jax.jit(jax.value_and_grad(loss), **FAST)(params)
    np.testing.assert_allclose(value, plain[0], rtol=1e-5)
    g_ref = _block_kernel_grads(plain[1])
    assert float(jnp.abs(g_ref).max()) > 0
    np.testing.assert_allclose(_block_kernel_grads(grads), g_ref, rtol=1e-4, atol=1e-6)
    ref_norm = optax_norm(plain[1])
    np.testing.assert_allclose(optax_norm(grads), ref_norm, rtol=1e-4)


def optax_norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree))))


def _residual_bytes(cfg):
    """Bytes the backward pass keeps from the forward pass (the vjp closure's arrays)."""
    loss, params = _model_loss(cfg)
    residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)  # shapes only
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(residuals))


def test_remat_policies_keep_what_they_say():
    """No remat keeps every activation; 'save_dots' the matmul and conv outputs; 'full' only
    the block inputs: strictly less each time."""
    none = _residual_bytes(dict(VIDEO, remat=False))
    dots = _residual_bytes(dict(VIDEO, remat=True, remat_policy="save_dots"))
    full = _residual_bytes(dict(VIDEO, remat=True, remat_policy="full"))
    assert none > dots > full, (none, dots, full)


def test_attention_auto_is_xla_on_cpu_and_cudnn_is_refused():
    assert jax.default_backend() == "cpu"
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 2, 8)) for i in range(3))
    np.testing.assert_array_equal(layers.dot_product_attention(q, k, v, "auto"),
                                  layers.dot_product_attention(q, k, v, "xla"))
    ref = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0))
    np.testing.assert_allclose(layers.dot_product_attention(q, k, v, "xla"),
                               jnp.einsum("bhqk,bkhd->bqhd", ref, v), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a GPU"):
        layers.dot_product_attention(q, k, v, "cudnn")
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a GPU"):
        layers.attention_implementation("cudnn", jnp.float32, backend="gpu")
    # Where the fused kernel can run, 'auto' asks for it.
    assert layers.attention_implementation("auto", jnp.bfloat16, backend="gpu") == "cudnn"
    assert layers.attention_implementation("auto", jnp.float16, backend="gpu") == "cudnn"
    assert layers.attention_implementation("auto", jnp.float32, backend="gpu") == "xla"
    assert layers.attention_implementation("auto", jnp.bfloat16, backend="tpu") == "xla"
    assert layers.attention_implementation("cudnn", jnp.bfloat16, backend="gpu") == "cudnn"


def test_model_options_reach_the_layers_and_keep_the_function():
    """conv_impl / attention_impl reach every layer, change no parameter, and keep the output."""
    base = dict(VIDEO, attention_impl="xla")
    other = dict(VIDEO, conv_impl="stacked", attention_impl="auto")
    a, b = uvit.abstract(base), uvit.abstract(other)
    assert nnx.graphdef(nnx.state(a, nnx.Param)) == nnx.graphdef(nnx.state(b, nnx.Param))
    convs = [m for _, m in nnx.iter_graph(b) if isinstance(m, layers.Conv)]
    attns = [m for _, m in nnx.iter_graph(b) if isinstance(m, layers.Attention)]
    assert convs and all(c.impl == "stacked" for c in convs)
    assert attns and all(m.impl == "auto" for m in attns)
    graphdef_a, params, rest = _random_params(a)
    graphdef_b = nnx.graphdef(b)
    z = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 3))
    logsnr = jnp.array([-2.0, 3.0])

    @functools.partial(jax.jit, static_argnums=0, **FAST)
    def run(graphdef, params):
        return nnx.merge(graphdef, params, rest)(z, logsnr)

    np.testing.assert_allclose(run(graphdef_b, params), run(graphdef_a, params), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("key, value", [("conv_impl", "im2col"), ("remat_policy", "dots"),
                                        ("attention_impl", "flash")])
def test_bad_speed_option_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"config.model.{key}={value!r}"):
        uvit.UViTConfig.from_config(dict(VIDEO, **{key: value}))
