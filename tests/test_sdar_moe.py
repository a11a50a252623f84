"""SDAR-MoE (sdar_moe) loads from official-format checkpoints, matches an independent forward with and
without its block-causal cache, and every sampler decodes it at batch 2 with ragged prompts.

The checkpoint is written here key by key from the official (Qwen3-MoE) names; the reference reads
those tensors by the same names and routes one token at a time: softmax over all experts, the k
largest, renormalised iff ``norm_topk_prob``; ``mlp_only_layers`` and ``decoder_sparse_step`` keep the
dense MLP. Its block-causal mask is SDAR's, written out: the prompt is one segment, then a segment
per generation block.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from infogain import models
from infogain.samplers import SAMPLERS, make_sampler
from infogain.samplers.naive import NaiveInfoGainSampler
from test_llada2_model import rms, write_checkpoint  # the official-format writer and RMSNorm of the LLaDA2 tests

TINY = {
    "architectures": ["SDARMoeForCausalLM"], "model_type": "sdar_moe", "vocab_size": 96, "hidden_size": 32,
    "intermediate_size": 40, "moe_intermediate_size": 16, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "num_experts": 8, "num_experts_per_tok": 3, "norm_topk_prob": True,
    "decoder_sparse_step": 1, "mlp_only_layers": [2], "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_scaling": None, "attention_bias": False, "tie_word_embeddings": False,
    "max_position_embeddings": 256, "mask_token_id": 90, "eos_token_id": 91, "pad_token_id": 91, "block_size": 4,
}
BLOCK = 4


def sparse(cfg, i):
    return i not in (cfg.get("mlp_only_layers") or []) and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0


def official_tensors(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    H, D, nh, nkv = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E, I, Ie = cfg["num_experts"], cfg["intermediate_size"], cfg["moe_intermediate_size"]
    t = {"model.embed_tokens.weight": rnd(cfg["vocab_size"], H, scale=1.0), "model.norm.weight": 1 + rnd(H)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rnd(cfg["vocab_size"], H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rnd(H)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(H)
        t[p + "self_attn.q_proj.weight"] = rnd(nh * D, H)
        t[p + "self_attn.k_proj.weight"] = rnd(nkv * D, H)
        t[p + "self_attn.v_proj.weight"] = rnd(nkv * D, H)
        t[p + "self_attn.o_proj.weight"] = rnd(H, nh * D)
        t[p + "self_attn.q_norm.weight"] = 1 + rnd(D)
        t[p + "self_attn.k_norm.weight"] = 1 + rnd(D)
        if not sparse(cfg, i):
            for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                t[f"{p}mlp.{proj}.weight"] = rnd(*shape)
            continue
        t[p + "mlp.gate.weight"] = rnd(E, H, scale=0.6)
        for e in range(E):
            for proj, shape in (("gate_proj", (Ie, H)), ("up_proj", (Ie, H)), ("down_proj", (H, Ie))):
                t[f"{p}mlp.experts.{e}.{proj}.weight"] = rnd(*shape)
    return t


# ----------------------------------------------------------------------------- the reference forward

def swiglu(x, gate, up, down):
    return down @ (F.silu(gate @ x) * (up @ x))


def route_one_token(x, gate_w, cfg):
    probs = torch.softmax(gate_w @ x, dim=-1)
    chosen = sorted(range(cfg["num_experts"]), key=lambda e: -probs[e].item())[:cfg["num_experts_per_tok"]]
    weights = probs[chosen]
    if cfg["norm_topk_prob"]:
        weights = weights / weights.sum()
    return chosen, weights


def reference_logits(t, cfg, ids, attention_mask, gen_start, block=BLOCK):
    """Logits [B, T, V] (float64): SDAR segments (prompt, then blocks from gen_start), left padding."""
    B, T = ids.shape
    D, nh, nkv, eps = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    t = {k: v.double() for k, v in t.items()}
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    out = torch.zeros(B, T, cfg["vocab_size"], dtype=torch.float64)
    cols = torch.arange(T)
    seg = torch.where(cols < gen_start, 0, 1 + (cols - gen_start) // block)
    for b in range(B):
        real = attention_mask[b]
        pos = (torch.cumsum(real.long(), 0) - 1).clamp_min(0)
        inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = pos.double()[:, None] * inv_freq[None]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

        def rope(v):
            return v * cos + torch.cat([-v[..., D // 2:], v[..., :D // 2]], -1) * sin

        allowed = (seg[None, :] <= seg[:, None]) & real[None, :]
        x = t["model.embed_tokens.weight"][ids[b]]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, t[p + "input_layernorm.weight"], eps)
            q = (h @ t[p + "self_attn.q_proj.weight"].T).view(T, nh, D).transpose(0, 1)
            k = (h @ t[p + "self_attn.k_proj.weight"].T).view(T, nkv, D).transpose(0, 1)
            v = (h @ t[p + "self_attn.v_proj.weight"].T).view(T, nkv, D).transpose(0, 1)
            q = rope(rms(q, t[p + "self_attn.q_norm.weight"], eps))
            k = rope(rms(k, t[p + "self_attn.k_norm.weight"], eps))
            k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
            att = (q @ k.transpose(1, 2)) / math.sqrt(D)
            att = att.masked_fill(~allowed[None], float("-inf")).softmax(-1).nan_to_num(0.0)
            x = x + (att @ v).transpose(0, 1).reshape(T, nh * D) @ t[p + "self_attn.o_proj.weight"].T
            h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
            rows = []
            for j in range(T):
                if not sparse(cfg, i):
                    rows.append(swiglu(h[j], *(t[f"{p}mlp.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj"))))
                    continue
                chosen, w = route_one_token(h[j], t[p + "mlp.gate.weight"], cfg)
                acc = torch.zeros_like(h[j])
                for e, we in zip(chosen, w):
                    acc = acc + we * swiglu(h[j], *(t[f"{p}mlp.experts.{e}.{n}.weight"]
                                                     for n in ("gate_proj", "up_proj", "down_proj")))
                rows.append(acc)
            x = x + torch.stack(rows)
        out[b] = rms(x, t["model.norm.weight"], eps) @ head.T
    return out


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def ragged(T=14):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 89, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :3] = False
    ids[1, :3] = TINY["pad_token_id"]
    return ids, mask


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tensors = official_tensors(TINY)
    return write_checkpoint(str(tmp_path_factory.mktemp("sdar_moe")), TINY, tensors), tensors


# ----------------------------------------------------------------------------- tests

def test_config_is_recognised_as_sdar_moe_not_dense_sdar():
    from infogain.models.hub import architecture_of

    assert architecture_of(TINY).NAME == "sdar_moe"
    assert architecture_of({"architectures": ["SDARForCausalLM"], "model_type": "sdar"}).NAME == "sdar"
    assert architecture_of(models.preset_config("sdar-moe-30b-a3b")).NAME == "sdar_moe"


def test_full_forward_matches_reference(checkpoint):
    path, tensors = checkpoint
    model, tokenizer = models.load(path)
    assert tokenizer is None and model.config.arch == "sdar_moe" and model.config.block_anchor == "prompt"
    assert [type(b.mlp).__name__ for b in model.blocks] == ["SparseMoE", "SparseMoE", "MLP", "SparseMoE"]
    ids, mask = ragged()
    with torch.no_grad():
        got = model(ids, mask, gen_start=6, block_length=BLOCK)
    ref = reference_logits(tensors, TINY, ids, mask, gen_start=6)
    real = mask[:, :, None].expand_as(got)
    assert max_err(got[real], ref[real]) <= 1e-4


def test_block_causal_cache_and_candidates_match_reference(checkpoint):
    path, tensors = checkpoint
    model, _ = models.load(path)
    ids, mask = ragged(6 + 3 * BLOCK)
    gen_start = 6
    ref = reference_logits(tensors, TINY, ids, mask, gen_start=gen_start)
    with torch.no_grad():
        logits, cache = model.prefill(ids, mask, mode="block_causal", start=gen_start, gen_start=gen_start,
                                      block_length=BLOCK)
        real = mask[:, :, None].expand_as(logits)
        assert max_err(logits[real], ref[real]) <= 1e-4
        for blk in range(2):
            s = gen_start + blk * BLOCK
            got = model.forward_window(ids[:, s:s + BLOCK], start=s, cache=cache, mode="block_causal", write=True)
            assert max_err(got, ref[:, s:s + BLOCK]) <= 1e-4
        s = gen_start + 2 * BLOCK
        cands = ids[:, s:].repeat_interleave(2, 0).clone()
        cands[1::2, 1] = 7
        rows = (0, 0, 1, 1)
        got = model.forward_window(cands, start=s, cache=cache, mode="block_causal", cache_rows=rows)
    for r, c in enumerate(rows):
        canvas = ids[c:c + 1].clone()
        canvas[0, s:] = cands[r]
        want = reference_logits(tensors, TINY, canvas, mask[c:c + 1], gen_start=gen_start)[0, s:]
        assert max_err(got[r], want) <= 1e-4


def test_unnormalised_routing_dense_steps_and_tied_head(tmp_path):
    cfg = dict(TINY, norm_topk_prob=None, decoder_sparse_step=2, mlp_only_layers=None, tie_word_embeddings=True,
               num_experts_per_tok=1)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    ref_cfg = dict(cfg, norm_topk_prob=False)   # Qwen3-MoE's default
    tensors = official_tensors(ref_cfg, seed=1)
    model, _ = models.load(write_checkpoint(str(tmp_path / "c"), cfg, tensors))
    assert [type(b.mlp).__name__ for b in model.blocks] == ["MLP", "SparseMoE", "MLP", "SparseMoE"]
    ids, mask = ragged()
    with torch.no_grad():
        got = model(ids, mask, gen_start=5, block_length=BLOCK)
    ref = reference_logits(tensors, ref_cfg, ids, mask, gen_start=5)
    real = mask[:, :, None].expand_as(got)
    assert max_err(got[real], ref[real]) <= 1e-4


def test_save_load_round_trip(checkpoint, tmp_path):
    path, _ = checkpoint
    model, _ = models.load(path)
    models.save(model, str(tmp_path / "copy"))
    again, _ = models.load(str(tmp_path / "copy"))
    ids, mask = ragged()
    with torch.no_grad():
        assert torch.equal(model(ids, mask, gen_start=6, block_length=BLOCK),
                           again(ids, mask, gen_start=6, block_length=BLOCK))


@pytest.mark.parametrize("change,match", [
    (lambda c, t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"), "missing"),
    (lambda c, t: t.__setitem__("model.layers.2.mlp.experts.0.up_proj.weight", torch.zeros(16, 32)), "unexpected"),
    (lambda c, t: t.__setitem__("model.layers.3.mlp.gate.weight", torch.zeros(3, 3)), "model.layers.3.mlp.gate.weight"),
    (lambda c, t: c.__setitem__("num_experts_per_tok", 9), "num_experts_per_tok"),
    (lambda c, t: c.__setitem__("mlp_only_layers", [7]), "mlp_only_layers"),
    (lambda c, t: c.__setitem__("attention_bias", True), "attention_bias"),
    (lambda c, t: c.pop("moe_intermediate_size"), "moe_intermediate_size"),
])
def test_bad_checkpoints_give_clear_errors(tmp_path, change, match):
    cfg, tensors = dict(TINY), official_tensors(TINY)
    change(cfg, tensors)
    path = write_checkpoint(str(tmp_path / "bad"), cfg, tensors)
    with pytest.raises(ValueError, match=match):
        models.load(path)


# ----------------------------------------------------------------------------- samplers

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny_checkpoints import write_tiny_checkpoint

    return models.load(write_tiny_checkpoint("sdar_moe", tmp_path_factory.mktemp("tiny_sdar_moe"), seed=2))[0]


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_decodes_with_the_exact_cache(model, name):
    kw = dict(gen_length=8, steps=4, block_length=BLOCK, seed=4, temperature=0.0)
    outputs = {cache: make_sampler(name, model).generate(PROMPTS, cache=cache, **kw).sequences
               for cache in ("none", "prefix")}
    assert outputs["none"].shape == (2, 8) and (outputs["none"] != model.config.mask_token_id).all()
    assert torch.equal(outputs["prefix"], outputs["none"])


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_fast_sampler_equals_naive_baseline(model, variant, cache):
    kw = dict(gen_length=8, steps=4, block_length=BLOCK, cache=cache, seed=3, temperature=0.0, variant=variant)
    fast = make_sampler("info_gain", model).generate(PROMPTS, **kw)
    naive = NaiveInfoGainSampler(model).generate(PROMPTS, **kw)
    assert torch.equal(fast.sequences, naive.sequences)
