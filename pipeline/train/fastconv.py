"""Exact, faster dilated convolutions for CPU training ("space to batch").

PyTorch's CPU backward of a dilated (depthwise) convolution falls back to a slow kernel
(~10-20x slower than the undilated one). A stride-1 convolution with dilation d and
"same" padding d * (k - 1) / 2 equals an undilated convolution applied separately to the d x d
sub-lattices x[p::d, q::d] (zero-padded to a multiple of d): each output pixel only reads
inputs of its own parity class. :func:`use_space_to_batch` switches eligible ``nn.Conv2d``
modules of a model to that formulation in place; parameters and state-dict keys are unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpaceToBatchConv2d", "use_space_to_batch"]


def _eligible(conv: nn.Conv2d) -> bool:
    d, k = conv.dilation, conv.kernel_size
    return (type(conv) is nn.Conv2d and d[0] == d[1] > 1 and conv.stride == (1, 1) and k[0] == k[1]
            and k[0] % 2 == 1 and conv.padding == (d[0] * (k[0] - 1) // 2,) * 2
            and conv.padding_mode == "zeros")


class SpaceToBatchConv2d(nn.Conv2d):
    """nn.Conv2d whose dilated forward runs as an undilated conv on the d x d sub-lattices."""

    def forward(self, x: Tensor) -> Tensor:
        d = self.dilation[0]
        b, c, h, w = x.shape
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        hh, ww = (h + ph) // d, (w + pw) // d
        xs = x.reshape(b, c, hh, d, ww, d).permute(0, 3, 5, 1, 2, 4).reshape(b * d * d, c, hh, ww)
        y = F.conv2d(xs, self.weight, self.bias, 1, (self.kernel_size[0] - 1) // 2, 1, self.groups)
        o = y.shape[1]
        y = y.reshape(b, d, d, o, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(b, o, hh * d, ww * d)
        return y[:, :, :h, :w]


def use_space_to_batch(model: nn.Module) -> int:
    """Switch every eligible dilated Conv2d of ``model`` to :class:`SpaceToBatchConv2d` in place.

    Returns how many modules were switched. Outputs are unchanged (up to float rounding order).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and _eligible(m):
            m.__class__ = SpaceToBatchConv2d
            n += 1
    return n
