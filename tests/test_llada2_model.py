"""LLaDA2.x (llada2_moe) loads from official-format checkpoints and matches an independent forward.

The checkpoints are written here key by key from the official names (not through ``models.save``),
and the reference forward below reads those tensors by the same official names. It is written for
clarity: one token at a time through the router, explicit group scores, an explicit block-causal
mask counted from position 0.
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from infogain import models

TINY = {
    "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "vocab_size": 96, "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "first_k_dense_replace": 1, "num_experts": 8, "num_experts_per_tok": 3, "n_group": 4,
    "topk_group": 2, "moe_intermediate_size": 16, "num_shared_experts": 1, "routed_scaling_factor": 2.5,
    "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "norm_topk_prob": True,
    "partial_rotary_factor": 0.5, "rope_theta": 600000, "rms_norm_eps": 1e-6, "use_qkv_bias": False,
    "use_bias": False, "tie_word_embeddings": False, "max_position_embeddings": 512, "mask_token_id": 90,
    "eos_token_id": 91, "pad_token_id": 91, "hidden_act": "silu",
}
BLOCK = 8


def official_tensors(cfg, seed=0):
    """Random weights under the official key names (expert biases large enough to move choices)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    H, D, nh, nkv = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E, I, Ie = cfg["num_experts"], cfg["intermediate_size"], cfg["moe_intermediate_size"]
    t = {"model.word_embeddings.weight": rnd(cfg["vocab_size"], H, scale=1.0),
         "model.norm.weight": 1 + rnd(H), "lm_head.weight": rnd(cfg["vocab_size"], H)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rnd(H)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(H)
        t[p + "attention.query_key_value.weight"] = rnd((nh + 2 * nkv) * D, H)
        if cfg["use_qkv_bias"]:
            t[p + "attention.query_key_value.bias"] = rnd((nh + 2 * nkv) * D)
        t[p + "attention.dense.weight"] = rnd(H, nh * D)
        if cfg["use_bias"]:
            t[p + "attention.dense.bias"] = rnd(H)
        t[p + "attention.query_layernorm.weight"] = 1 + rnd(D)
        t[p + "attention.key_layernorm.weight"] = 1 + rnd(D)
        if i < cfg["first_k_dense_replace"]:
            for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                t[f"{p}mlp.{proj}.weight"] = rnd(*shape)
            continue
        t[p + "mlp.gate.weight"] = rnd(E, H, scale=0.5)
        t[p + "mlp.gate.expert_bias"] = rnd(E, scale=0.3)
        for e in range(E):
            for proj, shape in (("gate_proj", (Ie, H)), ("up_proj", (Ie, H)), ("down_proj", (H, Ie))):
                t[f"{p}mlp.experts.{e}.{proj}.weight"] = rnd(*shape)
        for proj, shape in (("gate_proj", (Ie, H)), ("up_proj", (Ie, H)), ("down_proj", (H, Ie))):
            if cfg["num_shared_experts"]:
                t[f"{p}mlp.shared_experts.{proj}.weight"] = rnd(*shape)
    return t


def write_checkpoint(path, cfg, tensors):
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"))
    return path


# ----------------------------------------------------------------------------- the reference forward

def rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def route_one_token(x, gate_w, bias, cfg):
    """Experts and weights of one token, step by step as the official gate describes them."""
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    n_group, keep_groups = cfg["n_group"], cfg["topk_group"]
    scores = torch.sigmoid(gate_w @ x)                      # [E], unbiased
    biased = scores + bias
    per_group = E // n_group
    group_score = []
    for grp in range(n_group):
        members = sorted(biased[grp * per_group:(grp + 1) * per_group].tolist(), reverse=True)
        group_score.append(members[0] + members[1])
    kept = sorted(range(n_group), key=lambda grp: -group_score[grp])[:keep_groups]
    candidates = [e for e in range(E) if e // per_group in kept]
    chosen = sorted(candidates, key=lambda e: -biased[e].item())[:k]
    weights = scores[chosen]
    if k > 1:
        weights = weights / (weights.sum() + 1e-20)
    return chosen, weights * cfg["routed_scaling_factor"]


def swiglu(x, gate, up, down):
    return down @ (F.silu(gate @ x) * (up @ x))


def reference_logits(t, cfg, ids, attention_mask=None, block=BLOCK, choices=None):
    """Logits [B, T, V] (float64) of the official forward; ``choices`` collects (layer, row, pos) -> experts."""
    B, T = ids.shape
    H, D = cfg["hidden_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    rot = int(D * cfg["partial_rotary_factor"])
    t = {k: v.double() for k, v in t.items()}
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.bool)
    out = torch.zeros(B, T, cfg["vocab_size"], dtype=torch.float64)
    for b in range(B):
        real = attention_mask[b]
        pos = torch.cumsum(real.long(), 0) - 1
        x = t["model.word_embeddings.weight"][ids[b]]
        inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
        ang = pos.double()[:, None] * inv_freq[None]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

        def rope(v):   # v [heads, T, D]: rotate_half on the first `rot` dims
            r, keep = v[..., :rot], v[..., rot:]
            half = torch.cat([-r[..., rot // 2:], r[..., :rot // 2]], -1)
            return torch.cat([r * cos + half * sin, keep], -1)

        seg = torch.div(pos.clamp_min(0), block, rounding_mode="floor")
        allowed = (seg[None, :] <= seg[:, None]) & real[None, :]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, t[p + "input_layernorm.weight"], eps)
            qkv = h @ t[p + "attention.query_key_value.weight"].T + t.get(p + "attention.query_key_value.bias", 0.0)
            qkv = qkv.view(T, nh + 2 * nkv, D)
            q, k, v = qkv[:, :nh].transpose(0, 1), qkv[:, nh:nh + nkv].transpose(0, 1), qkv[:, nh + nkv:].transpose(0, 1)
            q = rope(rms(q, t[p + "attention.query_layernorm.weight"], eps))
            k = rope(rms(k, t[p + "attention.key_layernorm.weight"], eps))
            k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
            att = (q @ k.transpose(1, 2)) / math.sqrt(D)
            att = att.masked_fill(~allowed[None], float("-inf")).softmax(-1).nan_to_num(0.0)
            a = (att @ v).transpose(0, 1).reshape(T, nh * D) @ t[p + "attention.dense.weight"].T
            a = a + t.get(p + "attention.dense.bias", 0.0)
            x = x + a
            h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
            if i < cfg["first_k_dense_replace"]:
                y = torch.stack([swiglu(h[j], t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"],
                                        t[p + "mlp.down_proj.weight"]) for j in range(T)])
            else:
                rows = []
                for j in range(T):
                    chosen, w = route_one_token(h[j], t[p + "mlp.gate.weight"], t[p + "mlp.gate.expert_bias"], cfg)
                    if choices is not None and real[j]:
                        choices[(i, b, j)] = sorted(chosen)
                    acc = torch.zeros(H, dtype=torch.float64)
                    if p + "mlp.shared_experts.up_proj.weight" in t:
                        acc = swiglu(h[j], *(t[f"{p}mlp.shared_experts.{n}.weight"]
                                             for n in ("gate_proj", "up_proj", "down_proj")))
                    for e, we in zip(chosen, w):
                        acc = acc + we * swiglu(h[j], *(t[f"{p}mlp.experts.{e}.{n}.weight"]
                                                         for n in ("gate_proj", "up_proj", "down_proj")))
                    rows.append(acc)
                y = torch.stack(rows)
            x = x + y
        out[b] = rms(x, t["model.norm.weight"], eps) @ t["lm_head.weight"].T
    return out


# ----------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tensors = official_tensors(TINY)
    path = write_checkpoint(str(tmp_path_factory.mktemp("llada2")), TINY, tensors)
    return path, tensors


def ragged(T=21):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 89, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :5] = False                      # a left-padded row
    ids[1, :5] = TINY["pad_token_id"]
    return ids, mask


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def test_config_is_recognised_as_llada2_not_llada1():
    from infogain.models.hub import architecture_of

    assert architecture_of(TINY).NAME == "llada2"
    assert architecture_of({"architectures": ["LLaDAModelLM"]}).NAME == "llada"
    assert architecture_of(models.preset_config("llada2-mini")).NAME == "llada2"


def test_full_forward_matches_reference_and_router_choices(checkpoint):
    path, tensors = checkpoint
    model, _ = models.load(path)
    assert model.config.arch == "llada2" and model.config.block_anchor == "position"
    assert model.config.mask_token_id == 90 and model.config.eos_token_id == 91
    ids, mask = ragged()
    choices = {}
    ref = reference_logits(tensors, TINY, ids, mask, choices=choices)
    with torch.no_grad():
        got = model(ids, mask, block_length=BLOCK)
    real = mask[:, :, None].expand_as(got)
    assert max_err(got[real], ref[real]) <= 1e-4

    # The router's choices, read from the model's own routing, equal the reference's exactly.
    captured = {}

    def hook(layer):
        def fn(module, args, output):
            captured[layer] = args[0].reshape(-1, args[0].shape[-1])
        return fn

    sparse = [i for i in range(TINY["num_hidden_layers"]) if i >= TINY["first_k_dense_replace"]]
    handles = [model.blocks[i].mlp.register_forward_hook(hook(i)) for i in sparse]
    with torch.no_grad():
        model(ids, mask, block_length=BLOCK)
    for h in handles:
        h.remove()
    T = ids.shape[1]
    for i in sparse:
        idx, _ = model.blocks[i].mlp.route(captured[i])
        for (layer, b, j), chosen in choices.items():
            if layer == i:
                assert sorted(idx[b * T + j].tolist()) == chosen, (layer, b, j)


def test_expert_bias_changes_some_choice(checkpoint):
    """Guard against a vacuous router check: without the biases some token picks other experts."""
    _, tensors = checkpoint
    ids, mask = ragged()
    with_bias, without = {}, {}
    reference_logits(tensors, TINY, ids[:1], mask[:1], choices=with_bias)
    zeroed = {k: (torch.zeros_like(v) if k.endswith("expert_bias") else v) for k, v in tensors.items()}
    reference_logits(zeroed, TINY, ids[:1], mask[:1], choices=without)
    assert any(with_bias[key] != without[key] for key in with_bias)


def test_block_causal_cache_and_candidate_windows_match_reference(checkpoint):
    path, tensors = checkpoint
    model, _ = models.load(path)
    T = 4 * BLOCK
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 89, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :BLOCK] = False                  # left padding by one whole block
    ids[1, :BLOCK] = TINY["pad_token_id"]
    ref = reference_logits(tensors, TINY, ids, mask)
    with torch.no_grad():
        logits, cache = model.prefill(ids, mask, mode="block_causal", start=2 * BLOCK, block_length=BLOCK)
        assert max_err(logits[:, BLOCK:], ref[:, BLOCK:]) <= 1e-4
        window = ids[:, 2 * BLOCK:3 * BLOCK]
        got = model.forward_window(window, start=2 * BLOCK, cache=cache, mode="block_causal", write=True)
        assert max_err(got, ref[:, 2 * BLOCK:3 * BLOCK]) <= 1e-4
        # Candidates: three different windows per cache row read the shared cache.
        cands = ids[:, 3 * BLOCK:].repeat_interleave(3, 0).clone()
        cands[1::3, :2] = 7
        cands[2::3, 3] = 11
        rows = (0, 0, 0, 1, 1, 1)
        got = model.forward_window(cands, start=3 * BLOCK, cache=cache, mode="block_causal", cache_rows=rows)
        for r, c in enumerate(rows):
            canvas = ids[c:c + 1].clone()
            canvas[0, 3 * BLOCK:] = cands[r]
            want = reference_logits(tensors, TINY, canvas, mask[c:c + 1])[0, 3 * BLOCK:]
            assert max_err(got[r], want) <= 1e-4


def test_block_causal_cache_refuses_rows_not_aligned_to_blocks(checkpoint):
    path, _ = checkpoint
    model, _ = models.load(path)
    ids, mask = ragged(2 * BLOCK)
    with pytest.raises(ValueError, match="multiple of block_length"):
        model.prefill(ids, mask, mode="block_causal", start=BLOCK, block_length=BLOCK)
    with pytest.raises(ValueError, match="block_causal"):
        model.prefill(ids, mask, mode="prefix", start=BLOCK)


def test_save_load_round_trip_and_default_block_length(checkpoint, tmp_path):
    path, tensors = checkpoint
    model, _ = models.load(path)
    models.save(model, str(tmp_path / "copy"))
    again, _ = models.load(str(tmp_path / "copy"))
    ids = torch.randint(0, 89, (1, 40))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    # Without a block length the model's own (32) applies.
    with torch.no_grad():
        assert max_err(model(ids), reference_logits(tensors, TINY, ids, block=32)) <= 1e-4


def test_biases_one_expert_and_no_shared_experts(tmp_path):
    cfg = dict(TINY, use_bias=True, use_qkv_bias=True, num_shared_experts=None, num_experts_per_tok=1)
    tensors = official_tensors(cfg, seed=1)
    path = write_checkpoint(str(tmp_path / "b"), cfg, tensors)
    model, _ = models.load(path)
    assert model.blocks[0].attn.o_proj.bias is not None and model.blocks[0].attn.qkv_proj.bias is not None
    ids, mask = ragged()
    with torch.no_grad():
        got = model(ids, mask, block_length=BLOCK)
    ref = reference_logits(tensors, cfg, ids, mask)
    real = mask[:, :, None].expand_as(got)
    assert max_err(got[real], ref[real]) <= 1e-4


@pytest.mark.parametrize("change,match", [
    (lambda c, t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"), "missing"),
    (lambda c, t: t.__setitem__("model.layers.2.mlp.gate.weight", torch.zeros(3, 3)), "model.layers.2.mlp.gate.weight"),
    (lambda c, t: c.__setitem__("score_function", "softmax"), "score_function"),
    (lambda c, t: c.__setitem__("n_group", 3), "n_group"),
    (lambda c, t: c.__setitem__("rotary_dim", 6), "rotary_dim"),
    (lambda c, t: t.__setitem__("model.layers.1.extra.weight", torch.zeros(2)), "unexpected"),
])
def test_bad_checkpoints_name_the_key(tmp_path, change, match):
    cfg, tensors = dict(TINY), official_tensors(TINY)
    change(cfg, tensors)
    path = write_checkpoint(str(tmp_path / "bad"), cfg, tensors)
    with pytest.raises(ValueError, match=match):
        models.load(path)
