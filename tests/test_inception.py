"""FID InceptionV3: architecture, PyTorch-layout semantics, .pth conversion without torch, errors."""

import collections
import io
import os
import pickle
import struct
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx

from evaluation import inception, weights

# ----------------------------------------------------------------------------------------------
# Writing torch.save files without torch: the pickle names torch's globals, storages are
# persistent ids, tensors are rebuilt by torch._utils._rebuild_tensor_v2.


class _Global:
    """Pickles as a reference to module.name (which need not be importable here)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce insists on a callable
        raise NotImplementedError


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _TorchPickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)
    legacy = False

    def _save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global_ref

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = _Global("torch", _STORAGE_NAMES[obj.array.dtype])
            pid = ("storage", kind, obj.key, "cpu", obj.array.size)
            return pid + (None,) if self.legacy else pid
        return None


def _tensors(state_dict):
    """One contiguous storage per tensor."""
    tensors, storages = collections.OrderedDict(), []
    for i, (k, v) in enumerate(state_dict.items()):
        v = np.asarray(v)
        st = _Storage(str(i), v)
        storages.append(st)
        stride = [int(np.prod(v.shape[j + 1:])) for j in range(v.ndim)]
        tensors[k] = _Tensor(st, 0, v.shape, stride)
    return tensors, storages


def write_pth_zip(path, state_dict, extra_tensors=()):
    tensors, storages = _tensors(state_dict)
    for name, tensor, storage in extra_tensors:
        tensors[name] = tensor
        storages.append(storage)
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(tensors)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for st in storages:
            zf.writestr(f"archive/data/{st.key}", st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())
        zf.writestr("archive/version", "3\n")


def write_pth_legacy(path, state_dict):
    tensors, storages = _tensors(state_dict)
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        p = _TorchPickler(f, protocol=2)
        p.legacy = True
        p.dump(tensors)
        pickle.dump([st.key for st in storages], f, protocol=2)
        for st in storages:
            f.write(struct.pack("<q", st.array.size))
            f.write(st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())


# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_net():
    """Random weights, with non-trivial batch-norm scales, offsets and statistics."""
    net = inception.random(0)
    rng = np.random.default_rng(0)

    def perturb(path, leaf):
        name = inception._path_parts(path)[-1]
        if name in ("mean", "bias"):
            return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return leaf

    return inception.InceptionFeatures(net.graphdef, jax.tree_util.tree_map_with_path(perturb, net.params.host))


@pytest.fixture(scope="module")
def torch_weights(reference_net):
    """The same weights in pytorch-fid's state-dict layout."""
    return inception.to_torch_state_dict(reference_net)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(-1, 1, (2, 40, 40, 3)).astype(np.float32)


def test_architecture_matches_torchvision_inception_v3(torch_weights):
    # 94 convolutions, each with conv.weight and bn.{weight, bias, running_mean, running_var}.
    assert len(torch_weights) == 94 * 5
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and the
    # 1000-way fc (2,049,000) that leaves 21,785,568 for the layers up to pool3.
    n = sum(v.size for k, v in torch_weights.items() if "running" not in k)
    assert n == 27_161_264 - 3_326_696 - 2_049_000
    shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "Mixed_7c.branch_pool.bn.running_var": (192,),
    }
    for k, shape in shapes.items():
        assert torch_weights[k].shape == shape, k


def _torch_conv_bn_relu(x, sd, prefix, stride, padding):
    """PyTorch semantics in NumPy: cross-correlation with OIHW weights, then eval batch norm, ReLU."""
    w = sd[prefix + ".conv.weight"].astype(np.float64)
    ph, pw = padding
    x = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    o, _, kh, kw = w.shape
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
            out += patch @ w[:, :, i, j].T
    bn = {n: sd[f"{prefix}.bn.{n}"] for n in ("weight", "bias", "running_mean", "running_var")}
    out = (out - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    return np.maximum(out, 0.0)


def test_layers_follow_pytorch_semantics(reference_net, torch_weights):
    model = nnx.merge(reference_net.graphdef, reference_net.params.host)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 9, 11, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.Conv2d_1a_3x3(x)),
                               _torch_conv_bn_relu(x, torch_weights, "Conv2d_1a_3x3", 2, (0, 0)),
                               rtol=1e-4, atol=1e-4)
    # A 1x7 kernel (height 1, width 7) with padding (0, 3), on a non-square input.
    x = rng.standard_normal((1, 5, 9, 128)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.Mixed_6b.branch7x7_2(x)),
                               _torch_conv_bn_relu(x, torch_weights, "Mixed_6b.branch7x7_2", 1, (0, 3)),
                               rtol=1e-4, atol=1e-4)
    # The FID graph's pool branches: averages exclude the zero padding; Mixed_7c max-pools.
    x = rng.standard_normal((1, 4, 5, 2)).astype(np.float32)
    avg = np.asarray(inception._pool(x, "avg", 3, 1, 1))
    np.testing.assert_allclose(avg[0, 0, 0], x[0, :2, :2].mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(avg[0, 1, 2], x[0, 0:3, 1:4].mean(axis=(0, 1)), rtol=1e-6)
    mx = np.asarray(inception._pool(-np.abs(x), "max", 3, 1, 1))
    np.testing.assert_allclose(mx[0, 0, 0], (-np.abs(x))[0, :2, :2].max(axis=(0, 1)))


def test_resize_to_299_is_half_pixel_bilinear():
    # PyTorch interpolate(bilinear, align_corners=False) doubling [a, b] gives
    # [a, 3/4 a + 1/4 b, 1/4 a + 3/4 b, b]; 299 is not a multiple, so check the 2 -> 4 kernel.
    from evaluation.i3d import resize_bilinear

    x = np.array([1.0, 5.0], np.float32).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(np.asarray(resize_bilinear(x, (1, 4), half_pixel_centers=True))[0, 0, :, 0],
                               [1.0, 2.0, 4.0, 5.0], atol=1e-6)
    u8 = np.random.default_rng(2).integers(0, 256, (1, 1, 299, 299, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(inception.preprocess(u8)), u8[:, 0] / 255.0 * 2 - 1, atol=1e-6)


def test_random_weights_run(reference_net, images):
    feats = np.asarray(reference_net(images))
    assert feats.shape == (2, inception.FEATURES)
    assert np.all(np.isfinite(feats)) and np.all(feats >= 0)    # averages of ReLU outputs
    assert np.abs(feats[0] - feats[1]).max() > 1e-2 * np.abs(feats).max()   # depends on the image
    # An image batch [B, 1, H, W, 3] is the same as [B, H, W, 3].
    np.testing.assert_array_equal(np.asarray(reference_net(images[:, None])), feats)


def test_pth_round_trip_preserves_outputs(torch_weights, reference_net, images, tmp_path):
    extra = dict(torch_weights)
    rng = np.random.default_rng(4)
    extra["fc.weight"] = rng.standard_normal((1008, 2048)).astype(np.float32)   # unused by pool3
    extra["fc.bias"] = np.zeros(1008, np.float32)
    extra["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(7, np.int64)
    # Both torch.save container formats read back exactly.
    for name, write in (("zip.pth", write_pth_zip), ("legacy.pth", write_pth_legacy)):
        write(tmp_path / name, extra)
        read = weights.read_torch_state_dict(tmp_path / name)
        assert set(read) == set(extra), name
        for k, v in extra.items():
            assert read[k].dtype == v.dtype and read[k].shape == v.shape, (name, k)
            np.testing.assert_array_equal(read[k], v)
    # Converted and loaded, the network computes exactly what the original weights compute.
    npz = inception.convert(tmp_path / "zip.pth", tmp_path / "converted.npz", check_sha256=False)
    net = inception.load(npz)
    np.testing.assert_array_equal(np.asarray(net(images)), np.asarray(reference_net(images)))
    assert inception.to_torch_state_dict(net).keys() == torch_weights.keys()


def test_strided_tensors_in_shared_storage(tmp_path):
    base = np.arange(30, dtype=np.float32)
    st = _Storage("shared", base)
    view = _Tensor(st, 3, (4, 6), (1, 4))     # a transposed 6x4 block starting at element 3
    pth = tmp_path / "views.pth"
    write_pth_zip(pth, {}, extra_tensors=[("v", view, st)])
    got = weights.read_torch_state_dict(pth)["v"]
    np.testing.assert_array_equal(got, base[3:27].reshape(6, 4).T)
    bad = _Tensor(_Storage("small", np.zeros(4, np.float32)), 0, (3, 3), (3, 1))
    write_pth_zip(pth, {}, extra_tensors=[("bad", bad, bad.storage)])
    with pytest.raises(ValueError, match="runs past its storage"):
        weights.read_torch_state_dict(pth)


def test_conversion_rejects_wrong_files(torch_weights, tmp_path):
    missing = dict(torch_weights)
    del missing["Mixed_6c.branch7x7dbl_3.conv.weight"]
    write_pth_zip(tmp_path / "missing.pth", missing)
    with pytest.raises(KeyError, match="Mixed_6c.branch7x7dbl_3.conv.weight"):
        inception.convert(tmp_path / "missing.pth", tmp_path / "x.npz", check_sha256=False)
    swapped = dict(torch_weights)
    swapped["Mixed_6b.branch7x7_2.conv.weight"] = swapped["Mixed_6b.branch7x7_2.conv.weight"].transpose(0, 1, 3, 2)
    write_pth_zip(tmp_path / "swapped.pth", swapped)
    with pytest.raises(ValueError, match="Mixed_6b.branch7x7_2.conv.weight"):
        inception.convert(tmp_path / "swapped.pth", tmp_path / "x.npz", check_sha256=False)
    # Without the opt-out, a file that is not the published one fails its checksum.
    with pytest.raises(ValueError, match="SHA-256 .*6726825d"):
        inception.load(tmp_path / "swapped.pth")


def test_missing_weights_name_the_file_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SID2VIDEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SID2VIDEO_FID_WEIGHTS", raising=False)
    for call in (lambda: inception.load(), lambda: inception.load(tmp_path / inception.WEIGHTS_FILE)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value)
        assert "https://github.com/mseitzer/pytorch-fid/releases" in str(err.value)


def test_torch_pickle_is_restricted(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        weights.read_torch_state_dict(path)
    assert not marker.exists()
