"""Small models that are not in the zoo, for quantize() and checkpoint tests."""
import torch
from torch import nn


class TinyMLP(nn.Module):
    """Linear + GELU + Linear + tanh on frames of audio."""

    def __init__(self, frame: int = 16) -> None:
        super().__init__()
        self.frame = frame
        self.fc1 = nn.Linear(frame, 32)
        self.fc2 = nn.Linear(32, frame)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.reshape(x.shape[0], -1, self.frame)
        return torch.tanh(self.fc2(nn.functional.gelu(self.fc1(frames)))).reshape(x.shape)


class TinyCNN2d(nn.Module):
    """Conv2d + BatchNorm-free ReLU stack + max-pool + concat on a spectrogram-like input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 1)
        self.head = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        y = nn.functional.max_pool2d(y, 2)
        return torch.sigmoid(self.head(y))


class TinyAttention(nn.Module):
    """Single-head self-attention written out (q/k/v Linear, softmax, output Linear)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) * self.scale, dim=-1)
        return self.out(attn @ self.v(x)) + x


class TinyGRU(nn.Module):
    """nn.GRU: substituted by quantize(), refused as one fused float kernel when that substitution is off."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


def make_tiny_mlp() -> nn.Module:
    """A --model-factory target for the tests."""
    torch.manual_seed(0)
    return TinyMLP()


class UserMasker(nn.Module):
    """An enhancer as users write one: conv encoder, SiLU blocks with residuals, sigmoid mask, transposed-conv
    decoder. Its SiLUs are rewritten after tracing, which renumbers the traced nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv1d(1, 16, 16, stride=8, padding=4)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.SiLU()) for _ in range(2)])
        self.mask = nn.Conv1d(16, 16, 1)
        self.decoder = nn.ConvTranspose1d(16, 1, 16, stride=8, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.relu(self.encoder(x.unsqueeze(1)))
        y = w
        for block in self.blocks:
            y = y + block(y)
        return self.decoder(w * torch.sigmoid(self.mask(y))).squeeze(1)


def make_user_masker() -> nn.Module:
    """A --model-factory target for the checkpoint round-trip tests."""
    torch.manual_seed(0)
    return UserMasker()


class SpectralMasker(nn.Module):
    """A magnitude-mask enhancer as people write it: torch.stft, a conv net on |X|, a sigmoid mask, torch.istft."""

    def __init__(self, n_fft: int = 128, hop: int = 64, mask: str = "real") -> None:
        super().__init__()
        self.n_fft, self.hop, self.mask = n_fft, hop, mask
        self.register_buffer("window", torch.hann_window(n_fft))
        bins = n_fft // 2 + 1
        inputs = bins if mask == "real" else 2 * bins
        outputs = bins if mask == "real" else 2 * bins
        self.net = nn.Sequential(nn.Conv1d(inputs, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, outputs, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True)
        if self.mask == "real":
            mask = torch.sigmoid(self.net(spec.abs()))
            return torch.istft(spec * mask, self.n_fft, self.hop, window=self.window, length=x.shape[-1])
        parts = torch.view_as_real(spec)  # (batch, bins, frames, 2)
        b, f, t, _ = parts.shape
        feats = parts.permute(0, 3, 1, 2).reshape(b, 2 * f, t)
        out = torch.tanh(self.net(feats)).reshape(b, 2, f, t).permute(0, 2, 3, 1)
        return torch.istft(spec * torch.view_as_complex(out.contiguous()), self.n_fft, self.hop,
                           window=self.window, length=x.shape[-1])


def make_spectral_masker() -> SpectralMasker:
    torch.manual_seed(0)
    return SpectralMasker()


def make_complex_masker() -> SpectralMasker:
    torch.manual_seed(0)
    return SpectralMasker(mask="complex")
