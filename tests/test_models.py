"""The encoders: parameter counts pinned to the papers, shapes, modes, jit and mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecgfm.models import (
    MODELS,
    Classifier,
    RibeiroResNetConfig,
    EncoderOutput,
    ViT1dConfig,
    build_encoder,
    build_model,
    make_config,
)

TINY_RIBEIRO = {"widths": (8, 16, 16, 32, 32), "input_length": 1024}
TINY_VIT = {"patch_size": 25, "width": 32, "depth": 2, "num_heads": 4, "max_patches": 10}


def count(model: nnx.Module, kind: type) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, kind)))


def signal(batch: int, length: int, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, length, 12))


def jitted_forward(model: nnx.Module, *, train: bool = False):
    """A pure function of (state, signal) as a training step would jit it."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, signal_BTC, key):
        model = nnx.merge(graphdef, state)
        out = model(signal_BTC, train=train, rngs=nnx.Rngs(dropout=key))
        return out, nnx.state(model)

    return state, forward


@pytest.mark.parametrize(("num_classes", "trainable"), [(6, 6_421_910), (66, 6_729_170)])
def test_ribeiro_resnet_has_the_papers_parameter_counts(num_classes, trainable):
    model = nnx.eval_shape(lambda: build_model("ribeiro_resnet", {}, num_classes, nnx.Rngs(0)))
    assert count(model, nnx.Param) == trainable
    assert count(model, nnx.BatchStat) == 3_728
    # The flatten head: 16 positions × 320 channels → one dense unit per class.
    head = count(model.head, nnx.Param)
    assert head == (16 * 320 + 1) * num_classes


def test_ribeiro_resnet_downsamples_4096_samples_to_16_steps():
    model = nnx.eval_shape(lambda: build_encoder("ribeiro_resnet", {}, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, train=False),
        state,
        jax.ShapeDtypeStruct((2, 4096, 12), jnp.float32),
    )
    assert out.features_BND.shape == (2, 16, 320)
    assert out.embedding_BD.shape == (2, 320)


@pytest.fixture(scope="module")
def tiny_ribeiro() -> Classifier:
    return build_model("ribeiro_resnet", TINY_RIBEIRO, 3, nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny_vit() -> Classifier:
    return build_model("vit1d", {**TINY_VIT, "dropout": 0.1}, 3, nnx.Rngs(0))


def test_tiny_ribeiro_resnet_shapes_and_flatten_head_length_check(tiny_ribeiro):
    x = signal(2, 1024)
    encoded = tiny_ribeiro.encoder(x, train=False)
    assert encoded.features_BND.shape == (2, 1024 // 4**4, 32)
    np.testing.assert_allclose(encoded.embedding_BD, encoded.features_BND.mean(axis=1), rtol=1e-6)
    assert tiny_ribeiro(x, train=False).shape == (2, 3)
    longer = EncoderOutput(jnp.zeros((2, 8, 32)), jnp.zeros((2, 32)))  # from 2048 samples
    with pytest.raises(ValueError, match="input length"):
        tiny_ribeiro.head(longer, train=False)


def xresnet1d_reference_count(layers: list[int], num_classes: int, leads: int = 12) -> int:
    """Parameters of the PTB-XL benchmark's PyTorch xresnet1d (expansion 4), counted by hand.

    Stem convs 12→32→32→64 (k=5) + BN; blocks conv1x1 in→64, conv5 64→64, conv1x1 64→256, each
    with BN, and a conv1x1 + BN skip only where in ≠ 256 (the very first block); head
    BN(512) + Linear(512, K).
    """
    bn = 2  # scale and bias per channel
    stem = (leads * 32 + 32 * 32 + 32 * 64) * 5 + bn * (32 + 32 + 64)
    body = 64 * 64 * 5 + 64 * 256 + bn * (64 + 64 + 256)  # all but the first conv's weights
    first_block = 64 * 64 + body + 64 * 256 + bn * 256
    block = 256 * 64 + body
    head = bn * 512 + 512 * num_classes + num_classes
    return stem + first_block + (sum(layers) - 1) * block + head


@pytest.mark.parametrize(
    ("depth", "layers", "published"), [(50, [3, 4, 6, 3], 923_847), (101, [3, 4, 23, 3], 1_842_119)]
)
def test_xresnet1d_parameter_counts_match_the_ptbxl_benchmark(depth, layers, published):
    # 71 classes: PTB-XL's "all" statements task.
    model = nnx.eval_shape(lambda: build_model("xresnet1d", {"depth": depth}, 71, nnx.Rngs(0)))
    assert count(model, nnx.Param) == xresnet1d_reference_count(layers, 71) == published


def test_xresnet1d_shapes_and_concat_pooling():
    # 250 samples (2.5 s at 100 Hz, the benchmark's crop) → stem /2 → max-pool /2 → /2 /2 /2.
    model = build_model("xresnet1d", {"depth": 18}, 5, nnx.Rngs(0))
    x = signal(2, 250)
    encoded = model.encoder(x, train=False)
    assert encoded.features_BND.shape == (2, 8, 64)
    expected = jnp.concatenate(
        [encoded.features_BND.max(axis=1), encoded.features_BND.mean(axis=1)], axis=-1
    )
    np.testing.assert_allclose(encoded.embedding_BD, expected, rtol=1e-6)
    assert model(x, train=False).shape == (2, 5)

    deep = nnx.eval_shape(lambda: build_encoder("xresnet1d", {"depth": 50}, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(deep)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, train=False),
        state,
        jax.ShapeDtypeStruct((2, 1000, 12), jnp.float32),
    )
    assert out.features_BND.shape == (2, 32, 256)
    assert out.embedding_BD.shape == (2, 512)


@pytest.mark.parametrize(("position", "sep_tokens"), [("learned", False), ("sinusoidal", True)])
def test_vit1d_has_one_token_per_lead_and_patch(position, sep_tokens):
    config = {**TINY_VIT, "position": position, "sep_tokens": sep_tokens}
    model = build_model("vit1d", config, 4, nnx.Rngs(0))
    x = signal(2, 250)  # 10 patches of 25 samples per lead
    encoded = model.encoder(x, train=False)
    assert encoded.features_BND.shape == (2, 12 * 10, 32)
    assert encoded.embedding_BD.shape == (2, 32)
    assert model(x, train=False).shape == (2, 4)
    assert not jnp.allclose(encoded.features_BND[:, 0], encoded.features_BND[:, 10])


def test_vit1d_tokens_are_lead_major_patches(tiny_vit):
    model = tiny_vit.encoder
    x = signal(1, 250)
    # Change lead 3 in patch 2 (samples 50..74) only: exactly token 3·10 + 2 changes.
    changed = x.at[:, 50:75, 3].add(1.0)
    differs = jnp.any(model.tokenize(x) != model.tokenize(changed), axis=-1)[0]
    assert np.flatnonzero(differs).tolist() == [32]


def test_vit1d_rejects_lengths_that_do_not_fit(tiny_vit):
    model = tiny_vit.encoder
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model(signal(1, 260), train=False)
    with pytest.raises(ValueError, match="max_patches"):
        model(signal(1, 275), train=False)
    with pytest.raises(ValueError, match="position"):
        ViT1dConfig(position="rotary")


def test_eval_is_deterministic_and_uses_running_statistics(tiny_ribeiro):
    state, forward = jitted_forward(tiny_ribeiro, train=False)
    x = signal(4, 1024)
    first, _ = forward(state, x, jax.random.key(1))
    second, _ = forward(state, x, jax.random.key(2))
    np.testing.assert_array_equal(first, second)
    # Running statistics: a record's output does not depend on the rest of its batch.
    alone, _ = forward(state, x[:1], jax.random.key(1))
    np.testing.assert_allclose(alone[0], first[0], rtol=1e-5, atol=1e-6)


def test_train_mode_draws_dropout_from_the_given_key_and_updates_statistics(tiny_ribeiro):
    model = tiny_ribeiro
    state, forward = jitted_forward(model, train=True)
    x = signal(4, 1024)
    a, new_state = forward(state, x, jax.random.key(1))
    again, _ = forward(state, x, jax.random.key(1))
    b, _ = forward(state, x, jax.random.key(2))
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, b)
    old_mean = nnx.state(model, nnx.BatchStat)
    new_mean = nnx.filter_state(new_state, nnx.BatchStat)
    changed = jax.tree.map(lambda u, v: bool(jnp.any(u != v)), old_mean, new_mean)
    assert all(jax.tree.leaves(changed))
    with pytest.raises(Exception, match="rngs"):
        model(x, train=True)  # dropout needs a key


@pytest.mark.parametrize(("name", "length"), [("tiny_ribeiro", 1024), ("tiny_vit", 250)])
def test_jitted_forward_over_split_state_equals_eager(name, length, request):
    model = request.getfixturevalue(name)
    state, forward = jitted_forward(model, train=False)
    x = signal(2, length)
    jitted, _ = forward(state, x, jax.random.key(0))
    np.testing.assert_allclose(jitted, model(x, train=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "config", "length"),
    [("ribeiro_resnet", TINY_RIBEIRO, 1024), ("vit1d", TINY_VIT, 250)],
)
def test_bfloat16_compute_keeps_float32_parameters_and_close_outputs(name, config, length):
    full = build_model(name, config, 3, nnx.Rngs(0))
    mixed = build_model(name, {**config, "dtype": "bfloat16"}, 3, nnx.Rngs(0))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(mixed, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    x = signal(2, length)
    assert mixed.encoder(x, train=False).features_BND.dtype == jnp.bfloat16
    reference = np.asarray(full.encoder(x, train=False).embedding_BD)
    approx = np.asarray(mixed.encoder(x, train=False).embedding_BD, dtype=np.float32)
    assert np.abs(approx - reference).max() <= 0.05 * np.abs(reference).max()
    logits = mixed(x, train=False)
    assert logits.dtype == jnp.float32


def test_encoder_transfers_without_its_head():
    model = build_model("xresnet1d", {"depth": 18}, 5, nnx.Rngs(0))
    encoder = build_encoder("xresnet1d", {"depth": 18}, rngs=nnx.Rngs(1))
    nnx.update(encoder, nnx.state(model.encoder))
    x = signal(2, 250)
    np.testing.assert_array_equal(
        encoder(x, train=False).embedding_BD, model.encoder(x, train=False).embedding_BD
    )
    assert isinstance(model, Classifier)
    assert "head" not in nnx.state(model.encoder)


def test_registry_builds_from_plain_dicts_and_rejects_unknown_names():
    assert set(MODELS) == {"ribeiro_resnet", "xresnet1d", "vit1d"}
    config = make_config("ribeiro_resnet", {"widths": [8, 16], "input_length": 64})
    assert config == RibeiroResNetConfig(widths=(8, 16), input_length=64)
    hash(config)  # frozen and hashable: it is static in the graph definition
    with pytest.raises(ValueError, match="unknown model"):
        make_config("resnet9000")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        make_config("vit1d", {"widht": 64})
    with pytest.raises(ValueError, match="depth"):
        make_config("xresnet1d", {"depth": 42})
