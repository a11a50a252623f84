"""Loading the official checkpoint formats: round trips, shards, tokenizers, mask ids, refusals."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from tiny_checkpoints import tiny_config, tiny_state_dict, write_tiny_checkpoint  # noqa: E402

import infogain.models as models  # noqa: E402
from infogain.models import dream, llada, sdar  # noqa: E402

ARCHS = ["llada", "dream", "sdar"]


def seg(arch):
    return dict(gen_start=4, block_length=4) if arch == "sdar" else {}


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHS)
def test_load_save_load_round_trip(arch, tmp_path):
    path = write_tiny_checkpoint(arch, tmp_path / "a", seed=1)
    model, tokenizer = models.load(path)
    assert tokenizer is None
    assert model.config.arch == arch and model.config.vocab_size == 96 and model.config.mask_token_id == 95
    assert model.config.block_causal == (arch == "sdar")
    ids = torch.randint(0, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    models.save(model, tmp_path / "b")
    # the saved file carries exactly the official tensors, bit for bit
    original, saved = load_file(os.path.join(path, "model.safetensors")), load_file(tmp_path / "b" / "model.safetensors")
    assert sorted(original) == sorted(saved)
    assert all(torch.equal(original[k], saved[k]) for k in original)
    again, _ = models.load(tmp_path / "b")
    torch.testing.assert_close(again(ids, **seg(arch)), model(ids, **seg(arch)), atol=0, rtol=0)


@torch.no_grad()
def test_sharded_checkpoint_and_dtype(tmp_path):
    single, _ = models.load(write_tiny_checkpoint("dream", tmp_path / "one", seed=2))
    sharded, _ = models.load(write_tiny_checkpoint("dream", tmp_path / "three", seed=2, shards=3))
    ids = torch.randint(0, 90, (1, 8))
    torch.testing.assert_close(sharded(ids), single(ids), atol=0, rtol=0)
    bf16, _ = models.load(write_tiny_checkpoint("llada", tmp_path / "bf", dtype=torch.bfloat16))
    assert bf16.embed.weight.dtype == torch.bfloat16
    fp32, _ = models.load(tmp_path / "bf", dtype=torch.float32)
    assert fp32.lm_head_weight.dtype == torch.float32 and fp32(ids).dtype == torch.float32


@torch.no_grad()
def test_build_then_save_then_load(tmp_path):
    torch.manual_seed(0)
    model = models.build(tiny_config("llada"))
    models.save(model, tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["mask_token_id"] == 95
    loaded, _ = models.load(tmp_path)
    ids = torch.randint(0, 90, (1, 8))
    torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


def test_preset_configs_have_the_official_geometry():
    expected = {  # (layers, heads, kv heads, head dim, hidden, intermediate, vocab, theta, mask id)
        "llada-8b": (32, 32, 32, 128, 4096, 12288, 126464, 5e5, 126336),
        "dream-7b": (28, 28, 4, 128, 3584, 18944, 152064, 1e6, 151666),
        "sdar-8b": (36, 32, 8, 128, 4096, 12288, 151936, 1e6, 151669),
    }
    for name, want in expected.items():
        config = models.preset_config(name)
        model = models.build(config, dtype=torch.bfloat16, device="meta")
        s = model.spec
        got = (s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.hidden_size, s.intermediate_size,
               s.vocab_size, s.rope_theta, model.config.mask_token_id)
        assert got == want, name
        n_params = sum(p.numel() for p in model.parameters())
        assert 7.0e9 < n_params < 9.0e9, (name, n_params)
    config = models.preset_config("dream-7b")
    config["hidden_size"] = 1
    assert models.preset_config("dream-7b")["hidden_size"] == 3584, "presets must be copies"
    with pytest.raises(ValueError, match="name"):
        models.preset_config("llada-70b")


def test_architecture_routing():
    assert models.hub.architecture_of({"model_type": "llada"}) is llada
    assert models.hub.architecture_of({"architectures": ["LLaDAModelLM"]}) is llada
    assert models.hub.architecture_of({"model_type": "mmada"}) is llada
    assert models.hub.architecture_of({"model_type": "Dream"}) is dream
    assert models.hub.architecture_of({"model_type": "sdar"}) is sdar
    assert models.hub.architecture_of({"model_type": "trado"}) is sdar


# ----------------------------------------------------------------------------- mask ids and tokenizers

class FakeTokenizer:
    def __init__(self, vocab, mask_token_id=None):
        self.vocab, self.mask_token_id = vocab, mask_token_id

    def get_vocab(self):
        return dict(self.vocab)


def test_mask_id_search_order():
    big = 200000
    cfg = {"mask_token_id": 7}
    assert models.find_mask_token_id(llada, cfg, FakeTokenizer({}, 9), big) == 7
    assert models.find_mask_token_id(llada, {}, FakeTokenizer({}, 9), big) == 9
    assert models.find_mask_token_id(llada, {}, FakeTokenizer({"<|mdm_mask|>": 11}), big) == 11
    assert models.find_mask_token_id(dream, {}, FakeTokenizer({"<|mask|>": 12}), big) == 12
    assert models.find_mask_token_id(sdar, {}, FakeTokenizer({"<|MASK|>": 13}), big) == 13
    assert models.find_mask_token_id(llada, {}, None, big) == 126336
    assert models.find_mask_token_id(dream, {}, FakeTokenizer({}), big) == 151666
    assert models.find_mask_token_id(sdar, {}, None, big) == 151669
    with pytest.raises(ValueError, match="mask_token_id"):
        models.find_mask_token_id(llada, {"mask_token_id": 500}, None, 96)
    with pytest.raises(ValueError, match="mask_token_id"):
        models.find_mask_token_id(llada, {}, None, 96)   # official id outside a tiny vocabulary


def _write_tokenizer(path, vocab):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)


def test_tokenizer_loaded_and_undeclared_mask_found_in_vocab(tmp_path):
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "hello": 2, "world": 3, "<|mdm_mask|>": 94}
    path = write_tiny_checkpoint("llada", tmp_path, mask_token_id=None)
    _write_tokenizer(path, vocab)
    model, tokenizer = models.load(path)
    assert tokenizer is not None and tokenizer.mask_token_id is None
    assert tokenizer("hello world")["input_ids"] == [2, 3]
    assert model.config.mask_token_id == 94


# ----------------------------------------------------------------------------- refusals

def _rewrite_weights(path, change):
    file = os.path.join(path, "model.safetensors")
    state = load_file(file)
    change(state)
    save_file(state, file)


def test_missing_tensor_is_named(tmp_path):
    path = write_tiny_checkpoint("dream", tmp_path)
    _rewrite_weights(path, lambda s: s.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        models.load(path)


def test_extra_tensor_is_named(tmp_path):
    path = write_tiny_checkpoint("sdar", tmp_path)
    _rewrite_weights(path, lambda s: s.__setitem__("model.layers.0.self_attn.rotary.inv_freq", torch.ones(8)))
    with pytest.raises(ValueError, match=r"unexpected.*rotary\.inv_freq"):
        models.load(path)


def test_wrong_shape_is_named(tmp_path):
    path = write_tiny_checkpoint("llada", tmp_path)
    _rewrite_weights(path, lambda s: s.__setitem__("model.transformer.blocks.0.up_proj.weight", torch.ones(40, 32)))
    with pytest.raises(ValueError, match=r"model\.transformer\.blocks\.0\.up_proj\.weight.*\(40, 32\)"):
        models.load(path)


def test_config_that_does_not_match_the_weights(tmp_path):
    path = write_tiny_checkpoint("sdar", tmp_path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["num_hidden_layers"] = 2   # the weights have 3 layers
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.2\."):
        models.load(path)


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": None}, "d_model"),
    ({"n_heads": 5}, "n_heads"),
    ({"n_layers": 0}, "n_layers"),
    ({"rope_theta": "big"}, "rope_theta"),
    ({"block_type": "sequential"}, "block_type"),
    ({"alibi": True}, "alibi"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "architecture"),
    ({"mask_token_id": 4000}, "mask_token_id"),
])
def test_bad_config_is_rejected(tmp_path, overrides, message):
    path = write_tiny_checkpoint("llada", tmp_path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(tiny_config("llada", **overrides), f)
    with pytest.raises(ValueError, match=message):
        models.load(path)


def test_unreadable_config_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        models.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.json"):
        models.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="valid JSON"):
        models.load(tmp_path)
    with pytest.raises(TypeError, match="path"):
        models.load(3)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    path = write_tiny_checkpoint("llada", tmp_path)
    os.remove(os.path.join(path, "model.safetensors"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        models.load(path)


def test_bad_shard_index(tmp_path):
    path = write_tiny_checkpoint("dream", tmp_path, shards=2)
    index = os.path.join(path, "model.safetensors.index.json")
    with open(index) as f:
        data = json.load(f)
    key = sorted(data["weight_map"])[0]
    data["weight_map"][key] = "../elsewhere.safetensors"
    with open(index, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="invalid file name"):
        models.load(path)
    os.remove(os.path.join(path, "model-00002-of-00002.safetensors"))
    data["weight_map"][key] = "model-00001-of-00002.safetensors"
    with open(index, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="missing"):
        models.load(path)


def test_build_and_save_validate_arguments(tmp_path):
    with pytest.raises(TypeError, match="config"):
        models.build("llada")
    with pytest.raises(TypeError, match="dtype"):
        models.build(tiny_config("llada"), dtype=torch.int32)
    with pytest.raises(TypeError, match="model"):
        models.save(object(), tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_loading_with_a_tokenizer_is_silent(arch, tmp_path, capfd):
    """No transformers warning ("model of type llada to instantiate a model of type ''", Dream's
    rope_scaling FutureWarning) reaches the user's output."""
    import shutil
    import warnings

    from infogain.models import toy_model_path

    path = write_tiny_checkpoint(arch, tmp_path / arch)
    for name in os.listdir(toy_model_path()):
        if name.startswith("tokenizer"):
            shutil.copy(os.path.join(toy_model_path(), name), path)
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tokenizer = models.load(path)
    assert tokenizer is not None and tokenizer.mask_token is not None
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
