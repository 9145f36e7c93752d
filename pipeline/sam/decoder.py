"""SAM's mask decoder for a batch of prompts on one image, sharing the per-image work.

`segment_anything.modeling.MaskDecoder.predict_masks` copies the image embedding once per
prompt (``repeat_interleave``) and then, in the first two-way attention block, projects those
identical copies again for every prompt: the token-to-image keys and values and the
image-to-token queries. Here those three projections of the (still identical) image tokens
are computed once and broadcast, and the image embedding is never copied per prompt. The
rest is the same sequence of operations on the same module weights (on this CPU the outputs
are bit-identical to ``sam.mask_decoder(...)``; tests compare them).

Decoding is split in two (`decode_tokens`, then `upscale_masks`), because SAM's IoU head needs
only the transformer's IoU output token: the costly per-prompt upscaling of the image tokens
(two transposed convolutions, LayerNorm2d, GELU on a (256, 64, 64) map per prompt) and the
hypernetwork product can then run only for the prompts whose masks pass the predicted-IoU
filter, with the same operations on the same per-prompt rows (bit-identical on this CPU).

Only valid without mask prompts (dense embeddings identical for every prompt), which is
always the case in automatic mask generation.

``reassociate=True`` (opt-in; not bit-identical, the same function up to float rounding,
~1e-6 relative) also reorders the products of the per-prompt attention blocks so that no
(prompt, image token, channel) projection is computed where a (prompt, token, channel) one
will do: in token-to-image attention ``q_h . (W_k,h x + b)`` becomes ``(q_h W_k,h) . x + q_h . b``
and ``A_h (W_v,h x + b)`` becomes ``W_v,h (A_h x) + b`` (rows of ``A_h`` sum to 1); in
image-to-token attention the output projection moves onto the few tokens,
``sum_h A_h (v_h W_o,h^T)``, and per-prompt image tokens meet the keys through
``W_q,h^T k_h`` instead of being projected. Per prompt this cuts the two-way transformer's
multiply-adds from about 940 M to 410 M for SAM's 64x64 embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

__all__ = ["DecodedTokens", "decode_points", "decode_tokens", "upscale_masks", "embed_points"]


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _attend(mod: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`Attention.forward` after its three input projections (q, k, v already projected)."""
    q, k, v = _heads(q, mod.num_heads), _heads(k, mod.num_heads), _heads(v, mod.num_heads)
    attn = q @ k.permute(0, 1, 3, 2)
    attn = attn / math.sqrt(q.shape[-1])
    attn = torch.softmax(attn, dim=-1)
    out = (attn @ v).transpose(1, 2)
    b, t, h, c = out.shape
    return mod.out_proj(out.reshape(b, t, h * c))


def _per_head(linear: torch.nn.Linear, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as (heads, d, C_in) and bias as (heads, d)."""
    w = linear.weight
    return w.reshape(n, w.shape[0] // n, w.shape[1]), linear.bias.reshape(n, -1)


def _tokens_to_image(mod: Attention, q_in: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor) -> torch.Tensor:
    """``mod(q=q_in, k=xk, v=xv)`` reassociated (module docstring). q_in: (b, T, C) tokens;
    xk, xv: (b or 1, N, C) image tokens (keys with their positional encoding, values)."""
    n = mod.num_heads
    q = _heads(mod.q_proj(q_in), n)  # (b, H, T, d)
    wk, bk = _per_head(mod.k_proj, n)
    wv, bv = _per_head(mod.v_proj, n)
    qk = torch.einsum("bhtd,hdc->bhtc", q, wk)  # (b, H, T, C)
    b, h, t, c = qk.shape
    attn = (qk.reshape(b, h * t, c) @ xk.transpose(1, 2)).view(b, h, t, -1)  # (b, H, T, N)
    attn = attn + (q * bk[None, :, None, :]).sum(-1, keepdim=True)
    attn = torch.softmax(attn / math.sqrt(q.shape[-1]), dim=-1)
    ax = (attn.reshape(b, h * t, -1) @ xv).view(b, h, t, c)  # (b, H, T, C)
    out = torch.einsum("bhtc,hdc->bhtd", ax, wv) + bv[None, :, None, :]
    return mod.out_proj(out.transpose(1, 2).reshape(b, t, -1))


def _image_to_tokens(mod: Attention, y: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """``mod(q=y, k=k_in, v=v_in)`` reassociated (module docstring): y (b or 1, N, C) image
    tokens, k_in, v_in (b, T, C) tokens. Shared image tokens (a batch of 1) are projected once;
    per-prompt ones meet the keys through ``W_q,h^T k_h`` ((C, T) per head) instead."""
    n = mod.num_heads
    k, v = _heads(mod.k_proj(k_in), n), _heads(mod.v_proj(v_in), n)  # (b, H, T, d)
    b, h, t, d = k.shape
    if y.shape[0] == 1:
        attn = (_heads(mod.q_proj(y), n) @ k.transpose(2, 3)).permute(0, 2, 1, 3)  # (b, N, H, T)
    else:
        wq, bq = _per_head(mod.q_proj, n)
        m = torch.einsum("hdc,bhtd->bcht", wq, k).reshape(b, -1, h * t)  # (b, C, H*T)
        bias = torch.einsum("hd,bhtd->bht", bq, k).reshape(b, 1, h * t)
        attn = torch.baddbmm(bias, y, m).view(b, -1, h, t)  # (b, N, H, T)
    attn = torch.softmax(attn / math.sqrt(d), dim=-1).reshape(b, -1, h * t)  # (b, N, H*T)
    wo = mod.out_proj.weight.reshape(-1, h, d).permute(1, 2, 0)  # (H, d, C)
    vo = torch.einsum("bhtd,hdc->bhtc", v, wo).reshape(b, h * t, -1)  # (b, H*T, C)
    return attn @ vo + mod.out_proj.bias


@dataclass
class DecodedTokens:
    """The two-way transformer's outputs for a batch of B point prompts on one image.

    hs: (B, T, C) output tokens (IoU token, 4 mask tokens, prompt tokens), float32
    keys: (B, h * w, C) updated image tokens, float32
    iou_pred: (B, 3) predicted IoU of the three multimask outputs, float32
    size: (h, w) of the image embedding
    """

    hs: torch.Tensor
    keys: torch.Tensor
    iou_pred: torch.Tensor
    size: tuple[int, int]


def decode_tokens(sam: Sam, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                  sparse: torch.Tensor, dense: torch.Tensor, reassociate: bool = False) -> DecodedTokens:
    """The transformer and IoU head of ``sam.mask_decoder`` (multimask output), no masks.

    image_embeddings, image_pe: (1, C, h, w); sparse: (B, T, C) prompt tokens; dense: (B, C, h, w)
    identical along B (no mask prompts). ``reassociate``: module docstring (not bit-identical).
    """
    dec = sam.mask_decoder
    tr = dec.transformer
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    b = tokens.shape[0]
    h, w = image_embeddings.shape[2:]
    keys = (image_embeddings + dense[:1]).flatten(2).permute(0, 2, 1)  # (1, hw, C), shared
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = tokens
    for layer in tr.layers:
        shared = keys.shape[0] == 1  # image tokens identical for all prompts (first block)
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        ca = layer.cross_attn_token_to_image
        k = keys + key_pe
        if reassociate and not shared:
            queries = layer.norm2(queries + _tokens_to_image(ca, queries + tokens, k, keys))
        else:
            kp, vp = ca.k_proj(k), ca.v_proj(keys)
            if shared:
                kp, vp = kp.expand(b, -1, -1), vp.expand(b, -1, -1)
            queries = layer.norm2(queries + _attend(ca, ca.q_proj(queries + tokens), kp, vp))
        queries = layer.norm3(queries + layer.mlp(queries))
        ia = layer.cross_attn_image_to_token
        if reassociate:
            out = _image_to_tokens(ia, k, queries + tokens, queries)
        else:
            qi = ia.q_proj(k)
            if shared:
                qi = qi.expand(b, -1, -1)
            out = _attend(ia, qi, ia.k_proj(queries + tokens), ia.v_proj(queries))
        keys = layer.norm4(keys + out)
    if keys.shape[0] == 1:  # a transformer without blocks: nothing made the keys differ
        keys = keys.expand(b, -1, -1)
    if reassociate:
        attn_out = _tokens_to_image(tr.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    else:
        attn_out = tr.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
    hs = tr.norm_final_attn(queries + attn_out)
    iou_pred = dec.iou_prediction_head(hs[:, 0, :])
    return DecodedTokens(hs=hs, keys=keys, iou_pred=iou_pred[:, 1:], size=(int(h), int(w)))


def upscale_masks(sam: Sam, decoded: DecodedTokens, prompts: torch.Tensor | None = None) -> torch.Tensor:
    """Low-res mask logits (P, 3, 4h, 4w) float32 of the prompts ``prompts`` ((P,) int64
    indices into the batch, increasing; None: all), as ``sam.mask_decoder`` computes them.

    The hypernetwork MLPs run on the whole batch (a few small matrix products) so that every
    matrix product keeps the stock shapes; the upscaling and the per-prompt product run only
    on the selected prompts.
    """
    dec = sam.mask_decoder
    hs, keys = decoded.hs, decoded.keys
    b, c = keys.shape[0], keys.shape[2]
    single = prompts is not None and len(prompts) == 1 and b > 1
    if single:
        # one prompt of a larger batch: PyTorch takes other kernels for a batch of one
        # (different last bits), so compute it within a batch of two, like the full batch
        prompts = prompts.repeat(2)
    if prompts is not None:
        keys = keys[prompts]
    p = keys.shape[0]
    hyper = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
    if prompts is not None:
        hyper = hyper[prompts]
    if p == 0:
        return hyper.new_zeros((0, 3, 4 * decoded.size[0], 4 * decoded.size[1]))
    src = keys.transpose(1, 2).reshape(p, c, *decoded.size)
    upscaled = dec.output_upscaling(src)
    _, uc, uh, uw = upscaled.shape
    masks = (hyper @ upscaled.view(p, uc, uh * uw)).view(p, -1, uh, uw)[:, 1:]
    return masks[:1] if single else masks


def decode_points(sam: Sam, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                  sparse: torch.Tensor, dense: torch.Tensor,
                  reassociate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``sam.mask_decoder(image_embeddings, image_pe, sparse, dense, multimask_output=True)``.

    image_embeddings, image_pe: (1, C, h, w); sparse: (B, T, C) prompt tokens; dense: (B, C, h, w)
    identical along B (no mask prompts). Returns low-res mask logits (B, 3, 4h, 4w) and
    predicted IoUs (B, 3), float32. ``reassociate``: module docstring (not bit-identical).
    """
    decoded = decode_tokens(sam, image_embeddings, image_pe, sparse, dense, reassociate=reassociate)
    return upscale_masks(sam, decoded), decoded.iou_pred


def embed_points(sam: Sam, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sam.prompt_encoder(points=(coords, ones), boxes=None, masks=None)`` for B single
    foreground points (B, 1, 2), on the coordinates' device with no host-device sync: the stock
    encoder marks its padding and foreground points by boolean-mask assignments (a sync each on a
    GPU), here they are slices, the same additions. Returns (sparse (B, 2, C), dense (B, C, h, w))."""
    enc = sam.prompt_encoder
    b = coords.shape[0]
    padding = torch.zeros((b, 1, 2), device=coords.device)  # the padding point (no box prompt)
    points = torch.cat([coords + 0.5, padding], dim=1)
    pe = enc.pe_layer.forward_with_coords(points, enc.input_image_size)
    sparse = torch.cat([pe[:, :1] + enc.point_embeddings[1].weight,  # label 1
                        torch.zeros_like(pe[:, 1:]) + enc.not_a_point_embed.weight], dim=1)  # label -1
    dense = enc.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, *enc.image_embedding_size)
    return sparse, dense
