"""The predictor, its RoPE and mask, actions from states, checkpoints, and training itself."""

from __future__ import annotations

import csv
import itertools
import math
import signal
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, default_collate

from common.errors import TrainingDiverged, UserError
from model.checkpoint import load_predictor_weights
from model.predictor import PREDICTOR_PRESETS, ACPredictor, block_causal_mask
from model.vit import apply_rope, attention, rope_slice, rope_tables
from store import open_store
from store.actions import actions_from_states, apply_action
from tests.conftest import DEMO_STEPS, signalled
from tests.fake_store import complete_store, tiny_store
from train.config import TrainConfig
from train.data import ClipDataset, ShuffledStream, collate
from train.loop import lr_at, run_train
from train.losses import training_losses


def small_predictor(seed: int = 0, dim: int = 24, grid=(2, 3), attention: str = "per-step") -> ACPredictor:
    torch.manual_seed(seed)
    return ACPredictor(dim, grid, PREDICTOR_PRESETS["ac_test"], attention=attention).eval()


def inputs(b: int = 2, t: int = 4, n: int = 6, d: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, n, d, generator=g), torch.randn(b, t, 7, generator=g), torch.randn(b, t, 7, generator=g)


@pytest.mark.parametrize("attention", ["per-step", "mask"])
@pytest.mark.parametrize("part", [0, 1, 2])  # frames, actions, states
def test_block_causality(part, attention):
    model = small_predictor(attention=attention)
    x = list(inputs())
    base = model(*x)
    for t in range(4):
        y = [v.clone() for v in x]
        y[part][:, t] += 1.0
        out = model(*y)
        assert torch.equal(out[:, :t], base[:, :t]), f"step {t} changed earlier outputs"
        assert all(not torch.allclose(out[:, s], base[:, s]) for s in range(t, 4)), f"step {t} did not reach later outputs"


def test_step_by_step_attention_equals_the_masked_one():
    """The CUDA path (per-step SDPA, no mask) computes the same as the masked SDPA and plain softmax."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4 * 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = block_causal_mask(4, 5)
    masked = attention(q, k, v, mask)
    plain = ((q @ k.transpose(-1, -2)) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1) @ v
    assert torch.allclose(masked, plain, atol=1e-12)
    assert torch.allclose(attention(q, k, v, step_tokens=5), masked, atol=1e-12)
    model = small_predictor()  # per-step, the default
    masked = ACPredictor(24, (2, 3), PREDICTOR_PRESETS["ac_test"], attention="mask").eval()
    masked.load_state_dict(model.state_dict())
    assert torch.allclose(masked(*inputs()), model(*inputs()), atol=1e-5)


def test_mask_shape_and_reuse():
    m = block_causal_mask(3, 2)
    expect = torch.tensor([[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1] * 6] * 2, dtype=torch.bool)
    assert torch.equal(m, expect)
    model = small_predictor(attention="mask")
    assert model.tables(4, torch.device("cpu"))[2] is model.tables(4, torch.device("cpu"))[2]
    assert small_predictor().tables(4, torch.device("cpu"))[2] is None  # per-step needs no mask


def rope_by_formula(x: np.ndarray, t: float, row: float | None, col: float | None) -> np.ndarray:
    """SPEC §2 written out element by element: slices [0,d) time, [d,2d) row, [2d,3d) column; element j
    of a slice uses angle p * 10000^(-(j mod d/2) / (d/2)); pairs rotate as (x0 c - x1 s, x1 c + x0 s)."""
    dh = len(x)
    d = 2 * ((dh // 3) // 2)
    out = x.copy()
    slices = [(0, t)] + ([(d, row), (2 * d, col)] if row is not None else [])
    for start, p in slices:
        for j in range(0, d, 2):
            a0 = p * 10000 ** (-((j % (d // 2)) / (d / 2)))
            a1 = p * 10000 ** (-(((j + 1) % (d // 2)) / (d / 2)))
            x0, x1 = x[start + j], x[start + j + 1]
            out[start + j] = x0 * math.cos(a0) - x1 * math.sin(a0)
            out[start + j + 1] = x1 * math.cos(a1) + x0 * math.sin(a1)
    return out


@pytest.mark.parametrize("head_dim", [64, 32])
def test_rope_matches_the_spec_formula(head_dim):
    assert rope_slice(64) == 20 and rope_slice(32) == 10
    g = torch.Generator().manual_seed(0)
    positions = [(0, 0, 0), (3, 5, 11), (7, 15, 2)]
    time = torch.tensor([p[0] for p in positions] + [5])
    row = torch.tensor([p[1] for p in positions] + [-1])  # the last: an action token, time only
    col = torch.tensor([p[2] for p in positions] + [-1])
    x = torch.randn(4, head_dim, generator=g, dtype=torch.float64)
    cos, sin = rope_tables(time, row, col, head_dim)
    got = apply_rope(x, cos.double(), sin.double()).numpy()
    for i, (t, r, c) in enumerate(positions):
        assert np.allclose(got[i], rope_by_formula(x[i].numpy(), t, r, c), atol=1e-6)
    assert np.allclose(got[3], rope_by_formula(x[3].numpy(), 5, None, None), atol=1e-6)
    d = rope_slice(head_dim)
    assert np.array_equal(got[3, d:], x[3, d:].numpy())  # nothing but the time slice moves
    # the quirk is real: interleaved frequencies (the "fixed" variant) give another result
    assert not np.allclose(cos[1, :d].numpy(), np.repeat(cos[1, :d:2].numpy(), 2))


def test_actions_from_states_match_scipy():
    rng = np.random.default_rng(0)
    states = np.concatenate([rng.normal(0, 0.3, (5, 3)), rng.uniform(-3, 3, (5, 3)) * [1, 0.45, 1],
                             rng.uniform(0, 1, (5, 1))], 1)
    got = actions_from_states(torch.from_numpy(states)).numpy()
    for t in range(4):
        r0 = Rotation.from_euler("xyz", states[t, 3:6])
        r1 = Rotation.from_euler("xyz", states[t + 1, 3:6])
        assert np.allclose(got[t, :3], states[t + 1, :3] - states[t, :3])
        assert np.allclose(got[t, 3:6], (r1 * r0.inv()).as_euler("xyz"), atol=1e-9)
        assert np.isclose(got[t, 6], states[t + 1, 6] - states[t, 6])
        # and applying the action to s_t gives s_{t+1} (the planner's roll-forward)
        nxt = apply_action(torch.from_numpy(states[t]), torch.from_numpy(got[t])).numpy()
        assert np.allclose(nxt[:3], states[t + 1, :3])
        assert np.allclose(Rotation.from_euler("xyz", nxt[3:6]).as_matrix(), r1.as_matrix(), atol=1e-9)
    batch = torch.from_numpy(np.stack([states, states[::-1].copy()]))
    assert actions_from_states(batch).shape == (2, 4, 7)


def test_released_predictor_layout_loads_strictly(tmp_path):
    model = small_predictor(seed=3)
    path = tmp_path / "vjepa2-ac.pt"
    torch.save({"predictor": {f"module.{k}": v for k, v in model.state_dict().items()},
                "encoder": {}, "epoch": 315}, path)
    other = small_predictor(seed=4)
    x = inputs()
    assert not torch.equal(other(*x), model(*x))
    load_predictor_weights(other, path)
    assert torch.equal(other(*x), model(*x))
    expected_keys = {"predictor_embed.weight", "action_encoder.bias", "state_encoder.weight",
                     "extrinsics_encoder.weight", "predictor_blocks.1.attn.qkv.weight",
                     "predictor_blocks.0.mlp.fc2.bias", "predictor_norm.weight", "predictor_proj.bias"}
    assert expected_keys <= set(model.state_dict())
    wrong = small_predictor(dim=16)
    with pytest.raises(UserError, match="takes 24-dim features, not 16-dim ones"):
        load_predictor_weights(wrong, path)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("predictor_blocks.1.")}
    torch.save({"predictor": state}, path)
    with pytest.raises(UserError, match="missing: predictor_blocks.1"):
        load_predictor_weights(small_predictor(), path)


def test_released_predictor_size():
    with torch.device("meta"):
        model = ACPredictor(1408, (16, 16), PREDICTOR_PRESETS["ac_vitg"])
    n = sum(p.numel() for p in model.parameters())
    assert 3.0e8 < n < 3.1e8  # ~305M (SPEC §3)


def test_schedule_phases():
    cfg = TrainConfig(store=Path("."), out=Path("."), steps=100, warmup=10, anneal=20, lr=1.0, start_lr=0.1, final_lr=0.0)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55)
    assert lrs[10:80] == [1.0] * 70
    assert lrs[99] == pytest.approx(0.0) and lrs[89] == pytest.approx(0.5)
    default = TrainConfig(store=Path("."), out=Path("."), steps=94500)
    assert default.phases() == (4500, 4500)


@pytest.mark.parametrize("codec", ["bf16", "fp16", "int8"])
def test_batches_read_whole_hold_the_bits_of_collated_clips(codec, tmp_path):
    store = open_store(complete_store(tmp_path / "s", codec))
    clips = ClipDataset(store, store.ok_episodes, 4)
    order = list(itertools.islice(ShuffledStream(len(clips), seed=1), 9))
    for workers in (0, 2):
        loader = DataLoader(clips, batch_size=3, sampler=order, num_workers=workers, collate_fn=collate)
        for k, batch in enumerate(loader):
            expect = default_collate([clips[i] for i in order[3 * k:3 * k + 3]])
            for key, value in expect.items():
                assert batch[key].dtype == value.dtype
                assert batch[key].view(torch.int16).equal(value.view(torch.int16)) if value.dtype == torch.bfloat16 \
                    else batch[key].equal(value)


def read_losses(run: Path) -> list[tuple]:
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), r["loss"], r["tf_loss"], r["rollout_loss"], r["grad_norm"]) for r in csv.DictReader(f)]


def test_preempted_run_resumes_with_the_same_losses(tmp_path, monkeypatch):
    """SIGTERM after step 5 of 8, to the process group (its DataLoader worker's too, as scancel sends it): the step
    is finished and checkpointed although --ckpt-every is 2, the exit code is 3, and --resume gives the
    uninterrupted run's losses and weights. A second signal exits at once. A run that dies while validating a
    step it checkpoints resumes with that validation too."""
    store = tiny_store(tmp_path / "store")
    base = dict(store=store, preset="ac_test", frames=4, steps=8, batch_size=3, ckpt_every=2, val_every=4,
                workers=0, lr=1e-3, seed=5)
    run_train(TrainConfig(out=tmp_path / "a", **base))

    args = ["train", *(x for k, v in base.items() for x in (f"--{k.replace('_', '-')}", v))]
    r = signalled("group:SIGTERM", 5, 0, *args, "--out", tmp_path / "b", "--workers", 1)
    assert r.returncode == 3 and "preempted: SIGTERM after step 5" in r.stderr, r.stderr
    assert torch.load(tmp_path / "b" / "latest.pt", weights_only=True)["step"] == 5
    with pytest.raises(UserError, match="pass --resume"):
        run_train(TrainConfig(out=tmp_path / "b", **base))
    with pytest.raises(UserError, match="was trained with batch_size 3, this run has 4"):  # the stream would shift
        run_train(TrainConfig(out=tmp_path / "b", resume=True, **{**base, "batch_size": 4}))
    with pytest.raises(UserError, match="was trained with action_conditioning token, this run has concat"):
        run_train(TrainConfig(out=tmp_path / "b", resume=True, **{**base, "action_conditioning": "concat"}))
    result = run_train(TrainConfig(out=tmp_path / "b", resume=True, **base))
    assert result.start_step == 5
    a, b = read_losses(tmp_path / "a"), read_losses(tmp_path / "b")
    assert [r[0] for r in b] == list(range(1, 9))
    assert a == b
    wa = torch.load(tmp_path / "a" / "latest.pt", weights_only=True)["predictor"]
    wb = torch.load(tmp_path / "b" / "latest.pt", weights_only=True)["predictor"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in (tmp_path / "b").glob("step_*.pt")) == [
        "step_00000005.pt", "step_00000006.pt", "step_00000008.pt"]

    r = signalled("TWICE", 5, 0, *args, "--out", tmp_path / "c")
    assert r.returncode == -signal.SIGTERM and "preempted" not in r.stderr, r.stderr
    assert torch.load(tmp_path / "c" / "latest.pt", weights_only=True)["step"] == 4

    import train.loop

    validate, calls = train.loop._validate, []

    def dies_at_step_4(run):  # (the untrained baseline is the first validation, step 4's the second)
        calls.append(1)
        if len(calls) == 2:
            raise OSError("the object store went away")
        return validate(run)

    monkeypatch.setattr(train.loop, "_validate", dies_at_step_4)
    with pytest.raises(OSError):
        run_train(TrainConfig(out=tmp_path / "d", **base))
    monkeypatch.setattr(train.loop, "_validate", validate)
    run_train(TrainConfig(out=tmp_path / "d", resume=True, **base))
    assert read_losses(tmp_path / "d") == a
    assert (tmp_path / "d" / "val.csv").read_text() == (tmp_path / "a" / "val.csv").read_text()


def test_a_concat_conditioned_model_is_rebuilt_as_trained(tmp_path):
    """--action-conditioning concat is kept in the checkpoint: loading rebuilds it (its outputs, not the token
    model's), and the released layout, which has no place for it, is refused."""
    from model.checkpoint import load_trained
    from train.config import ExportConfig
    from train.export import run_export

    store = tiny_store(tmp_path / "store")
    run_train(TrainConfig(store=store, out=tmp_path / "run", preset="ac_test", frames=4, steps=2, batch_size=2,
                          workers=0, action_conditioning="concat"))
    model, meta, ckpt = load_trained(tmp_path / "run" / "latest.pt")
    assert meta.action_conditioning == model.action_conditioning == "concat"
    token = replace(meta, action_conditioning="token").build()
    token.load_state_dict(ckpt["predictor"])
    z, a, s = torch.randn(1, 3, 4, 16), torch.randn(1, 3, 7), torch.randn(1, 3, 7)
    assert not torch.allclose(model(z, a, s), token.eval()(z, a, s))
    with pytest.raises(UserError, match="has no released layout"):
        run_export(ExportConfig(checkpoint=tmp_path / "run" / "latest.pt", out=tmp_path / "x.pt", format="released"))


def test_a_signal_on_one_rank_stops_both_at_the_same_step(tmp_path):
    store = tiny_store(tmp_path / "store")
    out = tmp_path / "run"
    r = signalled("SIGUSR1", 3, 1, "train", "--store", store, "--out", out, "--preset", "ac_test", "--steps", 50,
                  "--batch-size", 2, "--frames", 4, "--workers", 0, "--val-every", 0, "--ckpt-every", 1000,
                  "--device", "cpu", torchrun=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.stderr.count("preempted: ") == 2, r.stderr  # each rank's one line, exit code 3
    assert "preempted: SIGUSR1 after step 3" in r.stderr and "a stop signal on another rank after step 3" in r.stderr
    assert [row[0] for row in read_losses(out)] == [1, 2, 3]
    assert sorted(p.name for p in out.glob("*.pt")) == ["latest.pt", "step_00000003.pt"]  # one checkpoint
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 3


def test_a_rank_that_dies_ends_the_other_in_one_line(tmp_path):
    store = tiny_store(tmp_path / "store")
    r = signalled("EXIT", 3, 1, "train", "--store", store, "--out", tmp_path / "run", "--preset", "ac_test", "--steps",
                  50, "--batch-size", 2, "--frames", 4, "--workers", 0, "--val-every", 0, "--ckpt-every", 2,
                  "--device", "cpu", torchrun=True)
    assert r.returncode != 0
    assert "error: rank 0: another rank of the run is gone" in r.stderr and "gloo/transport" not in r.stderr, r.stderr
    assert torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["step"] == 2  # the last checkpoint stands


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    store = tiny_store(tmp_path / "store", nan_episodes={6})
    cfg = TrainConfig(store=store, out=tmp_path / "run", preset="ac_test", frames=4, steps=200, batch_size=2,
                      ckpt_every=1, val_every=0, workers=0, val_fraction=0.0)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step (\d+)") as e:
        run_train(cfg)
    step = int(str(e.value).split("step ")[1].split(";")[0])
    assert step > 1
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ckpt["step"] == step - 1
    assert all(torch.isfinite(v).all() for v in ckpt["predictor"].values())


def test_a_rerun_after_a_crash_before_the_first_checkpoint_keeps_val_csv_readable(tmp_path):
    """The step-0 validation was written, the run died before its first checkpoint and was run again from step 0:
    val.csv starts over with its header, so a later resume can read it."""
    from train.loop import MetricsLog

    v = {"tf_l1": 0.5, "rollout_l1": [0.6], "copy_l1": [0.7]}
    for start, steps in ((0, [0]), (0, [0, 200]), (200, [])):  # crash, rerun, resume at 200
        log = MetricsLog(tmp_path, start)
        for step in steps:
            log.val(step, v)
        log.close()
    rows = list(csv.DictReader(open(tmp_path / "val.csv")))
    assert [r["step"] for r in rows] == ["0", "200"] and rows[0]["copy_l1_h1"] == "0.7"


def test_store_that_does_not_fit_is_refused(tmp_path):
    a = tiny_store(tmp_path / "a", dim=16)
    b = tiny_store(tmp_path / "b", dim=8)
    base = dict(preset="ac_test", frames=4, steps=2, batch_size=2, workers=0, val_every=0)
    run_train(TrainConfig(store=a, out=tmp_path / "run", **base))
    with pytest.raises(UserError, match=r"trained on \{'feature_dim': 16\}, the store .* holds \{'feature_dim': 8\}"):
        run_train(TrainConfig(store=b, out=tmp_path / "run", resume=True, **{**base, "steps": 4}))
    with pytest.raises(UserError, match="the predictor takes 16-dim features, not 8-dim ones"):
        load_predictor_weights(ACPredictor(8, (2, 2), PREDICTOR_PRESETS["ac_test"]), tmp_path / "run" / "latest.pt")
    # fine-tuning on features of another encoder: the feature adapters start afresh, the blocks carry over
    result = run_train(TrainConfig(store=b, out=tmp_path / "run2", init_from=tmp_path / "run" / "latest.pt", **base))
    assert result.reinitialised == ["predictor_embed.bias", "predictor_embed.weight", "predictor_proj.bias",
                                    "predictor_proj.weight"]
    with pytest.raises(UserError, match="unknown predictor preset"):
        run_train(TrainConfig(store=b, out=tmp_path / "run3", **{**base, "preset": "ac_huge"}))


def test_activation_checkpointing_gives_the_same_losses_and_gradients(tmp_path):
    """Recomputing the blocks in backward saves memory and changes no number: the losses and every
    gradient of a rollout over all frames equal those without it, and so does a training run."""
    z, a, s = inputs(t=5)
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = ACPredictor(24, (2, 3), PREDICTOR_PRESETS["ac_test"], activation_checkpointing=checkpointing)
        with mock.patch("model.predictor.checkpoint", wraps=checkpoint) as recompute:
            losses = training_losses(model.train(), z, a[:, :-1], s, rollout_steps=4)
        assert recompute.called == checkpointing
        losses["loss"].backward()
        runs.append(({k: v.detach() for k, v in losses.items()},
                     {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (losses, grads), (losses_ckpt, grads_ckpt) = runs
    assert all(torch.allclose(losses[k], losses_ckpt[k], rtol=1e-6, atol=0) for k in losses)
    assert grads.keys() == grads_ckpt.keys() and all(g is not None for g in grads.values())
    assert all(torch.allclose(grads[n], grads_ckpt[n], rtol=1e-5, atol=1e-8) for n in grads)

    store = tiny_store(tmp_path / "store", episodes=4)
    base = dict(store=store, preset="ac_test", frames=5, rollout_steps=4, steps=2, batch_size=2, workers=0,
                val_every=0)
    plain = run_train(TrainConfig(out=tmp_path / "plain", **base))
    ckpt = run_train(TrainConfig(out=tmp_path / "ckpt", activation_checkpointing=True, **base))
    rows, rows_ckpt = (np.array(read_losses(tmp_path / run), float) for run in ("plain", "ckpt"))
    assert rows.shape == (2, 5) and np.allclose(rows, rows_ckpt, rtol=1e-5, atol=0)
    weights, weights_ckpt = plain.model.state_dict(), ckpt.model.state_dict()
    assert all(torch.allclose(weights[k], weights_ckpt[k], rtol=1e-5, atol=1e-7) for k in weights)


def test_training_on_the_demo_store_beats_copy_last(demo_run, demo_store):
    """`make train` in small: the validation loss falls and the model beats copy-last at h = 1."""
    run, _ = demo_run
    with open(run / "val.csv") as f:
        val = list(csv.DictReader(f))
    first, last = val[0], val[-1]
    assert (int(first["step"]), int(last["step"])) == (0, DEMO_STEPS)
    assert float(last["tf_l1"]) < 0.6 * float(first["tf_l1"])  # from the untrained model
    assert float(last["rollout_l1_h1"]) < float(last["copy_l1_h1"])
    store = open_store(demo_store)
    assert store.config.preset == "vit_demo" and store.config.camera == "wrist"
