"""Teacher-forcing and rollout L1 losses (SPEC §5) and the autoregressive rollout they share with eval.

Every z is layer-normalised (no parameters) over the feature dim: the predictor's context
input, its targets, and each of its outputs before it is compared or fed back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.vit import KVCache


def normalize(z: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(z.float(), z.shape[-1:])


def predict(model, z: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Normalised predictions of z_1..z_T from z_0..z_{T-1} (teacher forcing)."""
    return normalize(model(z, actions, states))


def rollout(model, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor, steps: int,
            cached: bool = True) -> torch.Tensor:
    """Extend `context` [B, C, N, D] by `steps` predicted frames, each fed back as input.

    Step n sees actions[:, :C+n] and states[:, :C+n] (states are given, not predicted). Cached
    (the default, without gradients: eval and planning): the context is run once and each new frame adds only its own step, reusing the
    keys and values of the steps before (attention is block-causal, so they never change); exact,
    tested against the recomputation of the whole sequence (`cached=False`, the reference's way).
    Returns the `steps` new frames [B, steps, N, D].
    """
    if steps == 0:
        return context[:, :0]
    c = context.shape[1]
    # training keeps the recomputation (the reference's graph, also under activation checkpointing, which
    # recomputes blocks in backward); one step has nothing to reuse
    if not cached or steps == 1 or torch.is_grad_enabled():
        seq = context
        for n in range(steps):
            nxt = normalize(model(seq, actions[:, :c + n], states[:, :c + n])[:, -1:])
            seq = torch.cat([seq, nxt], dim=1)
        return seq[:, c:]
    base = model.module if hasattr(model, "module") else model  # DDP wraps the predictor
    cache = KVCache(len(base.predictor_blocks))
    out = [normalize(model(context, actions[:, :c], states[:, :c], cache=cache)[:, -1:])]
    for n in range(1, steps):
        i = c + n - 1  # the step whose frame was just predicted
        out.append(normalize(model(out[-1], actions[:, i:i + 1], states[:, i:i + 1], cache=cache)))
    return torch.cat(out, dim=1)


def training_losses(model, z: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                    rollout_steps: int) -> dict[str, torch.Tensor]:
    """z [B, F, N, D] normalised, actions [B, F-1, 7], states [B, F, 7] -> loss = tf + rollout."""
    tf_pred = predict(model, z[:, :-1], actions, states[:, :-1])
    tf = (tf_pred - z[:, 1:]).abs().mean()
    out = {"tf_loss": tf}
    if rollout_steps > 0:
        # start from [z_0, z^_1]; z^_1 is the teacher-forced prediction, so gradients flow through it
        more = rollout(model, torch.cat([z[:, :1], tf_pred[:, :1]], 1), actions, states, rollout_steps - 1)
        pred = torch.cat([tf_pred[:, :1], more], 1)
        out["rollout_loss"] = (pred - z[:, 1:rollout_steps + 1]).abs().mean()
    else:
        out["rollout_loss"] = torch.zeros((), device=z.device)
    out["loss"] = out["tf_loss"] + out["rollout_loss"]
    return out
