"""Top-k sampling of the next code with a per-session generator and a mask of undecodable ids."""

from __future__ import annotations

import torch

from engine.speech.config import DecoderConfig


def undecodable_mask(cfg: DecoderConfig, n_codec_codes: int) -> torch.Tensor:
    """True for every id the codec cannot turn into sound, except EOS (which ends the utterance).

    The reference samples over all ``vocab`` ids, so BOS/SOS/PAD could reach the codec and index past
    its codebook (docs/model.md, "Speech decoder", hazard); masking them is a deliberate deviation.
    """
    mask = torch.ones(cfg.vocab, dtype=torch.bool)
    mask[: min(cfg.odim, n_codec_codes)] = False
    mask[cfg.eos] = False
    return mask


def top_k_distribution(
    logits: torch.Tensor, k: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all ids (masked ones at probability 0), keep the top ``k``, renormalise.

    Returns (ids, probabilities), both of length ``k``, in descending probability.
    """
    logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(mask.to(logits.device), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = torch.topk(probs, k)
    return top_i, top_p / top_p.sum()


class CodeSampler:
    """Draws codes for one utterance stream; seeded generators make a session reproducible."""

    def __init__(self, top_k: int, mask: torch.Tensor, seed: int | None = None) -> None:
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        self.top_k = top_k
        self.mask = mask.cpu()
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        """One id drawn from the renormalised top-k distribution of ``logits``."""
        logits = logits.detach().cpu()
        if not torch.isfinite(logits[~self.mask]).all():
            # A NaN forward pass must not turn into a random code: end the utterance instead.
            return int(self.mask.numel() - 2)  # EOS = odim + 2 = vocab - 2
        ids, probs = top_k_distribution(logits, min(self.top_k, int((~self.mask).sum())), self.mask)
        pick = torch.multinomial(probs, 1, generator=self.generator)
        return int(ids[pick])
