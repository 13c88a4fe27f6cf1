"""`ecgfm import`: each published format, built in its own framework, gives the same outputs.

For every format the original architecture (`benchmarks/originals/`, copied from its
repository) is built with random weights, randomised BatchNorm statistics where it has
BatchNorm, saved the way its repository saves it, imported, and run on the same input:
embeddings and the original head's outputs must agree to 1e-4 relative to the largest
magnitude (float32 on both sides; observed ~1e-7 to 1e-6). Small widths and inputs keep each
test to seconds. Needs the `test` extra's torch and keras (skipped without them).
"""

import importlib
import json
import os
import pathlib
import sys
import zipfile

import numpy as np
import pytest

import ecgfm
from ecgfm.interop import (
    CheckpointKeyError,
    UnsafeCheckpointError,
    import_checkpoint,
    read_torch_checkpoint,
)

torch = pytest.importorskip("torch")
ORIGINALS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "originals"
RTOL = 1e-4  # of the largest magnitude; float32 in both frameworks


def _original(name: str):
    if str(ORIGINALS) not in sys.path:
        sys.path.insert(0, str(ORIGINALS))
    return importlib.import_module(name)


def _close(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    assert error <= RTOL, f"relative error {error:.2e} > {RTOL}"
    return error


def _randomise_batch_norm(model) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            for tensor, low, high in (
                (module.weight.data, 0.5, 1.5),
                (module.bias.data, -0.5, 0.5),
                (module.running_mean, -0.5, 0.5),
                (module.running_var, 0.5, 1.5),
            ):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def _signal(batch: int, length: int, leads: int = 12) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, length, leads)).astype(np.float32)


def _offset_signal(batch: int, length: int) -> np.ndarray:
    """Small swings on a 5 mV offset: a norm computing the variance as E[x²] - E[x]² (Flax's
    default) is off by ~6e-4 relative here, PyTorch's mean((x - mean)²) by ~1e-5."""
    return _signal(batch, length) * 0.1 + 5.0


# ---------------------------------------------------------------------- Ribeiro (PyTorch)


def _ribeiro_torch_model():
    resnet = _original("ribeiro_torch")
    torch.manual_seed(0)
    model = resnet.ResNet1d(
        (12, 256),
        list(zip([8, 16, 24], [256, 64, 16], strict=True)),
        3,
        kernel_size=17,
        dropout_rate=0.8,
    )
    _randomise_batch_norm(model)
    return model.eval()


def _save_like_ecg_age_prediction(model, folder: pathlib.Path) -> pathlib.Path:
    """As ecg-age-prediction's train.py: a numpy valid_loss and the optimizer's state too."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(model.parameters(), 0.001)
    torch.save(
        {
            "epoch": 3,
            "model": model.state_dict(),
            "valid_loss": np.float64(2.5),
            "optimizer": optimizer.state_dict(),
        },
        folder / "model.pth",
    )
    config = {
        "seq_length": 256,
        "net_filter_size": [8, 16, 24],
        "net_seq_lengh": [256, 64, 16],
        "kernel_size": 17,
        "dropout_rate": 0.8,
        "sample_freq": 400,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_ribeiro_torch_port_matches_the_original(tmp_path):
    model = _ribeiro_torch_model()
    out = import_checkpoint(
        "ribeiro_torch", _save_like_ecg_age_prediction(model, tmp_path / "run"), tmp_path / "enc"
    )
    signal = _signal(2, 256)
    captured = {}
    model.res_blocks[-1].register_forward_hook(lambda m, i, o: captured.update(x=o[0]))
    with torch.no_grad():
        logits = model(torch.from_numpy(signal).transpose(1, 2)).numpy()
    encoder = ecgfm.load_encoder(out)
    _close(encoder(signal, 400), captured["x"].mean(-1).numpy())
    _close(encoder.features(signal, 400), captured["x"].transpose(1, 2).numpy())
    _close(encoder.predict(signal, 400), logits)
    spec = encoder.config
    assert spec["hparams"]["downsample"] == [1, 4, 4]  # ResNet1d's extra full-length block
    assert spec["hparams"]["padding"] == "symmetric" and not spec["hparams"]["stem_activation"]
    assert "MIT" in spec["license"]


def test_torch_checkpoints_are_read_without_running_code(tmp_path):
    path = _save_like_ecg_age_prediction(_ribeiro_torch_model(), tmp_path) / "model.pth"
    checkpoint = read_torch_checkpoint(path)
    assert checkpoint["epoch"] == 3 and float(checkpoint["valid_loss"]) == 2.5
    reference = torch.load(path, weights_only=False)["model"]
    for key, tensor in reference.items():
        np.testing.assert_array_equal(checkpoint["model"][key], tensor.numpy())

    class Payload:  # what a malicious checkpoint pickles: a callable run on load
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"model": {"w": torch.zeros(2)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        read_torch_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_a_mismatched_state_dict_lists_every_bad_key(tmp_path):
    model = _ribeiro_torch_model()
    folder = _save_like_ecg_age_prediction(model, tmp_path / "run")
    state = model.state_dict()
    del state["resblock1d_1.conv2.weight"]
    state["resblock1d_0.extra.weight"] = torch.zeros(3)
    state["resblock1d_2.bn1.weight"] = torch.zeros(5)
    torch.save({"model": state}, folder / "model.pth")
    with pytest.raises(CheckpointKeyError) as error:
        import_checkpoint("ribeiro_torch", folder, tmp_path / "enc")
    message = str(error.value)
    assert "missing keys (1): resblock1d_1.conv2.weight" in message
    assert "unexpected keys (1): resblock1d_0.extra.weight" in message
    assert "mis-shaped: resblock1d_2.bn1.weight is [5], expected [24]" in message
    assert not (tmp_path / "enc").exists()


# ------------------------------------------------------------------------ Ribeiro (Keras)


def _keras_model():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("Keras runs on another backend in this session")
    keras.utils.set_random_seed(0)
    model = _original("ribeiro_keras").build_model(input_length=256, widths=(8, 16, 24))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shapes[0]),
                    rng.uniform(-0.5, 0.5, shapes[1]),
                    rng.uniform(-0.5, 0.5, shapes[2]),
                    rng.uniform(0.5, 1.5, shapes[3]),
                ]
            )
    return keras, model


def _as_keras2_file(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Rewrite a Keras 3 legacy-HDF5 model in the exact layout Keras 2.2.4 wrote model.hdf5 in:
    layer names counted from 1 (`conv1d_1`), weights named `<layer>/<weight>:0`, Keras-2
    `inbound_nodes` lists, `batch_input_shape`, and `keras_version` 2.2.4."""
    import h5py

    with h5py.File(src, "r") as f:
        config = json.loads(f.attrs["model_config"])
        weights = f["model_weights"]
        layer_names = [
            n.decode() if isinstance(n, bytes) else n for n in weights.attrs["layer_names"]
        ]
        counters: dict[str, int] = {}
        rename = {}
        for layer in config["config"]["layers"]:
            base = layer["name"].rstrip("0123456789").rstrip("_") or layer["name"]
            counters[base] = counters.get(base, 0) + 1
            rename[layer["name"]] = f"{base}_{counters[base]}"
        for layer in config["config"]["layers"]:
            names = [
                node["config"]["keras_history"][0]
                for entry in layer["inbound_nodes"]
                for arg in entry["args"]
                for node in (arg if isinstance(arg, list) else [arg])
            ]
            layer["inbound_nodes"] = [[[rename[n], 0, 0, {}] for n in names]] if names else []
            layer["name"] = layer["config"]["name"] = rename[layer["name"]]
            if "batch_shape" in layer["config"]:
                layer["config"]["batch_input_shape"] = layer["config"].pop("batch_shape")
        config["class_name"] = "Model"
        with h5py.File(dst, "w") as g:
            g.attrs["keras_version"] = b"2.2.4"
            g.attrs["backend"] = b"tensorflow"
            g.attrs["model_config"] = json.dumps(config).encode()
            g.attrs["training_config"] = b'{"loss": "binary_crossentropy"}'
            out = g.create_group("model_weights")
            out.attrs["layer_names"] = [rename[n].encode() for n in layer_names]
            out.attrs["keras_version"] = b"2.2.4"
            out.attrs["backend"] = b"tensorflow"
            for name in layer_names:
                group = out.create_group(rename[name])
                names = []
                for raw in weights[name].attrs["weight_names"]:
                    weight = raw.decode() if isinstance(raw, bytes) else raw
                    new = f"{rename[name]}/{weight.split('/')[-1]}:0"
                    group.create_dataset(new, data=np.asarray(weights[name][weight]))
                    names.append(new.encode())
                group.attrs["weight_names"] = names


@pytest.mark.parametrize("layout", ["keras3_legacy_h5", "keras2_model_hdf5"])
def test_ribeiro_keras_matches_the_original(tmp_path, layout):
    keras, model = _keras_model()
    model.save(tmp_path / "model.h5")  # Keras 3 writes the legacy HDF5 layout for .h5
    src = tmp_path / "model.hdf5"
    if layout == "keras2_model_hdf5":
        _as_keras2_file(tmp_path / "model.h5", src)
    else:
        (tmp_path / "model.h5").rename(src)
    out = import_checkpoint("ribeiro_keras", src, tmp_path / "enc")
    signal = _signal(2, 256)
    features = np.asarray(keras.Model(model.input, model.layers[-3].output)(signal))
    encoder = ecgfm.load_encoder(out)
    _close(encoder(signal, 400), features.mean(axis=1))
    _close(encoder.predict(signal, 400), np.asarray(model(signal)))
    card = (out / "README.md").read_text()
    assert "400 Hz" in card and "automatic-ecg-diagnosis" in card and "MIT" in card
    assert encoder.config["hparams"]["bn_epsilon"] == pytest.approx(1e-3)


# ------------------------------------------------------------------- ECGFounder (Net1D)


def _net1d(use_bn: bool):
    net1d = _original("net1d_torch")
    torch.manual_seed(0)
    model = net1d.ecgfounder_12lead(
        n_classes=5,
        base_filters=8,
        filter_list=[8, 16, 24],
        m_blocks_list=[2, 1, 2],
        kernel_size=7,
        groups_width=4,
        use_bn=use_bn,
    )
    if use_bn:
        _randomise_batch_norm(model)
    return model.eval()


@pytest.mark.parametrize("use_bn", [False, True])
def test_ecgfounder_net1d_matches_the_original(tmp_path, use_bn):
    model = _net1d(use_bn)
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "ecgfounder.pth")
    out = import_checkpoint("ecgfounder", tmp_path / "ecgfounder.pth", tmp_path / "enc")
    signal = _signal(2, 5000)  # 5000 → 2500 → 1250 → 625 → 313: the zero-padded max pool
    model.return_features = True
    with torch.no_grad():
        logits, features = (t.numpy() for t in model(torch.from_numpy(signal).transpose(1, 2)))
    encoder = ecgfm.load_encoder(out)
    assert encoder.config["hparams"]["use_bn"] is use_bn  # found from the BatchNorm arrays
    assert encoder.config["hparams"]["groups_width"] == 4
    _close(encoder.embed(signal, 500), features)
    _close(encoder.predict(signal, 500), 1 / (1 + np.exp(-logits)))
    assert encoder.preprocessing.normalization == "per_record_standardize"


# ------------------------------------------------------------------------------ ST-MEM


def _st_mem(num_classes=None):
    vit = _original("st_mem_torch")
    torch.manual_seed(0)
    model = vit.ST_MEM_ViT(
        seq_len=300,
        patch_size=25,
        num_leads=12,
        num_classes=num_classes,
        width=32,
        depth=2,
        mlp_dim=48,
        heads=2,
        dim_head=16,
    )
    return model.eval()


@pytest.mark.parametrize("with_head", [False, True])
def test_st_mem_matches_the_original(tmp_path, with_head):
    model = _st_mem(4 if with_head else None)
    torch.save({"model": model.state_dict(), "epoch": 0}, tmp_path / "st_mem.pth")
    out = import_checkpoint("st_mem", tmp_path / "st_mem.pth", tmp_path / "enc", dim_head=16)
    encoder = ecgfm.load_encoder(out)
    # The full window, a shorter one (the right SEP keeps pos[-1]), an offset one.
    for signal in (_signal(2, 300), _signal(2, 150), _offset_signal(2, 300)):
        with torch.no_grad():
            series = torch.from_numpy(signal).transpose(1, 2)
            embedding = model.forward_encoding(series).numpy()
            logits = model(series).numpy()
        assert encoder.config["preprocessing"]["num_samples"] == 300
        _close(np.asarray(encoder._run(encoder.module, signal).embedding_BD), embedding)
        if with_head:
            out_k = encoder.head(encoder._run(encoder.module, signal), train=False)
            _close(np.asarray(out_k), logits)
    assert encoder.config["hparams"]["heads"] == 2
    _close(
        encoder(_signal(1, 300), 250),
        model.forward_encoding(torch.from_numpy(_signal(1, 300)).transpose(1, 2)).detach().numpy(),
    )


def test_st_mem_pretraining_checkpoint_drops_the_decoder(tmp_path):
    model = _st_mem()
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state |= {"mask_embedding": torch.zeros(32), "decoder_blocks.0.weight": torch.zeros(2, 2)}
    torch.save({"model": state}, tmp_path / "pretrain.pth")
    out = import_checkpoint("st_mem", tmp_path / "pretrain.pth", tmp_path / "enc", dim_head=16)
    spec = json.loads((out / "ecgfm_encoder.json").read_text())
    assert "decoder_blocks.0.weight" in spec["source"]["keys read but unused"]
    assert "head" not in spec


def test_zip_checkpoint_without_torch_installed_layout(tmp_path):
    """The reader needs only the zip layout torch writes (no torch import inside ecgfm)."""
    model = _st_mem()
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with zipfile.ZipFile(tmp_path / "bare.pth") as archive:
        assert any(n.endswith("data.pkl") for n in archive.namelist())
    import ecgfm.interop.torch_file as torch_file

    assert "torch" not in torch_file.__dict__
    state = read_torch_checkpoint(tmp_path / "bare.pth")
    assert state["pos_embedding"].shape == (1, 14, 32)


# ------------------------------------------------------------------ HuBERT-ECG (HF folder)


def _randomise(model) -> None:
    """Every parameter perturbed, so that LayerNorm/GroupNorm affines are not 1 and 0."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _hubert_config(stable: bool = False, **extra):
    hubert = _original("hubert_ecg_torch")
    return hubert, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        conv_dim=[16] * 5, conv_kernel=[10, 3, 3, 2, 2], conv_stride=[4, 2, 2, 2, 2],
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=8,
        do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group",
        conv_bias=stable, **extra,
    )  # fmt: skip


def _leads_end_to_end(signal_BTC: np.ndarray):
    """HuBERT-ECG's dataset: each lead after the other, `reshape(-1)` of [leads, time]."""
    return torch.from_numpy(signal_BTC.transpose(0, 2, 1).reshape(len(signal_BTC), -1))


def _rename_to_weight_g_v(path: pathlib.Path) -> None:
    """The older naming of the weight-normalised position conv (transformers < 4.38 files)."""
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(path))
    for old, new in (("original0", "weight_g"), ("original1", "weight_v")):
        key = next(k for k in arrays if k.endswith(f"parametrizations.weight.{old}"))
        arrays[key.replace(f"parametrizations.weight.{old}", new)] = arrays.pop(key)
    save_file(arrays, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("variant", ["post_ln_group_norm", "pre_ln_layer_norm_weight_g_v"])
def test_hubert_ecg_matches_the_original(tmp_path, variant):
    stable = variant.startswith("pre_ln")
    hubert, config = _hubert_config(stable)
    torch.manual_seed(0)
    model = hubert.HuBERTECG(hubert.HuBERTECGConfig(vocab_sizes=[10], **config)).eval()
    _randomise(model)
    model.save_pretrained(tmp_path / "hf")
    if stable:
        _rename_to_weight_g_v(tmp_path / "hf" / "model.safetensors")
    out = import_checkpoint("hubert_ecg", tmp_path / "hf", tmp_path / "enc")
    encoder = ecgfm.load_encoder(out)
    # 5 s at 100 Hz per lead, as published; a shorter window; an offset one.
    for signal in (_signal(2, 500), _signal(2, 300), _offset_signal(2, 500)):
        length = signal.shape[1]
        with torch.no_grad():
            hidden = model(_leads_end_to_end(signal)).last_hidden_state.numpy()
        _close(np.asarray(encoder._run(encoder.module, signal).features_BND), hidden)
        if length == 500:  # the embedding: the mean over time the classifier reads
            _close(encoder(signal, 100), hidden.mean(1))
    spec = encoder.config
    assert spec["hparams"]["layer_norm_first"] is stable
    assert spec["preprocessing"]["normalization"] == "per_lead_min_max"
    assert "final_proj.0.weight" in spec["source"]["keys read but unused"]
    assert "CC BY-NC 4.0" in spec["license"] and "head" not in spec


def test_hubert_ecg_reads_a_pytorch_model_bin_beside_its_config(tmp_path):
    """Older Hub folders hold `pytorch_model.bin` (a torch.save'd state_dict) instead."""
    hubert, config = _hubert_config()
    torch.manual_seed(0)
    model = hubert.HuBERTECG(hubert.HuBERTECGConfig(vocab_sizes=[10], **config)).eval()
    _randomise(model)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    encoder = ecgfm.load_encoder(import_checkpoint("hubert_ecg", tmp_path / "hf", tmp_path / "e"))
    signal = _signal(2, 500)
    with torch.no_grad():
        hidden = model(_leads_end_to_end(signal)).last_hidden_state.numpy()
    _close(encoder(signal, 100), hidden.mean(1))
    assert "pytorch_model.bin" in encoder.config["source"]["file"]


def test_hubert_ecg_classifier_keeps_its_head_and_label_names(tmp_path):
    hubert, config = _hubert_config()
    names = ["AF", "RBBB", "LBBB"]
    classifier_config = hubert.HuBERTECGClassificationConfig(
        num_labels=3, id2label=dict(enumerate(names)), **config
    )
    torch.manual_seed(0)
    model = hubert.HuBERTECGForClassification(classifier_config).eval()
    _randomise(model)
    model.save_pretrained(tmp_path / "hf")
    shared = import_checkpoint("hubert_ecg", tmp_path / "hf", tmp_path / "e", layout="safetensors")
    assert "license: cc-by-nc-4.0\n" in (shared / "README.md").read_text()  # the Hub's tag
    encoder = ecgfm.load_encoder(shared)
    signal = _signal(2, 500)
    with torch.no_grad():
        logits = model(_leads_end_to_end(signal)).logits.numpy()
    _close(encoder.predict(signal, 100), 1 / (1 + np.exp(-logits)))  # multi_label: sigmoid
    assert encoder.config["label_names"] == names

    classifier_config.task_type = "regression"  # no activation on a regression head
    model.save_pretrained(tmp_path / "regression")
    regression = import_checkpoint("hubert_ecg", tmp_path / "regression", tmp_path / "r")
    _close(ecgfm.load_encoder(regression).predict(signal, 100), logits)

    classifier_config.task_type = "multi_label"
    classifier_config.classifier_hidden_size = 8  # the MLP head is refused, by its config
    hubert.HuBERTECGForClassification(classifier_config).save_pretrained(tmp_path / "mlp")
    with pytest.raises(ValueError, match=r"config.json: .*MLP or label-embedding head"):
        import_checkpoint("hubert_ecg", tmp_path / "mlp", tmp_path / "e2")
    classifier_config.classifier_hidden_size, classifier_config.use_label_embedding = None, True
    hubert.HuBERTECGForClassification(classifier_config).save_pretrained(tmp_path / "emb")
    config = json.loads((tmp_path / "emb" / "config.json").read_text())
    del config["use_label_embedding"]  # and without the flag, by its keys
    (tmp_path / "emb" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys \(1\): label_embedding.weight"):
        import_checkpoint("hubert_ecg", tmp_path / "emb", tmp_path / "e3")


# ------------------------------------------------------------- ECG-FM (fairseq-signals)


def _ecg_fm_configs(**changes):
    fairseq = _original("fairseq_signals_w2v")
    size = dict(
        encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=48,
        encoder_attention_heads=2, conv_feature_layers="[(16, 2, 2)] * 4", conv_pos=16,
        conv_pos_groups=4,
    )  # fmt: skip
    pretrained = fairseq.Wav2Vec2CMSCConfig(
        **size, final_dim=8, latent_vars=5, quantize_targets=True, apply_mask=True, **changes
    )
    return fairseq, pretrained, size


@pytest.mark.parametrize("variant", ["published", "pre_ln_layer_norm_parametrizations"])
def test_ecg_fm_pretrained_matches_the_original(tmp_path, variant):
    changes = {}
    if variant != "published":
        changes = dict(layer_norm_first=True, extractor_mode="layer_norm", conv_bias=True)
    fairseq, cfg, _ = _ecg_fm_configs(**changes)
    torch.manual_seed(0)
    model = fairseq.Wav2Vec2CMSCModel(cfg, legacy_weight_norm=variant == "published").eval()
    _randomise(model)
    path = tmp_path / "pretrained.pt"
    fairseq.save_like_fairseq_signals(model, path, fairseq.to_fairseq_dict(cfg, "wav2vec2_cmsc"))
    out = import_checkpoint("ecg_fm", path, tmp_path / "enc")
    encoder = ecgfm.load_encoder(out)
    # 5 s at 500 Hz, as published; a short window; an offset one.
    for signal in (_signal(2, 2500), _signal(2, 160), _offset_signal(2, 2500)):
        length = signal.shape[1]
        with torch.no_grad():
            features = model.extract_features(torch.from_numpy(signal).transpose(1, 2)).numpy()
        _close(np.asarray(encoder._run(encoder.module, signal).features_BND), features)
        if length == 2500:
            _close(encoder(signal, 500), features.mean(1))
    spec = encoder.config
    assert spec["hparams"]["layer_norm_first"] is (variant != "published")
    assert spec["hparams"]["conv_layers"] == [[16, 2, 2]] * 4
    unused = spec["source"]["keys read but unused"]
    assert "mask_emb" in unused and "quantizer.vars" in unused and "project_q.weight" in unused
    assert "MIT" in spec["license"] and "head" not in spec


def test_ecg_fm_finetuned_classifier_keeps_its_head_and_names_its_labels(tmp_path):
    from ecgfm.interop.ecg_fm import MIMIC_IV_ECG_LABELS

    fairseq, pretrained, size = _ecg_fm_configs()
    cfg = fairseq.ECGTransformerClassificationConfig(**size, num_labels=17)
    torch.manual_seed(0)
    model = fairseq.ECGTransformerClassificationModel.build_model(cfg, pretrained).eval()
    _randomise(model)
    path = tmp_path / "finetuned.pt"
    fairseq.save_like_fairseq_signals(
        model, path, fairseq.to_fairseq_dict(cfg, "ecg_transformer_classifier")
    )
    encoder = ecgfm.load_encoder(import_checkpoint("ecg_fm", path, tmp_path / "enc"))
    signal = _signal(2, 2500)
    with torch.no_grad():
        logits = model(torch.from_numpy(signal).transpose(1, 2)).numpy()
    _close(encoder.predict(signal, 500), 1 / (1 + np.exp(-logits)))
    assert tuple(encoder.config["label_names"]) == MIMIC_IV_ECG_LABELS

    # A bare state_dict has no config: the strides must be given, and then it imports.
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="conv_feature_layers"):
        import_checkpoint("ecg_fm", tmp_path / "bare.pt", tmp_path / "bare")
    architecture = {"conv_feature_layers": "[(16, 2, 2)] * 4", "heads": 2,
                    "layer_norm_first": False}  # fmt: skip
    bare = import_checkpoint("ecg_fm", tmp_path / "bare.pt", tmp_path / "bare", **architecture)
    _close(ecgfm.load_encoder(bare).predict(signal, 500), 1 / (1 + np.exp(-logits)))


def test_ecg_fm_fine_tuned_encoder_is_built_from_the_nested_pretrained_config(tmp_path):
    """fairseq-signals builds a fine-tuned classifier's encoder from the pre-trained model's
    config (`cfg.model.args`); the fine-tuning section keeps the defaults (here post-LN)."""
    fairseq, pretrained, size = _ecg_fm_configs(layer_norm_first=True)
    cfg = fairseq.ECGTransformerClassificationConfig(**size, num_labels=3)
    torch.manual_seed(0)
    model = fairseq.ECGTransformerClassificationModel.build_model(cfg, pretrained).eval()
    _randomise(model)
    cfg_model = fairseq.to_fairseq_dict(cfg, "ecg_transformer_classifier")
    cfg_model["args"] = {"model": fairseq.to_fairseq_dict(pretrained, "wav2vec2_cmsc")}
    fairseq.save_like_fairseq_signals(model, tmp_path / "ft.pt", cfg_model)
    encoder = ecgfm.load_encoder(import_checkpoint("ecg_fm", tmp_path / "ft.pt", tmp_path / "e"))
    assert encoder.config["hparams"]["layer_norm_first"] is True
    assert any("differ on layer_norm_first" in n for n in encoder.config["preprocessing_notes"])
    signal = _signal(2, 2500)
    with torch.no_grad():
        logits = model(torch.from_numpy(signal).transpose(1, 2)).numpy()
    _close(encoder.predict(signal, 500), 1 / (1 + np.exp(-logits)))


def test_ecg_fm_older_layout_and_damaged_weight_norm(tmp_path):
    """The ConvTransformer layout keeps the position conv at `encoder.pos_conv.0`; a magnitude
    g of the wrong shape is a key error naming it, not a silently broadcast kernel."""
    fairseq, cfg, _ = _ecg_fm_configs()
    torch.manual_seed(0)
    model = fairseq.Wav2Vec2CMSCModel(cfg).eval()
    _randomise(model)
    state = {k.replace("conv_pos.pos_conv.0", "encoder.pos_conv.0"): v
             for k, v in model.state_dict().items()}  # fmt: skip
    checkpoint = {"cfg": {"model": fairseq.to_fairseq_dict(cfg, "wav2vec2_cmsc")}, "model": state}
    torch.save(checkpoint, tmp_path / "old.pt")
    encoder = ecgfm.load_encoder(import_checkpoint("ecg_fm", tmp_path / "old.pt", tmp_path / "e"))
    signal = _signal(2, 320)
    with torch.no_grad():
        features = model.extract_features(torch.from_numpy(signal).transpose(1, 2)).numpy()
    _close(np.asarray(encoder._run(encoder.module, signal).features_BND), features)

    state["encoder.pos_conv.0.weight_g"] = torch.ones(32, 1, 1)  # weight norm over dim 0
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match=r"encoder.pos_conv.0.weight_g is \[32, 1, 1\]"):
        import_checkpoint("ecg_fm", tmp_path / "bad.pt", tmp_path / "bad")


def test_ecg_fm_conv_spec_is_parsed_without_eval():
    from ecgfm.interop.ecg_fm import parse_conv_layers

    assert parse_conv_layers("[(256, 2, 2)] * 4") == [(256, 2, 2)] * 4
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [
        (512, 10, 5), (512, 3, 2), (512, 3, 2)
    ]  # fmt: skip
    for hostile in (
        "[(1, 2, 3)] * 64 * 64 * 64 * 64",
        "[(1, 2, 3)] * 65",
        "__import__('os').system('true')",
        "[(1, 2)]",
        "[(1, 2, 3)] * 10**9",
        "[(1, 2, 3)] * 10**9**9",
    ):
        with pytest.raises(ValueError):
            parse_conv_layers(hostile)


def test_cli_imports_a_bare_ecg_fm_state_dict_with_its_options_and_refuses_broken_folders(
    tmp_path, capsys
):
    from ecgfm.cli import main

    fairseq, pretrained, size = _ecg_fm_configs()
    cfg = fairseq.ECGTransformerClassificationConfig(**size, num_labels=2)
    model = fairseq.ECGTransformerClassificationModel.build_model(cfg, pretrained)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    (tmp_path / "labels.txt").write_text("AF\nnormal\n")
    args = ["import", "ecg_fm", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "enc")]
    assert main(args) == 2
    assert "conv_feature_layers" in capsys.readouterr().err
    assert main([*args, "--heads", "2"]) == 2
    assert "conv_feature_layers, layer_norm_first" in capsys.readouterr().err
    architecture = ["--conv-feature-layers", "[(16, 2, 2)] * 4", "--heads", "2",
                    "--layer-norm-first", "false"]  # fmt: skip
    names = ["--label-names", str(tmp_path / "labels.txt")]
    assert main(["import", "st_mem", str(tmp_path / "bare.pt"), "--out", "x", *names]) == 2
    assert "--label-names does not apply to st_mem" in capsys.readouterr().err
    assert main([*args, *architecture, *names]) == 0
    assert main(["inspect", str(tmp_path / "enc")]) == 0
    shown = capsys.readouterr().out
    assert "licence: MIT" in shown and "500 Hz, 2500 samples" in shown
    assert ecgfm.load_encoder(tmp_path / "enc").config["label_names"] == ["AF", "normal"]

    (tmp_path / "hf").mkdir()  # a HF folder without config.json, then with a broken one
    assert main(["import", "hubert_ecg", str(tmp_path / "hf"), "--out", str(tmp_path / "h")]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "hf" / "config.json").write_text("{")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["import", "hubert_ecg", str(tmp_path / "hf"), "--out", str(tmp_path / "h")]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert main(["import", "hubert_ecg", str(tmp_path / "hf"), "--out", str(tmp_path / "h")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


# ------------------------------------------------------------------ CLI and HF layout


def test_cli_imports_inspects_and_shares_as_safetensors_bit_exactly(tmp_path, capsys):
    from safetensors.numpy import load_file

    from ecgfm.cli import main

    torch.save({"model": _st_mem(3).state_dict()}, tmp_path / "st_mem.pth")
    enc = tmp_path / "enc"
    assert main(["import", "st_mem", str(tmp_path / "st_mem.pth"), "--out", str(enc),
                 "--dim-head", "16"]) == 0  # fmt: skip
    assert main(["inspect", str(enc)]) == 0
    shown = capsys.readouterr().out
    assert "licence: MIT" in shown and "250 Hz, 300 samples" in shown
    assert "bakqui/ST-MEM" in shown and "low-pass 40 Hz" in shown

    hf = tmp_path / "hf"
    assert main(["export", "--encoder", str(enc), "--out", str(hf), "--format", "safetensors"]) == 0
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (hf / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ecgfm\nlicense: mit\n")
    assert "Preprocessing contract" in card and "upload_folder" in card
    arrays = load_file(str(hf / "model.safetensors"))
    assert (
        "encoder.params.blocks.0.to_qkv.kernel" in arrays and "head.params.dense.kernel" in arrays
    )

    original, shared = ecgfm.load_encoder(enc), ecgfm.load_encoder(hf)
    for a, b in zip(_leaves(original), _leaves(shared), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bit-exact
    signal = _signal(2, 300)
    np.testing.assert_array_equal(original(signal, 250), shared(signal, 250))
    np.testing.assert_array_equal(original.predict(signal, 250), shared.predict(signal, 250))
    assert main(["inspect", str(hf)]) == 0
    assert "licence: MIT" in capsys.readouterr().out


def _leaves(encoder) -> list[np.ndarray]:
    import jax
    from flax import nnx

    modules = [encoder.module] + ([encoder.head] if encoder.head is not None else [])
    return [np.asarray(x) for m in modules for x in jax.tree.leaves(nnx.state(m))]


def test_cli_import_reports_key_errors_plainly(tmp_path, capsys):
    from ecgfm.cli import main

    torch.save({"model": {"pos_embedding": torch.zeros(1, 4, 8)}}, tmp_path / "bad.pth")
    assert main(["import", "st_mem", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "ecgfm import:" in capsys.readouterr().err


def test_safetensors_folder_with_a_changed_array_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    torch.save({"model": _st_mem().state_dict()}, tmp_path / "st_mem.pth")
    hf = import_checkpoint("st_mem", tmp_path / "st_mem.pth", tmp_path / "hf", dim_head=16,
                           layout="safetensors")  # fmt: skip
    arrays = load_file(str(hf / "model.safetensors"))
    arrays["encoder.params.norm.scale"] = np.zeros(5, np.float32)
    del arrays["encoder.params.norm.bias"]
    save_file(arrays, str(hf / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match=r"missing keys \(1\): encoder.params.norm.bias"):
        ecgfm.load_encoder(hf)


def test_imported_families_train_with_ecgfm_optimiser():
    """Fine-tuning reads parameter names for weight decay: the originals' names are known."""
    from flax import nnx

    from ecgfm.models import build_model
    from ecgfm.optim import weight_decay_mask

    for name, hparams in [
        ("st_mem_vit", {"seq_len": 150, "patch_size": 25, "width": 16, "depth": 1,
                        "mlp_dim": 16, "heads": 2, "dim_head": 8}),
        ("net1d", {"base_filters": 8, "filter_list": [8], "m_blocks_list": [1],
                   "groups_width": 4, "use_bn": True}),
        ("wav2vec2", {"conv_layers": [[8, 2, 2]], "width": 8, "depth": 1, "heads": 2,
                      "mlp_dim": 8, "conv_pos": 4, "conv_pos_groups": 2}),
    ]:  # fmt: skip
        model = build_model(name, hparams, 3, rngs=nnx.Rngs(0))
        weight_decay_mask(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
