"""ST-MEM's ViT encoder: bakqui/ST-MEM `models/encoder/st_mem_vit.py` (`ST_MEM_ViT`) with the
`TransformerBlock` of `models/encoder/vit.py` (MIT licence, Copyright (c) 2024 Minje Park).
Test/benchmark code only.

Edits: einops is replaced by the equivalent reshapes (`_Patchify` stands where
`Rearrange('b c (n p) -> b c n p')` stood, so `to_patch_embedding.1/2/3` keep their indices);
`DropPath` is the identity (rate 0 at inference); `__repr__` is dropped. Parameter names,
shapes and the forward pass are the original's.
"""

import torch
import torch.nn as nn


class _Patchify(nn.Module):
    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x):  # 'b c (n p) -> b c n p'
        b, c, t = x.shape
        return x.reshape(b, c, t // self.patch_size, self.patch_size)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class FeedForward(nn.Module):
    """MLP Module with GELU activation fn + dropout."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int, drop_out_rate=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(drop_out_rate),
            nn.Linear(hidden_dim, output_dim),
            nn.Dropout(drop_out_rate),
        )

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        heads: int = 8,
        dim_head: int = 64,
        qkv_bias: bool = True,
        drop_out_rate: float = 0.0,
        attn_drop_out_rate: float = 0.0,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == input_dim)

        self.heads = heads
        self.scale = dim_head**-0.5

        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(attn_drop_out_rate)
        self.to_qkv = nn.Linear(input_dim, inner_dim * 3, bias=qkv_bias)

        if project_out:
            self.to_out = nn.Sequential(nn.Linear(inner_dim, output_dim), nn.Dropout(drop_out_rate))
        else:
            self.to_out = nn.Identity()

    def forward(self, x):
        qkv = self.to_qkv(x).chunk(3, dim=-1)
        b, n, _ = x.shape
        # 'b n (h d) -> b h n d'
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in qkv)

        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = self.attend(dots)
        attn = self.dropout(attn)
        out = torch.matmul(attn, v)

        out = out.transpose(1, 2).reshape(b, n, -1)  # 'b h n d -> b n (h d)'
        out = self.to_out(out)
        return out


class TransformerBlock(nn.Module):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int,
        heads: int = 8,
        dim_head: int = 32,
        qkv_bias: bool = True,
        drop_out_rate: float = 0.0,
        attn_drop_out_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        attn = Attention(
            input_dim=input_dim,
            output_dim=output_dim,
            heads=heads,
            dim_head=dim_head,
            qkv_bias=qkv_bias,
            drop_out_rate=drop_out_rate,
            attn_drop_out_rate=attn_drop_out_rate,
        )
        self.attn = PreNorm(dim=input_dim, fn=attn)
        self.droppath1 = nn.Identity()

        ff = FeedForward(
            input_dim=output_dim,
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            drop_out_rate=drop_out_rate,
        )
        self.ff = PreNorm(dim=output_dim, fn=ff)
        self.droppath2 = nn.Identity()

    def forward(self, x):
        x = self.droppath1(self.attn(x)) + x
        x = self.droppath2(self.ff(x)) + x
        return x


class ST_MEM_ViT(nn.Module):
    def __init__(
        self,
        seq_len: int,
        patch_size: int,
        num_leads: int,
        num_classes: int | None = None,
        width: int = 768,
        depth: int = 12,
        mlp_dim: int = 3072,
        heads: int = 12,
        dim_head: int = 64,
        qkv_bias: bool = True,
        drop_out_rate: float = 0.0,
        attn_drop_out_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        assert seq_len % patch_size == 0, "The sequence length must be divisible by the patch size."
        self.width = width
        self.depth = depth

        # embedding layers
        num_patches = seq_len // patch_size
        patch_dim = patch_size
        self.to_patch_embedding = nn.Sequential(
            _Patchify(patch_size),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, width),
            nn.LayerNorm(width),
        )

        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 2, width))
        self.sep_embedding = nn.Parameter(torch.randn(width))
        self.lead_embeddings = nn.ParameterList(
            nn.Parameter(torch.randn(width)) for _ in range(num_leads)
        )

        # transformer layers
        for i in range(depth):
            block = TransformerBlock(
                input_dim=width,
                output_dim=width,
                hidden_dim=mlp_dim,
                heads=heads,
                dim_head=dim_head,
                qkv_bias=qkv_bias,
                drop_out_rate=drop_out_rate,
                attn_drop_out_rate=attn_drop_out_rate,
            )
            self.add_module(f"block{i}", block)
        self.dropout = nn.Dropout(drop_out_rate)
        self.norm = nn.LayerNorm(width)

        # classifier head
        self.head = nn.Identity() if num_classes is None else nn.Linear(width, num_classes)

    def forward_encoding(self, series):
        num_leads = series.shape[1]
        if num_leads > len(self.lead_embeddings):
            raise ValueError(f"Number of leads ({num_leads}) exceeds the number of lead embeddings")

        x = self.to_patch_embedding(series)
        b, _, n, _ = x.shape
        x = x + self.pos_embedding[:, 1 : n + 1, :].unsqueeze(1)

        # lead indicating modules
        sep_embedding = self.sep_embedding[None, None, None, :]
        left_sep = sep_embedding.expand(b, num_leads, -1, -1) + self.pos_embedding[
            :, :1, :
        ].unsqueeze(1)
        right_sep = sep_embedding.expand(b, num_leads, -1, -1) + self.pos_embedding[
            :, -1:, :
        ].unsqueeze(1)
        x = torch.cat([left_sep, x, right_sep], dim=2)
        lead_embeddings = torch.stack(list(self.lead_embeddings)).unsqueeze(0)
        lead_embeddings = lead_embeddings.unsqueeze(2).expand(b, -1, n + 2, -1)
        x = x + lead_embeddings
        x = x.reshape(b, -1, x.shape[-1])  # 'b c n p -> b (c n) p'

        x = self.dropout(x)
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)

        # remove SEP embeddings
        x = x.reshape(b, num_leads, -1, x.shape[-1])  # 'b (c n) p -> b c n p'
        x = x[:, :, 1:-1, :]

        x = torch.mean(x, dim=(1, 2))
        return self.norm(x)

    def forward(self, series):
        x = self.forward_encoding(series)
        return self.head(x)


def st_mem_vit_small(num_leads, num_classes=None, seq_len=2250, patch_size=75, **kwargs):
    return ST_MEM_ViT(
        seq_len=seq_len,
        patch_size=patch_size,
        num_leads=num_leads,
        num_classes=num_classes,
        width=384,
        depth=12,
        heads=6,
        mlp_dim=1536,
        **kwargs,
    )


def st_mem_vit_base(num_leads, num_classes=None, seq_len=2250, patch_size=75, **kwargs):
    return ST_MEM_ViT(
        seq_len=seq_len,
        patch_size=patch_size,
        num_leads=num_leads,
        num_classes=num_classes,
        width=768,
        depth=12,
        heads=12,
        mlp_dim=3072,
        **kwargs,
    )
