"""Training losses for separation and enhancement models.

``si_snr`` is scale-invariant SNR in dB over the last axis;
``neg_si_snr_loss`` is its negative mean, with permutation-invariant
training (PIT) over sources.
"""

from __future__ import annotations

import itertools

import torch

from compressor.errors import ConfigError


def with_source_axis(estimates: torch.Tensor) -> torch.Tensor:
    """A model's output as (batch, sources, time): a model with one source may return (batch, time)."""
    return estimates.unsqueeze(1) if estimates.dim() == 2 else estimates


def si_snr(
    estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis; any leading dims broadcast.

    Both signals are made zero-mean, the estimate is projected on the
    reference (s_t = <e, r> r / |r|^2) and the result is
    10 log10(|s_t|^2 / |e - s_t|^2). ``eps`` keeps silent inputs finite.
    """
    if estimate.shape[-1] != reference.shape[-1]:
        raise ConfigError(
            "si_snr: estimate and reference differ in length "
            f"({estimate.shape[-1]} vs {reference.shape[-1]})"
        )
    e = estimate - estimate.mean(dim=-1, keepdim=True)
    r = reference - reference.mean(dim=-1, keepdim=True)
    dot = (e * r).sum(dim=-1, keepdim=True)
    ref_energy = (r * r).sum(dim=-1, keepdim=True)
    target = dot / (ref_energy + eps) * r
    noise = e - target
    ratio = (target * target).sum(dim=-1) / ((noise * noise).sum(dim=-1) + eps)
    return 10.0 * torch.log10(ratio + eps)


def _permutations(num_sources: int, device: torch.device) -> torch.Tensor:
    """All S! permutations as a (P, S) long tensor, identity first."""
    perms = list(itertools.permutations(range(num_sources)))
    return torch.tensor(perms, dtype=torch.long, device=device)


def pairwise_si_snr(
    estimates: torch.Tensor, references: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """(B, S, T) x (B, S, T) -> (B, S_est, S_ref) matrix of SI-SNR in dB."""
    return si_snr(estimates.unsqueeze(2), references.unsqueeze(1), eps=eps)


def neg_si_snr_loss(
    estimates: torch.Tensor,
    references: torch.Tensor,
    pit: bool = True,
    return_perm: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Negative SI-SNR averaged over batch and sources (a scalar to minimise).

    estimates, references: (B, S, T). With ``pit`` and S > 1 the best
    assignment of estimates to references is chosen per batch item over all
    S! permutations, from the (B, S, S) pairwise SI-SNR matrix (one
    vectorised gather, no Python loop over the batch).

    With ``return_perm=True`` returns ``(loss, perm)`` where ``perm`` is a
    (B, S) long tensor: reference ``j`` is matched with estimate
    ``perm[b, j]``, i.e. ``estimates[b, perm[b]]`` lines up with
    ``references[b]``. Without PIT ``perm`` is the identity.
    """
    if estimates.dim() != 3 or estimates.shape != references.shape:
        raise ConfigError(
            "neg_si_snr_loss expects estimates and references of the same "
            f"shape (batch, sources, time), got {tuple(estimates.shape)} and "
            f"{tuple(references.shape)}"
        )
    batch, num_sources, _ = estimates.shape
    if not pit or num_sources == 1:
        loss = -si_snr(estimates, references, eps=eps).mean()
        perm = (
            torch.arange(num_sources, device=estimates.device)
            .unsqueeze(0)
            .expand(batch, num_sources)
        )
    else:
        pair = pairwise_si_snr(estimates, references, eps=eps)  # (B, S_e, S_r)
        perms = _permutations(num_sources, estimates.device)  # (P, S)
        ref_idx = torch.arange(num_sources, device=estimates.device)
        # score[b, p] = mean_j pair[b, perms[p, j], j]
        score = pair[:, perms, ref_idx].mean(dim=-1)  # (B, P)
        best = score.argmax(dim=1)  # (B,)
        loss = -score.gather(1, best.unsqueeze(1)).mean()
        perm = perms[best]
    if return_perm:
        return loss, perm
    return loss
