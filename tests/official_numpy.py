"""Independent pure-numpy transcription of the OFFICIAL X-ViT forward pass.

Ground truth for parity tests of the JAX port. It mirrors the official PyTorch code
(github.com/1adrianb/video-transformers @ 82ca176) step by step, as described in
/work/shared/reference/xvit.md ("ref §x" below), using the official tensor layouts and
state-dict key names. It deliberately shares no code with ``xvit_jax``.

Computation is float64 internally; logits are returned as float32. Eval mode only
(all dropouts are identities, ref §1.1, §3.1).
"""
import numpy as np

BACKBONE_LN_EPS = 1e-6  # ref §1.2 / §8.1.4
HEAD_LN_EPS = 1e-5  # ref §3.1 / §8.1.4 (PyTorch default LayerNorm in VitHead)


# ----------------------------------------------------------------------------- primitives
def _erf(x):
    """erf via the all-positive series erf(x) = 2/sqrt(pi) e^{-x^2} sum_n 2^n x^{2n+1}/(2n+1)!!.

    No cancellation, so it is accurate to ~1e-15 in float64; |x| is clipped at 6 where
    erf = +-1 to within 2e-17.
    """
    a = np.minimum(np.abs(x), 6.0)
    a2 = a * a
    term = a.copy()
    total = a.copy()
    for n in range(1, 200):
        term = term * (2.0 * a2) / (2 * n + 1)
        total = total + term
        if n > 2 * 36 and np.all(term <= 1e-18 * total):  # converged everywhere
            break
    return np.sign(x) * (2.0 / np.sqrt(np.pi)) * np.exp(-a2) * total


def _gelu(x):  # exact erf GELU = torch nn.GELU() default (ref §1.2, §8.1.5)
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _linear(x, sd, name, bias=True):  # torch nn.Linear: weight (out, in)
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if bias else y


def _layer_norm(x, sd, name, eps):  # biased variance, like torch
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- shift
def shift_official(x, n_seg, fold_div):
    """Temporal shift of k or v, ref §2.1. x: (B*T, H, N, Dh) with row b*T + t."""
    x = np.asarray(x)
    nt, h, n, dh = x.shape
    assert nt % n_seg == 0, "official view(B*T/n_seg, n_seg, ...) needs B*T % n_seg == 0"
    nb = nt // n_seg
    # (1) (nb, n_seg, H, N, Dh); (2) token axis last, merge (H, Dh) head-major: c = h*Dh + d
    x = x.reshape(nb, n_seg, h, n, dh).transpose(0, 1, 2, 4, 3).reshape(nb, n_seg, h * dh, n)
    fold = (h * dh) // fold_div
    out = np.zeros_like(x)  # (3) zero padding at each segment's boundaries
    out[:, :-1, :fold] = x[:, 1:, :fold]  # channels [0, fold) come from t+1
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # [fold, 2 fold) come from t-1
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # the rest stay at t
    # (4) back to (B*T, H, N, Dh)
    return out.reshape(nb, n_seg, h, dh, n).transpose(0, 1, 2, 4, 3).reshape(nt, h, n, dh)


# ----------------------------------------------------------------------------- blocks
def _attention(x, sd, name, heads, qkv_bias, shift):
    bt, n, d = x.shape
    dh = d // heads
    # qkv rows [q | k | v], head-major inside each (ref §1.2): reshape(B,N,3,H,Dh).permute(2,0,3,1,4)
    qkv = _linear(x, sd, name + ".qkv", bias=qkv_bias)
    q, k, v = qkv.reshape(bt, n, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # each (BT, H, N, Dh)
    if shift is not None:  # control points on k and v only; q never shifted (ref §2.1)
        k = shift_official(k, *shift)
        v = shift_official(v, *shift)
    attn = _softmax((q @ k.transpose(0, 1, 3, 2)) * dh ** -0.5)  # scale Dh^-0.5
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(bt, n, d)  # proj input index h*Dh + d
    return _linear(out, sd, name + ".proj")


def _block(x, sd, name, heads, eps, qkv_bias=True, shift=None):
    # pre-LN timm Block; DropPath / dropouts are identities (ref §1.2)
    x = x + _attention(_layer_norm(x, sd, name + ".norm1", eps), sd, name + ".attn",
                       heads, qkv_bias, shift)
    h = _gelu(_linear(_layer_norm(x, sd, name + ".norm2", eps), sd, name + ".mlp.fc1"))
    return x + _linear(h, sd, name + ".mlp.fc2")


def _patch_embed(x, sd):
    """Conv2d(3->D, kernel=stride=p, bias) on (BT, 3, H, W), then flatten(2).transpose(1, 2)."""
    w, b = sd["base_model.patch_embed.proj.weight"], sd["base_model.patch_embed.proj.bias"]
    o, c, p, _ = w.shape
    bt, _, hh, ww = x.shape
    gh, gw = hh // p, ww // p
    x = x[:, :, :gh * p, :gw * p].reshape(bt, c, gh, p, gw, p)  # conv drops any remainder
    y = np.einsum("bchiwj,ocij->bohw", x, w) + b[None, :, None, None]  # (BT, D, gh, gw)
    return y.reshape(bt, o, gh * gw).transpose(0, 2, 1)  # raster (h, w) token order


def _vit_head(x, sd, heads):
    """VitHead, ref §3.1. x: (B, T, D) per-frame CLS features."""
    b, _, d = x.shape
    cls = np.broadcast_to(sd["consensus.cls_token"], (b, 1, d))
    x = np.concatenate([cls, x], axis=1)  # head CLS at position 0, NO position embedding (§8.1.7)
    # one Block: qkv_bias=False (§8.1.6), LN eps 1e-5, no shift
    x = _block(x, sd, "consensus.temporal_encoder.0", heads, HEAD_LN_EPS, qkv_bias=False)
    z = x[:, 0]
    # mlp_head: [0] LN(1e-5), [1] Linear, [2] GELU, [3] Dropout, [4] Linear (§8.1.9)
    z = _layer_norm(z, sd, "consensus.mlp_head.0", HEAD_LN_EPS)
    z = _gelu(_linear(z, sd, "consensus.mlp_head.1"))
    return _linear(z, sd, "consensus.mlp_head.4")


# ----------------------------------------------------------------------------- forward
def official_forward(state_dict, video, *, num_segments, shift_div, heads, head_heads=None,
                     consensus="vit"):
    """Official XVIT forward (eval). video: (B, 3, T, H, W). Returns float32 logits (B, C)."""
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in state_dict.items()}
    head_heads = heads if head_heads is None else head_heads
    x = np.asarray(video, dtype=np.float64)
    bsz, c, t, hh, ww = x.shape
    bt = bsz * t
    # fold frames into the batch: transpose(1, 2) then view -> row b*T + t (ref §1.1)
    x = x.transpose(0, 2, 1, 3, 4).reshape(bt, c, hh, ww)
    x = _patch_embed(x, sd)
    d = x.shape[-1]
    # per-frame CLS copy prepended to every frame (ref §1.1)
    cls = np.broadcast_to(sd["base_model.cls_token"], (bt, 1, d))
    x = np.concatenate([cls, x], axis=1)
    n = x.shape[1]
    pos = sd["base_model.pos_embed"]
    # no bicubic pos_embed resize here: the state dict must be built for this image size (ref §1.3)
    assert pos.shape[1] == n, f"pos_embed has {pos.shape[1]} tokens, input gives {n}"
    x = x + pos
    # temp_embed: view(B*T/P, P, N, D) + (1, P, 1, D); frame row r gets slot r mod P over the
    # FOLDED batch, i.e. (b*T + t) mod P, CLS included (ref §1.1, §8.1.3)
    te = sd["base_model.temp_embed"]
    period = te.shape[1]
    assert bt % period == 0, f"official view needs B*T={bt} divisible by temp_embed period {period}"
    x = (x.reshape(bt // period, period, n, d) + te).reshape(bt, n, d)
    depth = sum(1 for k in sd if k.startswith("base_model.blocks.") and k.endswith(".norm1.weight"))
    for i in range(depth):  # shift in every block (LOCATIONS_LIST covers all, ref §2.1)
        x = _block(x, sd, f"base_model.blocks.{i}", heads, BACKBONE_LN_EPS,
                   shift=(num_segments, shift_div))
    x = _layer_norm(x, sd, "base_model.norm", BACKBONE_LN_EPS)
    feats = x[:, 0]  # final-LN CLS of each frame; pre_logits Identity, head Dropout (§8.1.8)
    if consensus == "vit":
        logits = _vit_head(feats.reshape(bsz, t, d), sd, head_heads)
    elif consensus == "avg":
        # new_fc per frame, BEFORE_SOFTMAX=True (no softmax), mean over frames (ref §3.3).
        # Official reshape is (-1, NUM_SEGMENTS, C); we use T (identical when NUM_SEGMENTS == T).
        per_frame = _linear(feats, sd, "new_fc")
        logits = per_frame.reshape(bsz, t, -1).mean(axis=1)
    else:
        raise ValueError(f"unsupported consensus {consensus!r}")
    return logits.astype(np.float32)


# ----------------------------------------------------------------------------- random weights
def random_official_state_dict(*, num_classes, hidden=768, depth=12, heads=12, mlp_ratio=4,
                               patch=16, image_size=224, temp_slots=8, head_mlp_dim=None, seed=0):
    """Random float32 weights under the official key names and shapes (ref §4.2).

    Linear/conv weights ~ N(0, 1/fan_in) so activations and attention logits stay O(1)
    (non-uniform attention makes layout bugs visible); LN weights 1 + 0.1 N; biases 0.02 N;
    cls tokens / pos / temp embeddings 0.5 N (all nonzero, unlike the official zero inits).
    `heads` does not change any shape; it is accepted for symmetry with official_forward.
    """
    assert hidden % heads == 0 and image_size % patch == 0
    rng = np.random.default_rng(seed)
    head_mlp_dim = hidden if head_mlp_dim is None else head_mlp_dim
    mlp = hidden * mlp_ratio
    n_tok = (image_size // patch) ** 2 + 1
    sd = {}

    def lin(name, out_f, in_f, bias=True):
        sd[name + ".weight"] = rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)
        if bias:
            sd[name + ".bias"] = 0.02 * rng.standard_normal(out_f)

    def ln(name, dim):
        sd[name + ".weight"] = 1.0 + 0.1 * rng.standard_normal(dim)
        sd[name + ".bias"] = 0.02 * rng.standard_normal(dim)

    def block(name, qkv_bias):
        ln(name + ".norm1", hidden)
        lin(name + ".attn.qkv", 3 * hidden, hidden, bias=qkv_bias)
        lin(name + ".attn.proj", hidden, hidden)
        ln(name + ".norm2", hidden)
        lin(name + ".mlp.fc1", mlp, hidden)
        lin(name + ".mlp.fc2", hidden, mlp)

    sd["base_model.cls_token"] = 0.5 * rng.standard_normal((1, 1, hidden))
    sd["base_model.pos_embed"] = 0.5 * rng.standard_normal((1, n_tok, hidden))
    sd["base_model.temp_embed"] = 0.5 * rng.standard_normal((1, temp_slots, 1, hidden))
    fan_in = 3 * patch * patch
    sd["base_model.patch_embed.proj.weight"] = (
        rng.standard_normal((hidden, 3, patch, patch)) / np.sqrt(fan_in))
    sd["base_model.patch_embed.proj.bias"] = 0.02 * rng.standard_normal(hidden)
    for i in range(depth):
        block(f"base_model.blocks.{i}", qkv_bias=True)
    ln("base_model.norm", hidden)
    lin("new_fc", num_classes, hidden)  # unused by the vit consensus (ref §4.2)
    sd["consensus.cls_token"] = 0.5 * rng.standard_normal((1, 1, hidden))
    block("consensus.temporal_encoder.0", qkv_bias=False)  # no qkv bias key (ref §4.2)
    ln("consensus.mlp_head.0", hidden)
    lin("consensus.mlp_head.1", head_mlp_dim, hidden)
    lin("consensus.mlp_head.4", num_classes, head_mlp_dim)
    return {k: np.asarray(v, dtype=np.float32) for k, v in sd.items()}
