"""Independent, plain re-statements of insightface arcface_torch's `backbones/mobilefacenet.py` and
`backbones/vit.py` (module names, parameter shapes and the forward, training regularisers included, as published; written for the tests,
deliberately naive: explicit attention arithmetic, no fused kernels, no autocast), used only to check
that irface's backbones load their `backbone.pth` strictly and compute the same function.

`ref_model(name, embedding)` builds what arcface_torch's `get_model(name, num_features=embedding)` builds.
"""

import torch
from torch import nn


# --- MobileFaceNet ---------------------------------------------------------------------------------
class RefConvBlock(nn.Module):
    def __init__(self, cin, cout, k=1, s=1, p=0, g=1, act=True):
        super().__init__()
        mods = [nn.Conv2d(cin, cout, (k, k), (s, s), (p, p), groups=g, bias=False), nn.BatchNorm2d(cout)]
        if act:
            mods.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


class RefDepthWise(nn.Module):
    def __init__(self, cin, cout, residual=False, s=2, groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(RefConvBlock(cin, groups), RefConvBlock(groups, groups, 3, s, 1, groups),
                                    RefConvBlock(groups, cout, act=False))

    def forward(self, x):
        y = self.layers(x)
        if self.residual:
            y = x + y
        return y


class RefResidual(nn.Module):
    def __init__(self, c, n, groups):
        super().__init__()
        self.layers = nn.Sequential(*[RefDepthWise(c, c, True, 1, groups) for _ in range(n)])

    def forward(self, x):
        return self.layers(x)


class RefFlatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class RefGDC(nn.Module):
    def __init__(self, emb, k=7):
        super().__init__()
        self.layers = nn.Sequential(RefConvBlock(512, 512, k, 1, 0, 512, act=False), RefFlatten(),
                                    nn.Linear(512, emb, bias=False), nn.BatchNorm1d(emb))

    def forward(self, x):
        return self.layers(x)


class RefMobileFaceNet(nn.Module):
    def __init__(self, emb=512, blocks=(1, 4, 6, 2), scale=2, gdc_kernel=7):
        super().__init__()
        self.layers = nn.ModuleList()
        self.layers.append(RefConvBlock(3, 64 * scale, 3, 2, 1))
        if blocks[0] == 1:
            self.layers.append(RefConvBlock(64 * scale, 64 * scale, 3, 1, 1, 64))
        else:
            self.layers.append(RefResidual(64 * scale, blocks[0], 128))
        self.layers.extend([
            RefDepthWise(64 * scale, 64 * scale, s=2, groups=128),
            RefResidual(64 * scale, blocks[1], 128),
            RefDepthWise(64 * scale, 128 * scale, s=2, groups=256),
            RefResidual(128 * scale, blocks[2], 256),
            RefDepthWise(128 * scale, 128 * scale, s=2, groups=512),
            RefResidual(128 * scale, blocks[3], 256),
        ])
        self.conv_sep = RefConvBlock(128 * scale, 512)
        self.features = RefGDC(emb, gdc_kernel)

    def forward(self, x):
        for f in self.layers:
            x = f(x)
        return self.features(self.conv_sep(x))


# --- ViT -------------------------------------------------------------------------------------------
class RefMlp(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(h, d)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class RefAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.scale = (d // heads) ** -0.5
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(d, d)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj_drop(self.proj((a @ v).transpose(1, 2).reshape(b, n, d)))


class RefDropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1 - self.p
        r = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        r.div_(keep)
        return x * r


class RefBlock(nn.Module):
    def __init__(self, d, heads, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.attn = RefAttention(d, heads)
        self.drop_path = RefDropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = RefMlp(d, 4 * d)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RefPatchEmbed(nn.Module):
    def __init__(self, img, patch, d):
        super().__init__()
        self.num_patches = (img // patch) ** 2
        self.proj = nn.Conv2d(3, d, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefViT(nn.Module):
    """With arcface_torch's training regularisers: drop path rising linearly to `drop_path_rate`, and
    patch masking whenever `mask_ratio` > 0, at 0.1 whatever `mask_ratio` says (its `random_masking`
    is called without the ratio and uses its default)."""

    def __init__(self, emb=512, d=512, depth=12, heads=8, img=112, patch=9, drop_path_rate=0.0, mask_ratio=0.0):
        super().__init__()
        self.patch_embed = RefPatchEmbed(img, patch, d)
        n = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
        self.pos_drop = nn.Dropout(0.0)
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([RefBlock(d, heads, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.feature = nn.Sequential(nn.Linear(d * n, d, bias=False), nn.BatchNorm1d(d, eps=2e-5),
                                     nn.Linear(d, emb, bias=False), nn.BatchNorm1d(emb, eps=2e-5))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.n, self.d, self.mask_ratio = n, d, mask_ratio

    def random_masking(self, x, mask_ratio=0.1):
        b, n, d = x.size()
        keep = int(n * (1 - mask_ratio))
        shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        return torch.gather(x, dim=1, index=shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d)), restore

    def forward(self, x):
        b = x.shape[0]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, restore = self.random_masking(x)  # sic: the default ratio
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x.float())
        if masking:
            fill = self.mask_token.repeat(x.shape[0], restore.shape[1] - x.shape[1], 1)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        return self.feature(torch.reshape(x, (b, self.n * self.d)))


REF_SPECS = {
    "mbf": lambda emb: RefMobileFaceNet(emb, (1, 4, 6, 2), 2),
    "mbf_large": lambda emb: RefMobileFaceNet(emb, (2, 8, 12, 4), 4),
    "vit_t": lambda emb: RefViT(emb, 256, 12),
    "vit_s": lambda emb: RefViT(emb, 512, 12),
    "vit_b": lambda emb: RefViT(emb, 512, 24),
    "vit_l": lambda emb: RefViT(emb, 768, 24),
}


def ref_model(name, emb=512):
    return REF_SPECS[name](emb)


def randomise(model, seed=1):
    """Distinct BN statistics, affine terms and PReLU slopes, so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for p in model.parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)  # pos_embed, mask_token
    return model
