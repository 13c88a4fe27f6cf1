"""The encoders: parameter counts pinned to the papers, shapes, modes, jit and mixed precision.

Models are built and run under jit (one compilation each) to keep the file fast on 2 cores;
parameter counts use `nnx.eval_shape`, which allocates and compiles nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecgfm.models import (
    MODELS,
    Classifier,
    EncoderOutput,
    ModelSpec,
    RibeiroResNetConfig,
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


def build(name: str, config: dict, num_classes: int = 3, seed: int = 0) -> Classifier:
    return nnx.jit(lambda: build_model(name, config, num_classes, nnx.Rngs(seed)))()


def pure_forward(model: nnx.Module, *, train: bool, encoder_only: bool = False):
    """`(state, forward)`: forward(state, signal, key) → (output, new state), jitted."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, signal_BTC, key):
        model = nnx.merge(graphdef, state)
        module = model.encoder if encoder_only else model
        out = module(signal_BTC, train=train, rngs=nnx.Rngs(dropout=key))
        return out, nnx.state(model)

    return state, forward


def run(model: nnx.Module, signal_BTC: jax.Array, *, encoder_only: bool = False):
    state, forward = pure_forward(model, train=False, encoder_only=encoder_only)
    return forward(state, signal_BTC, jax.random.key(0))[0]


def abstract_forward(name: str, config: dict, shape: tuple[int, ...]) -> EncoderOutput:
    """Output shapes of the encoder, without allocating or compiling anything."""
    encoder = nnx.eval_shape(lambda: build_encoder(name, config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(encoder)
    return jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, train=False),
        state,
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )


@pytest.fixture(scope="module")
def tiny_ribeiro() -> Classifier:
    return build("ribeiro_resnet", TINY_RIBEIRO)


@pytest.fixture(scope="module")
def tiny_xresnet() -> Classifier:
    return build("xresnet1d", {"depth": 18}, num_classes=5)


@pytest.fixture(scope="module")
def tiny_vit() -> Classifier:
    return build("vit1d", {**TINY_VIT, "dropout": 0.1})


@pytest.mark.parametrize(("num_classes", "trainable"), [(6, 6_421_910), (66, 6_729_170)])
def test_ribeiro_resnet_has_the_papers_parameter_counts(num_classes, trainable):
    model = nnx.eval_shape(lambda: build_model("ribeiro_resnet", {}, num_classes, nnx.Rngs(0)))
    assert count(model, nnx.Param) == trainable
    assert count(model, nnx.BatchStat) == 3_728
    # The flatten head: 16 positions × 320 channels → one dense unit per class.
    assert count(model.head, nnx.Param) == (16 * 320 + 1) * num_classes


def test_ribeiro_resnet_downsamples_4096_samples_to_16_steps():
    out = abstract_forward("ribeiro_resnet", {}, (2, 4096, 12))
    assert out.features_BND.shape == (2, 16, 320)
    assert out.embedding_BD.shape == (2, 320)


def test_tiny_ribeiro_resnet_shapes_and_flatten_head_length_check(tiny_ribeiro):
    encoded = run(tiny_ribeiro, signal(2, 1024), encoder_only=True)
    assert encoded.features_BND.shape == (2, 1024 // 4**4, 32)
    np.testing.assert_allclose(encoded.embedding_BD, encoded.features_BND.mean(axis=1), rtol=1e-6)
    assert run(tiny_ribeiro, signal(2, 1024)).shape == (2, 3)
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
    ("depth", "layers", "expected"), [(50, [3, 4, 6, 3], 923_847), (101, [3, 4, 23, 3], 1_842_119)]
)
def test_xresnet1d_parameter_counts_match_the_ptbxl_benchmark(depth, layers, expected):
    # 71 classes: PTB-XL's "all" statements task.
    model = nnx.eval_shape(lambda: build_model("xresnet1d", {"depth": depth}, 71, nnx.Rngs(0)))
    assert count(model, nnx.Param) == xresnet1d_reference_count(layers, 71) == expected


def test_xresnet1d_shapes_and_concat_pooling(tiny_xresnet):
    # 250 samples (2.5 s at 100 Hz, the benchmark's crop) → stem /2 → max-pool /2 → /2 /2 /2.
    model = tiny_xresnet
    encoded = run(model, signal(2, 250), encoder_only=True)
    assert encoded.features_BND.shape == (2, 8, 64)
    expected = jnp.concatenate(
        [encoded.features_BND.max(axis=1), encoded.features_BND.mean(axis=1)], axis=-1
    )
    np.testing.assert_allclose(encoded.embedding_BD, expected, rtol=1e-6)
    assert run(model, signal(2, 250)).shape == (2, 5)

    deep = abstract_forward("xresnet1d", {"depth": 50}, (2, 1000, 12))
    assert deep.features_BND.shape == (2, 32, 256)
    assert deep.embedding_BD.shape == (2, 512)


@pytest.mark.parametrize(("position", "sep_tokens"), [("learned", False), ("sinusoidal", True)])
def test_vit1d_has_one_token_per_lead_and_patch(position, sep_tokens):
    config = {**TINY_VIT, "position": position, "sep_tokens": sep_tokens}
    out = abstract_forward("vit1d", config, (2, 250, 12))  # 10 patches of 25 samples per lead
    assert out.features_BND.shape == (2, 12 * 10, 32)
    assert out.embedding_BD.shape == (2, 32)


def test_vit1d_tokens_are_lead_major_patches(tiny_vit):
    x = signal(1, 250)
    # Change lead 3 in patch 2 (samples 50..74) only: exactly token 3·10 + 2 changes.
    changed = x.at[:, 50:75, 3].add(1.0)
    graphdef, state = nnx.split(tiny_vit.encoder)
    tokenize = jax.jit(lambda s, x: nnx.merge(graphdef, s).tokenize(x))
    differs = jnp.any(tokenize(state, x) != tokenize(state, changed), axis=-1)[0]
    assert np.flatnonzero(differs).tolist() == [32]


def test_vit1d_embeds_any_length(tiny_vit):
    # A trailing partial patch is left out: 260 samples are the 10 patches of 250.
    x = signal(1, 260)
    encoder = tiny_vit.encoder
    embed = nnx.jit(lambda e, x: e(x, train=False))
    np.testing.assert_allclose(
        embed(encoder, x).embedding_BD, embed(encoder, x[:, :250]).embedding_BD, rtol=1e-6
    )
    # Fewer patches take the first rows of the position table; more than max_patches (10)
    # take it interpolated, and the table's first and last rows stay where they were.
    assert embed(encoder, signal(1, 75)).features_BND.shape == (1, 12 * 3, 32)
    assert embed(encoder, signal(1, 500)).features_BND.shape == (1, 12 * 20, 32)
    positions = np.asarray(encoder.patch_positions(19))
    table = np.asarray(encoder._positions())
    np.testing.assert_allclose(positions[[0, -1]], table[[0, -1]], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shorter than one patch"):
        run(tiny_vit, signal(1, 20))
    with pytest.raises(ValueError, match="position"):
        ViT1dConfig(position="rotary")


@pytest.mark.parametrize(
    ("name", "head"),
    # Two fast cases cover both heads' shapes on conv and transformer features; the others
    # compile a larger graph per length and run with the slow tests.
    [pytest.param("ribeiro_resnet", "linear", marks=pytest.mark.slow),
     ("ribeiro_resnet", "attention"), ("vit1d", "attention"),
     pytest.param("xresnet1d", "attention", marks=pytest.mark.slow)],
)  # fmt: skip
def test_transfer_heads_take_any_input_length(name, head):
    # Ribeiro's flatten head is built for 1024 samples; the transfer heads take 2.5 s windows.
    tiny_xresnet = {"depth": 18, "stem_widths": (8, 8, 8), "widths": (8, 8, 8, 8)}
    config = {"ribeiro_resnet": TINY_RIBEIRO, "xresnet1d": tiny_xresnet, "vit1d": TINY_VIT}[name]
    spec = ModelSpec.create(name, config)
    model = nnx.jit(lambda: spec.build_classifier(3, nnx.Rngs(0), head=head))()
    for length in (250, 1000):
        assert run(model, signal(2, length)).shape == (2, 3)


def test_a_frozen_encoder_gets_no_gradient_and_keeps_its_statistics(tiny_ribeiro):
    model = ModelSpec.create("ribeiro_resnet", TINY_RIBEIRO).build_classifier(
        2, nnx.Rngs(0), head="attention", frozen=True
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        out = nnx.merge(graphdef, p, rest)(signal(4, 400), train=True)
        return jnp.sum(out**2)

    grads = jax.jit(jax.grad(loss))(params)  # one compilation: cheaper than eager backward
    encoder_grads = jax.tree.leaves(grads["encoder"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in encoder_grads)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["head"]))


def test_eval_is_deterministic_and_uses_running_statistics(tiny_ribeiro):
    state, forward = pure_forward(tiny_ribeiro, train=False)
    x = signal(4, 1024)
    first, _ = forward(state, x, jax.random.key(1))
    second, _ = forward(state, x, jax.random.key(2))
    np.testing.assert_array_equal(first, second)
    # Running statistics: a record's output does not depend on the rest of its batch.
    alone, _ = forward(state, x[:1], jax.random.key(1))
    np.testing.assert_allclose(alone[0], first[0], rtol=1e-5, atol=1e-6)


def test_train_mode_draws_dropout_from_the_given_key_and_updates_statistics(tiny_ribeiro):
    state, forward = pure_forward(tiny_ribeiro, train=True)
    x = signal(4, 1024)
    a, new_state = forward(state, x, jax.random.key(1))
    again, _ = forward(state, x, jax.random.key(1))
    b, _ = forward(state, x, jax.random.key(2))
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, b)
    old_stats = nnx.filter_state(state, nnx.BatchStat)
    new_stats = nnx.filter_state(new_state, nnx.BatchStat)
    changed = jax.tree.map(lambda u, v: bool(jnp.any(u != v)), old_stats, new_stats)
    assert all(jax.tree.leaves(changed))
    with pytest.raises(Exception, match="rngs"):
        graphdef = nnx.graphdef(tiny_ribeiro)
        jax.eval_shape(lambda s: nnx.merge(graphdef, s)(x, train=True), state)


def test_jitted_forward_over_split_state_equals_eager(tiny_ribeiro):
    x = signal(2, 1024)
    np.testing.assert_allclose(
        run(tiny_ribeiro, x), tiny_ribeiro(x, train=False), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("name", "config", "length", "built"),
    [
        ("ribeiro_resnet", TINY_RIBEIRO, 1024, "tiny_ribeiro"),
        ("vit1d", {**TINY_VIT, "dropout": 0.1}, 250, "tiny_vit"),
    ],
)
def test_bfloat16_compute_keeps_float32_parameters_and_close_outputs(
    name, config, length, built, request
):
    full = nnx.eval_shape(lambda: build_model(name, config, 3, nnx.Rngs(0)))
    mixed = nnx.eval_shape(
        lambda: build_model(name, {**config, "dtype": "bfloat16"}, 3, nnx.Rngs(0))
    )
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(mixed, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    # The same float32 parameters, computed once in float32 and once in bfloat16.
    params = nnx.state(request.getfixturevalue(built))
    graph_full, graph_mixed = nnx.graphdef(full), nnx.graphdef(mixed)

    @jax.jit
    def both(state, x):
        a = nnx.merge(graph_full, state).encoder(x, train=False)
        b = nnx.merge(graph_mixed, state).encoder(x, train=False)
        return a, b, nnx.merge(graph_mixed, state)(x, train=False)

    reference, approx, logits = both(params, signal(2, length))
    assert approx.features_BND.dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32
    ref, got = np.asarray(reference.embedding_BD), np.asarray(approx.embedding_BD, np.float32)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert not np.array_equal(got, ref)


def test_encoder_transfers_without_its_head(tiny_xresnet):
    encoder = nnx.eval_shape(lambda: build_encoder("xresnet1d", {"depth": 18}, rngs=nnx.Rngs(1)))
    assert "head" not in nnx.state(tiny_xresnet.encoder)
    nnx.update(encoder, nnx.state(tiny_xresnet.encoder))
    # Same graph and same values: the standalone encoder computes what the classifier's does.
    assert nnx.graphdef(encoder) == nnx.graphdef(tiny_xresnet.encoder)
    same = jax.tree.map(np.array_equal, nnx.state(encoder), nnx.state(tiny_xresnet.encoder))
    assert all(jax.tree.leaves(same))


def test_registry_builds_from_plain_dicts_and_rejects_unknown_names():
    assert set(MODELS) == {
        "ribeiro_resnet", "xresnet1d", "vit1d", "net1d", "st_mem_vit", "s4", "wav2vec2"
    }  # fmt: skip
    config = make_config("ribeiro_resnet", {"widths": [8, 16], "input_length": 64})
    assert config == RibeiroResNetConfig(widths=(8, 16), input_length=64)
    hash(config)  # frozen and hashable: it is static in the graph definition
    with pytest.raises(ValueError, match="unknown model"):
        make_config("resnet9000")
    with pytest.raises(ValueError, match=r"vit1d: unknown config key\(s\) model\.hparams\.widht"):
        make_config("vit1d", {"widht": 64})
    with pytest.raises(ValueError, match="depth"):
        make_config("xresnet1d", {"depth": 42})


def _num_params(name: str, hparams: dict) -> int:
    encoder = nnx.eval_shape(lambda: build_encoder(name, hparams, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(encoder, nnx.Param)))


def test_wav2vec2_defaults_are_ecg_fm_with_its_published_parameter_count():
    # ECG-FM's README: "90,883,072 parameters". Besides the encoder, the pre-training model
    # holds mask_emb (768), the quantizer (1·640·128 codewords + 256→640 projection),
    # project_q (256→256) and final_proj (768→256); the weight-normalised position conv
    # stores its 128 magnitudes g apart from the kernel ecgfm folds them into.
    pretraining_only = 768 + 640 * 128 + (256 * 640 + 640) + (256 * 256 + 256) + (768 * 256 + 256)
    assert _num_params("wav2vec2", {}) + 128 + pretraining_only == 90_883_072
    # HuBERT-ECG small (its config.json) is 30.21 M with the 128 magnitudes.
    small = {
        "input_layout": "leads_concatenated", "width": 512, "depth": 8, "heads": 8,
        "mlp_dim": 2048, "conv_layers": [[512, 10, 4], [512, 3, 2], [512, 3, 2], [512, 2, 2],
                                         [512, 2, 2]],
    }  # fmt: skip
    assert round((_num_params("wav2vec2", small) + 128) / 1e4) == 3021


def test_wav2vec2_takes_any_length_above_its_receptive_field_and_refuses_shorter():
    hparams = {"conv_layers": [[8, 10, 4], [8, 3, 2]], "width": 8, "depth": 1, "heads": 2,
               "mlp_dim": 8, "conv_pos": 4, "conv_pos_groups": 2}  # fmt: skip
    for layout, tokens in (("leads_as_channels", 11), ("leads_concatenated", 148)):
        encoder = build_encoder("wav2vec2", hparams | {"input_layout": layout}, rngs=nnx.Rngs(0))
        assert encoder.config.receptive_field == 10 + (3 - 1) * 4
        out = encoder(jnp.ones((2, 100, 12)), train=False)
        assert out.features_BND.shape == (2, tokens, 8) and out.embedding_BD.shape == (2, 8)
        with pytest.raises(ValueError, match="receptive field"):
            encoder(jnp.ones((2, 17, 12)), train=False)
    with pytest.raises(ValueError, match="conv_layers"):
        make_config("wav2vec2", {"conv_layers": [[8, 0, 2]]})
