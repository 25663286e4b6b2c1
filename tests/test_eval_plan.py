"""`eval` and `plan`: known-answer baselines, CEM on a known energy, planning on the demo model, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from model.checkpoint import RELEASED_META, ModelMeta, load_trained
from model.predictor import PREDICTOR_PRESETS, ACPredictor
from store import StoredEpisode, open_store, write_store
from tests.conftest import assert_one_error_line, cli_main, cli_ok
from train.config import CEMConfig, PlanConfig
from train.data import ClipDataset
from train.evaluate import evaluate
from train.losses import normalize
from train.plan import Planner, cem, search_space
from train.plan_report import run_plan

BASE = np.array([1.0, -1.0] * 4)  # zero mean, unit variance: layer norm leaves it (almost) as it is


def known_store(root: Path, episodes: int = 6) -> Path:
    """Frame t of every episode flips the signs of the first t pairs of each token's 8 values.

    So |LN(z_0) - LN(z_h)| averages h/2 and cos(z_0, z_h) = 1 - h/2, for h = 1..4.
    """
    data = []
    for e in range(episodes):
        frames = []
        for t in range(5):
            v = BASE.copy()
            v[:2 * t] *= -1
            frames.append(np.stack([v, -v]))
        states = np.random.default_rng(e).normal(0, 0.05, (5, 7)).astype(np.float32)
        data.append(StoredEpisode(torch.tensor(np.stack(frames)), states))
    return write_store(root, data, grid=(1, 2), codec="fp16")


def test_eval_baselines_on_a_known_store(tmp_path):
    store = open_store(known_store(tmp_path / "s"))
    clips = ClipDataset(store, store.ok_episodes, 5)
    torch.manual_seed(0)
    model = ACPredictor(8, (1, 2), PREDICTOR_PRESETS["ac_test"]).eval()
    report = evaluate(model, clips, torch.device("cpu"), batch_size=4)
    ln = 1 / math.sqrt(1 + 1e-5)  # layer norm's eps
    assert report["clips"] == 6
    assert np.allclose(report["copy_l1"], [0.5 * ln, 1.0 * ln, 1.5 * ln, 2.0 * ln], atol=1e-6)
    assert np.allclose(report["copy_cos"], [0.5, 0.0, -0.5, -1.0], atol=1e-6)
    assert np.allclose(report["copy_l1_se"], 0.0, atol=1e-7)  # every clip is the same
    assert np.allclose(report["shuffled_over_true"],
                       np.array(report["shuffled_rollout_l1"]) / np.array(report["rollout_l1"]))
    assert max(abs(r - 1) for r in report["zero_over_true"]) > 1e-4  # a random model does react to actions

    # a model blind to its actions: shuffled or zero actions change nothing
    with torch.no_grad():
        model.action_encoder.weight.zero_()
        model.action_encoder.bias.zero_()
    blind = evaluate(model, clips, torch.device("cpu"), batch_size=4)
    assert np.allclose(blind["shuffled_over_true"], 1.0) and np.allclose(blind["zero_over_true"], 1.0)


def test_cem_finds_the_minimum_of_a_shifted_quadratic():
    target = torch.tensor([0.03, -0.02, 0.05, 0.0, 0.0, 0.0, 0.4])

    def energy(a: torch.Tensor) -> torch.Tensor:
        return ((a[:, 0] - target) ** 2).sum(-1)

    cfg = CEMConfig(samples=200, iterations=12, elites=20, seed=1)
    plan = cem(energy, search_space(RELEASED_META, cfg, torch.zeros(7)), cfg, horizon=1)
    assert plan.actions.shape == (1, 7)
    assert torch.allclose(plan.actions[0], target, atol=3e-3), plan.actions
    assert plan.energy < 1e-4 and plan.evaluations == 200 * 12 + 1
    # outside the box: the plan ends on its edge (xyz clipped to +-maxnorm)
    far = torch.tensor([0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    cfg = CEMConfig(samples=200, iterations=12, elites=20)
    edge = cem(lambda a: ((a[:, 0] - far) ** 2).sum(-1), search_space(RELEASED_META, cfg, torch.zeros(7)), cfg)
    assert abs(float(edge.actions[0, 0]) - 0.075) < 1e-3


def test_cem_searches_all_dims_when_asked():
    target = torch.tensor([0.01, 0.02, -0.03, 0.1, -0.05, 0.2, 0.0])
    two_steps = torch.stack([target, -target])

    def energy(a: torch.Tensor) -> torch.Tensor:
        return ((a - two_steps) ** 2).sum((1, 2))

    cfg = CEMConfig(samples=300, iterations=15, elites=30, dims="all", seed=2)
    plan = cem(energy, search_space(RELEASED_META, cfg, torch.zeros(7)), cfg, horizon=2)
    assert torch.allclose(plan.actions, two_steps, atol=5e-3)
    cfg = CEMConfig(samples=300, iterations=15, elites=30, seed=2)
    only_xyzg = cem(energy, search_space(RELEASED_META, cfg, torch.zeros(7)), cfg, horizon=2)
    assert torch.all(only_xyzg.actions[:, 3:6] == 0)


@pytest.mark.parametrize("horizon,conditioning", [(1, "token"), (3, "token"), (6, "token"), (3, "concat")])
def test_cached_rollouts_give_the_same_energies(horizon, conditioning):
    """Incremental rollouts (keys and values of earlier steps kept) equal recomputing the whole sequence."""

    torch.manual_seed(0)
    model = ACPredictor(24, (2, 3), PREDICTOR_PRESETS["ac_test"], action_conditioning=conditioning).eval()
    g = torch.Generator().manual_seed(horizon)
    z0, goal = torch.randn(6, 24, generator=g), torch.randn(6, 24, generator=g)
    actions = torch.randn(16, horizon, 7, generator=g) * 0.05
    state = torch.tensor([0.5, 0.0, 0.1, 3.1, 0.0, 0.2, 0.5])
    cfg = CEMConfig(energy_batch=8)
    cached = Planner(model, RELEASED_META, cfg, torch.device("cpu")).energies(z0, state, goal, actions)
    full = Planner(model, RELEASED_META, cfg, torch.device("cpu"), cached=False).energies(z0, state, goal, actions)
    assert float((cached - full).abs().max()) < 1e-5 and float(full.std()) > 1e-4  # the actions matter


def test_energy_all_is_the_mean_of_each_prefix_s_last_frame_energy():
    """--energy all scores a sequence by every predicted frame: the mean of what --energy last gives its prefixes."""

    torch.manual_seed(0)
    model = ACPredictor(24, (2, 3), PREDICTOR_PRESETS["ac_test"]).eval()
    g = torch.Generator().manual_seed(5)
    z0, goal = torch.randn(6, 24, generator=g), torch.randn(6, 24, generator=g)
    actions = torch.randn(16, 3, 7, generator=g) * 0.05
    state = torch.tensor([0.5, 0.0, 0.1, 3.1, 0.0, 0.2, 0.5])
    last, every = (Planner(model, RELEASED_META, CEMConfig(energy=e), torch.device("cpu")) for e in ("last", "all"))
    prefixes = torch.stack([last.energies(z0, state, goal, actions[:, :k]) for k in (1, 2, 3)], 1)  # [16, 3]
    torch.testing.assert_close(every.energies(z0, state, goal, actions), prefixes.mean(1))
    assert float((prefixes[:, 2] - prefixes.mean(1)).abs().max()) > 1e-3  # the two energies differ


@pytest.mark.parametrize("energy", ["last", "all"])
def test_state_weight_adds_the_planned_state_s_distance_to_the_goal_state(energy):
    """--state-weight w: the feature energy plus w x mean |state after the same actions - goal state| / std."""

    torch.manual_seed(0)
    model = ACPredictor(24, (2, 3), PREDICTOR_PRESETS["ac_test"], state_dim=2, action_dim=2).eval()
    meta = ModelMeta("ac_test", 24, (2, 3), 2, 2, "state-delta", stats={"state": {"std": [2.0, 0.5]}})
    g = torch.Generator().manual_seed(7)
    z0, goal = torch.randn(6, 24, generator=g), torch.randn(6, 24, generator=g)
    actions = torch.randn(16, 3, 2, generator=g)
    state, goal_state = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0])
    plain, weighed = (Planner(model, meta, CEMConfig(energy=energy, state_weight=w), torch.device("cpu"))
                      for w in (0.0, 0.3))
    after = state + actions.cumsum(1)  # [16, 3, 2]: state-delta moves the state by each action
    if energy == "last":
        after = after[:, -1:]
    state_term = ((after - goal_state) / torch.tensor([2.0, 0.5])).abs().mean((1, 2))  # [16]
    want = plain.energies(z0, state, goal, actions) + 0.3 * state_term
    torch.testing.assert_close(weighed.energies(z0, state, goal, actions, goal_state), want)
    with pytest.raises(UserError, match="needs the goal's state"):
        weighed.plan(z0, state, goal, 3)


def test_eval_cli_on_the_demo_model(demo_run, demo_store, tmp_path):
    from train.evaluate import EvalReport

    run, _ = demo_run
    cli_ok("eval", "--checkpoint", run / "latest.pt", "--store", demo_store, "--out", tmp_path / "eval",
           "--max-clips", 48)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["clips"] == 48 and len(report["rollout_l1"]) == 3  # the 4-frame training clip
    assert (tmp_path / "eval" / "horizon.png").read_bytes()[:4] == b"\x89PNG"
    assert report["rollout_l1"][0] < report["copy_l1"][0]
    # the demo model uses its actions: other clips' actions make its rollouts worse
    assert np.mean(report["shuffled_over_true"]) > 1.02
    assert EvalReport(report, 8, tmp_path / "eval").uses_actions


def test_eval_verdict_follows_the_action_sensitivity(tmp_path):
    from train.evaluate import EvalReport

    def verdict(*ratios: float) -> str:
        return EvalReport({"shuffled_over_true": list(ratios)}, 8, tmp_path).verdict

    assert verdict(1.0, 1.01) == "the model barely uses its actions"
    assert "a little" in verdict(1.05, 1.10)  # BENCHMARKS.md's models at 1.10 did not plan
    assert "as much as the models that planned" in verdict(1.1, 1.3)


def test_offline_planning_beats_the_zero_action(demo_run, demo_store, tmp_path):
    run, _ = demo_run
    # demo moves are at most ~5 cm per stored frame: search +-5 cm (the reference wrapper's default)
    cli_ok("plan-eval", "--checkpoint", run / "latest.pt", "--store", demo_store, "--pairs", 16,
           "--samples", 100, "--iterations", 6, "--energy-batch", 100, "--maxnorm", 0.05, "--out", tmp_path / "pe")
    result = json.loads((tmp_path / "pe" / "report.json").read_text())
    m = result["mean"]
    assert result["pairs"] == 16
    assert m["xyz_error"] < m["zero_xyz_error"], m
    assert m["cosine"] > 0.3, m


def test_plan_with_landscape(demo_run, demo_store, tmp_path):
    run, _ = demo_run
    store = open_store(demo_store)
    episode = store.ok_episodes[0]
    png = tmp_path / "landscape.png"
    cli_ok("plan", "--checkpoint", run / "latest.pt", "--store", demo_store, "--episode", episode,
           "--start", 2, "--samples", 64, "--iterations", 3, "--landscape", png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    result = run_plan(PlanConfig(checkpoint=run / "latest.pt", store=demo_store, episode=episode, start=2,
                                 horizon=2, cem=CEMConfig(samples=64, iterations=3)))
    assert result.plan.actions.shape == (2, 7) and result.true_actions.shape == (2, 7)
    assert result.plan.evaluations == 64 * 3 + 1 and result.plan.seconds > 0
    assert torch.all(result.plan.actions[:, 3:6] == 0)  # rotations are not searched by default
    # the plotted grid: energy[b, a] is the energy of the action with the first dim at xs[a], the second at ys[b]
    model, meta, _ = load_trained(run / "latest.pt")
    planner = Planner(model, meta, CEMConfig(), torch.device("cpu"))
    z, state = normalize(store.read_window(episode, 2, 5)[0].float()), store.read_window(episode, 2, 1)[1][0]
    dims, xs, ys, energy = planner.landscape(z[0], state, z[4])
    for a, b in ((3, 15), (17, 4)):
        action = planner.space(state).mean.expand(1, 1, -1).clone()
        action[0, 0, dims[0]], action[0, 0, dims[1]] = xs[a], ys[b]
        torch.testing.assert_close(energy[b, a], planner.energies(z[0], state, z[4], action)[0], rtol=1e-4, atol=1e-6)


def test_plan_from_images(demo_run, demo_corpus, demo_store, tmp_path):
    """The robot-loop input: two camera images and a state, encoded with the run's (demo) encoder."""
    from PIL import Image

    from extract.corpora import DroidCorpus

    corpus = DroidCorpus(demo_corpus, camera="wrist")
    ep = corpus.load(corpus.sources()[0], 4)
    frames = ep.frames(slice(0, 2))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i}.png")
    run, _ = demo_run
    cli_ok("plan", "--checkpoint", run / "latest.pt", "--image", tmp_path / "0.png", "--goal-image",
           tmp_path / "1.png", "--state", ",".join(f"{v:.5f}" for v in ep.state[0]), "--samples", 64,
           "--iterations", 3)
    result = run_plan(PlanConfig(checkpoint=run / "latest.pt", image=tmp_path / "0.png", goal_image=tmp_path / "1.png",
                                 state=",".join(f"{v:.5f}" for v in ep.state[0]), cem=CEMConfig(samples=64, iterations=3)))
    assert result.plan.actions.shape == (1, 7) and result.true_actions is None and np.isfinite(result.plan.energy)
    # the same call as a robot loop makes it, from the images themselves
    from model.encoders import store_encoder

    model, meta, ckpt = load_trained(run / "latest.pt")
    planner = Planner(model, meta, CEMConfig(samples=64, iterations=3), torch.device("cpu"),
                      encoder=store_encoder(meta.encoder, None, ckpt))
    state = [float(f"{v:.5f}") for v in ep.state[0]]
    action = planner.act(np.asarray(Image.open(tmp_path / "0.png")), state, np.asarray(Image.open(tmp_path / "1.png")))
    assert np.allclose(action, result.plan.actions[0].numpy(), atol=1e-6)
    # the images are the store's first two rows of that episode: encoded here as the extraction encoded them
    stored = normalize(open_store(demo_store).read_window(0, 0, 2)[0].float())
    torch.testing.assert_close(planner.encode(list(frames)), stored, atol=0.05, rtol=0)  # bf16 storage


@pytest.mark.parametrize("args,message", [
    (["--episode", 999, "--start", 0], "episode 999 is not in a sealed shard"),
    (["--episode", 0, "--start", 5, "--goal", 5], "--goal must be after --start"),
    (["--episode", 0, "--start", 500], "--start 500 is outside episode 0"),
    (["--start", 0], "--store needs --episode"),
])
def test_plan_bad_input(demo_run, demo_store, args, message):
    run, _ = demo_run
    code, _, err = cli_main("plan", "--checkpoint", run / "latest.pt", "--store", demo_store, *args)
    assert_one_error_line(code, err, message)


def test_checkpoint_and_store_that_do_not_fit(demo_run, tmp_path):
    run, _ = demo_run
    other = known_store(tmp_path / "other")
    for cmd in (["eval"], ["plan", "--episode", 0, "--start", 0], ["plan-eval"]):
        code, _, err = cli_main(*cmd, "--checkpoint", run / "latest.pt", "--store", other)
        assert_one_error_line(code, err, "was trained on")
    code, _, err = cli_main("eval", "--checkpoint", tmp_path / "missing.pt", "--store", other)
    assert_one_error_line(code, err, "not found")
