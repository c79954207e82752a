"""Meta-training ([OODPL] Alg. 1) and meta-test (Alg. 2): mechanics, validation, and the
acceptance experiment (item 7): meta-learning the reward beats a pooled Bradley–Terry reward on a
held-out domain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oodpl.core.bilevel import DomainData, MetaStepRecord, meta_test, meta_train
from oodpl.core.hypergrad import unrolled_hypergradient
from oodpl.core.losses import (
    bradley_terry_loss,
    policy_preference_loss,
    reward_weighted_regression_loss,
)

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads; on a loaded machine they cost 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def toy_domains(seed: int = 0):
    """Two domains of a 1-D regression toy: θ fits y ≈ x·θ with per-sample weights exp(φ·x)."""
    gen = torch.Generator().manual_seed(seed)

    def inner(theta, phi, batch):
        x, y = batch
        w = torch.softmax(x @ phi["a"], 0) * len(y)
        return torch.mean(w * (x @ theta["t"] - y) ** 2) + 0.1 * torch.sum(theta["t"] ** 2)

    def outer(theta, batch):
        x, y = batch
        return torch.mean((x @ theta["t"] - y) ** 2)

    def batch(shift: float):
        x = torch.randn(6, 2, generator=gen, dtype=DT)
        return x, x @ torch.tensor([1.0, -shift], dtype=DT)

    domains = {
        "a": DomainData(
            support=[batch(0.5) for _ in range(3)], query=[batch(0.5) for _ in range(2)]
        ),
        "b": DomainData(support=[batch(2.0) for _ in range(3)], query=[batch(2.0)]),
    }
    theta = {"t": torch.zeros(2, dtype=DT)}
    phi = {"a": torch.tensor([0.2, -0.1], dtype=DT)}
    return inner, outer, theta, phi, domains


def test_one_outer_step_is_sgd_on_the_mean_hypergradient():
    inner, outer, theta, phi, domains = toy_domains()
    phi_before = {k: v.clone() for k, v in phi.items()}
    result = meta_train(
        inner, outer, theta, phi, domains, steps=1, inner_steps=2, inner_lr=0.3, outer_lr=0.5
    )
    grads = [
        unrolled_hypergradient(
            inner, outer, theta, phi_before, list(d.support)[:2], next(iter(d.query)), lr=0.3
        )
        for d in domains.values()
    ]
    mean = (grads[0].grad["a"] + grads[1].grad["a"]) / 2
    assert torch.allclose(result.phi["a"], phi_before["a"] - 0.5 * mean, atol=1e-14)
    assert result.phi["a"] is phi["a"]  # updated in place
    (record,) = result.history
    assert record.domains == ["a", "b"]
    assert record.hypergrad_norm == pytest.approx(float(mean.norm()), rel=1e-12)
    assert record.outer_loss == pytest.approx((grads[0].outer_loss + grads[1].outer_loss) / 2)
    assert record.per_domain["b"]["inner_loss_first"] == grads[1].inner_losses[0]
    assert theta["t"].abs().sum() == 0  # theta_init is never modified


def test_batches_are_cycled_and_theta_reset_each_step():
    inner, outer, theta, phi, domains = toy_domains()
    seen = []

    def recording_inner(theta_, phi_, batch):
        seen.append(batch)
        return inner(theta_, phi_, batch)

    only_a = {"a": domains["a"]}
    support = list(domains["a"].support)
    meta_train(recording_inner, outer, theta, phi, only_a, steps=2, inner_steps=2, inner_lr=0.3)
    # each step: 2 forward inner steps, then the reverse product of step 0 (the last step's
    # graph is reused from the inner loop); step 1 continues the cycle
    order = [0, 1, 0, 2, 0, 2]
    assert [id(b) for b in seen] == [id(support[i]) for i in order]


def test_domain_sampling_callback_and_history():
    inner, outer, theta, phi, domains = toy_domains()
    records: list[MetaStepRecord] = []

    def callback(record):
        records.append(record)
        return record.step == 5  # stop after the 6th step

    options = {"inner_steps": 1, "inner_lr": 0.3, "domains_per_step": 1, "seed": 3}
    result = meta_train(inner, outer, theta, phi, domains, steps=50, callback=callback, **options)
    assert len(result.history) == 6 and records == result.history
    assert all(len(r.domains) == 1 for r in records)
    assert {r.domains[0] for r in records} == {"a", "b"}
    again = meta_train(inner, outer, theta, {"a": phi["a"].clone()}, domains, steps=6, **options)
    assert [r.domains for r in again.history] == [r.domains for r in records]
    assert len(result.outer_losses) == len(result.inner_losses) == len(result.hypergrad_norms) == 6


def test_adam_factories_clipping_and_parameters():
    inner, outer, theta, phi, domains = toy_domains()
    param = nn.Parameter(phi["a"].clone())
    options = {"steps": 3, "inner_steps": 2, "inner_lr": 0.3, "method": "first_order"}
    adam = lambda params: torch.optim.Adam(params, lr=0.05)  # noqa: E731
    result = meta_train(inner, outer, theta, {"a": param}, domains, outer_optimizer=adam, **options)
    assert result.phi["a"] is param and param.grad is None
    # Adam's first step moves every coordinate by ~lr regardless of the gradient's size
    assert not torch.allclose(param.detach(), phi["a"])
    clipped = {"a": phi["a"].clone()}
    options = {"steps": 1, "inner_steps": 2, "inner_lr": 0.3, "outer_lr": 1.0}
    meta_train(inner, outer, theta, clipped, domains, max_grad_norm=1e-3, **options)
    assert float((clipped["a"] - phi["a"]).norm()) == pytest.approx(1e-3, rel=1e-9)


def test_meta_training_lowers_the_training_outer_loss():
    inner, outer, theta, phi, domains = toy_domains(1)
    options = {"steps": 40, "inner_steps": 3, "inner_lr": 0.2, "outer_lr": 0.5, "method": "cg"}
    result = meta_train(inner, outer, theta, phi, domains, method_options={"terms": 5}, **options)
    assert result.outer_losses[-1] < result.outer_losses[0]


def test_meta_train_validates_its_arguments():
    inner, outer, theta, phi, domains = toy_domains()
    base = {"steps": 1, "inner_steps": 1, "inner_lr": 0.1}
    cases = [
        ({"domains": {}}, ValueError, "domains"),
        ({"domains": {"a": 3}}, TypeError, "domains\\['a'\\]"),
        ({"domains": {"a": DomainData(support=5, query=[])}}, TypeError, "support"),
        ({"steps": -1}, ValueError, "steps"),
        ({"inner_steps": 0}, ValueError, "inner_steps"),
        ({"inner_lr": 0.0}, ValueError, "inner_lr"),
        ({"outer_lr": -1.0}, ValueError, "outer_lr"),
        ({"method": "exact"}, ValueError, "method"),
        ({"domains_per_step": 3}, ValueError, "domains_per_step"),
        ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm"),
        ({"phi": {"a": phi["a"].clone().requires_grad_(True) * 2}}, ValueError, "leaf"),
        ({"theta_init": {"t": torch.zeros(2, dtype=torch.long)}}, TypeError, "theta_init"),
        ({"inner_loss": "rwr"}, TypeError, "inner_loss"),
    ]
    for override, error, name in cases:
        args = {"inner_loss": inner, "outer_loss": outer, "theta_init": theta, "phi": phi}
        args |= {"domains": domains} | base | override
        with pytest.raises(error, match=name):
            meta_train(**args)


def test_batch_sources_factories_iterators_and_exhaustion():
    inner, outer, theta, phi, domains = toy_domains()
    support = list(domains["a"].support)
    query = list(domains["a"].query)
    factory = DomainData(support=lambda: iter(support), query=lambda: (q for q in query))
    result = meta_train(
        inner, outer, theta, phi, {"a": factory}, steps=4, inner_steps=2, inner_lr=0.1
    )
    assert len(result.history) == 4
    one_shot = {"a": (iter(support), iter(query))}  # a (support, query) pair also works
    with pytest.raises(ValueError, match=r"domains\['a'\]\.support ran out"):
        meta_train(inner, outer, theta, phi, one_shot, steps=4, inner_steps=2, inner_lr=0.1)
    empty = {"a": DomainData(support=lambda: [], query=query)}
    with pytest.raises(ValueError, match="yields no batches"):
        meta_train(inner, outer, theta, phi, empty, steps=1, inner_steps=1, inner_lr=0.1)


def test_non_finite_hypergradient_stops_training():
    inner, outer, theta, phi, domains = toy_domains()

    def exploding(theta_, phi_, batch):
        return inner(theta_, phi_, batch) + 1e300 * torch.sum(phi_["a"] * theta_["t"]) ** 2

    with pytest.raises(FloatingPointError):
        meta_train(exploding, outer, theta, phi, domains, steps=1, inner_steps=2, inner_lr=0.1)


def test_meta_test_minimises_the_inner_loss_and_selects_the_best_iterate():
    inner, _, theta, phi, domains = toy_domains()
    support = list(domains["b"].support)
    result = meta_test(inner, theta, phi, support, steps=30, lr=0.1)
    assert len(result.losses) == 30 and len(result.selection_losses) == 31
    assert result.best_loss == min(result.selection_losses)
    assert result.best_loss < result.losses[0]
    assert not result.theta["t"].requires_grad
    # with a fixed selection set the choice is by the full training loss
    chosen = meta_test(
        inner, theta, phi, support, steps=30, lr=0.1, selection_batches=support, eval_every=5
    )
    assert len(chosen.selection_losses) == 7  # steps 0, 5, ..., 30
    full = [float(inner(chosen.theta, phi, b)) for b in support]
    assert sum(full) / 3 == pytest.approx(chosen.best_loss, rel=1e-12)


def test_meta_test_selection_guards_against_divergence():
    """lr too large for one direction: the loss first falls, then blows up; the lowest-loss
    iterate is returned. L = ½(10 θ_0² + θ_1²), lr 0.25: θ_0 grows ×1.5, θ_1 shrinks ×0.75."""

    def inner(theta, phi, batch):
        t = theta["t"]
        return 0.5 * (10 * t[0] ** 2 + t[1] ** 2) * phi["s"]

    theta = {"t": torch.tensor([1e-3, 1.0], dtype=DT)}
    phi = {"s": torch.tensor(1.0, dtype=DT)}
    result = meta_test(inner, theta, phi, [None], steps=30, lr=0.25)
    assert result.losses[-1] > result.losses[0]  # it diverged
    assert 0 < result.best_step < 30
    assert result.best_loss == min(result.selection_losses) < result.losses[0]
    t0, t1 = 1e-3 * (-1.5) ** result.best_step, 0.75**result.best_step
    assert torch.allclose(result.theta["t"], torch.tensor([t0, t1], dtype=DT))
    zero = meta_test(inner, theta, phi, [None], steps=0, lr=0.1)
    assert zero.best_step == 0 and torch.equal(zero.theta["t"], theta["t"])
    with pytest.raises(ValueError, match="lr"):
        meta_test(inner, theta, phi, [None], steps=1, lr=0.0)
    with pytest.raises(ValueError, match="selection_batches"):
        meta_test(inner, theta, phi, [None], steps=1, lr=0.1, selection_batches=[])
    with pytest.raises(TypeError, match="support"):
        meta_test(inner, theta, phi, 3, steps=1, lr=0.1)


# ---------------------------------------------------------------------------------------------
# Acceptance item 7: meta-learned reward vs pooled Bradley–Terry reward on a held-out domain.
# ---------------------------------------------------------------------------------------------
D_SHARED, D_DRIFT, N_CAND = 4, 4, 4
N_SUPPORT, N_PREF, BATCH = 1024, 256, 64  # 1024: RWR on the held-out data is not noise


def synthetic_domains(seed: int):
    """Three domains of prompts with 4 candidate responses; features ``f = [s, u]``.

    * gold reward of domain i: ``a·s + b_i·u`` — ``a`` shared, ``b_i`` the domain's drift;
      training domains drift the same way (``b_0 = b_1 = c``), the held-out one the other way
      (``b_2 = −c``);
    * fine-tuning (support) responses of domain i are drawn from ``p_i(y|x) ∝ exp(b_i·u)``:
      each domain's own data already carries its drift, not the shared quality;
    * preferences: pairs labelled by sampling from Bradley–Terry on the gold reward.
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(D_SHARED, generator=gen, dtype=DT)
    c = torch.randn(D_DRIFT, generator=gen, dtype=DT)
    a, c = 2 * a / a.norm(), 2 * c / c.norm()
    out = []
    for drift in (c, c, -c):

        def features(n):
            return torch.randn(n, N_CAND, D_SHARED + D_DRIFT, generator=gen, dtype=DT)

        support_feats = features(N_SUPPORT)
        probs = torch.softmax(support_feats[..., D_SHARED:] @ drift, -1)
        support_resp = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        pref_feats = features(N_PREF)
        gold = pref_feats[..., :D_SHARED] @ a + pref_feats[..., D_SHARED:] @ drift
        first_wins = torch.rand(N_PREF, generator=gen, dtype=DT) < torch.sigmoid(
            gold[:, 0] - gold[:, 1]
        )
        chosen = torch.where(first_wins, 0, 1)
        out.append(
            {"support": (support_feats, support_resp), "prefs": (pref_feats, chosen, 1 - chosen)}
        )
    return out, a, c


def policy_logps(theta, feats, responses):
    """Softmax policy over the candidates, ``π(y|x) ∝ exp(θ·f(x, y))``."""
    return torch.log_softmax(feats @ theta["w"], -1).gather(-1, responses[:, None]).squeeze(-1)


def rwr_inner(theta, phi, batch):
    """[OODPL] Eq. 10 with β = 1 and a linear reward ``r_φ = φ·f``."""
    feats, responses = batch
    logps = policy_logps(theta, feats, responses)
    rewards = feats[torch.arange(len(responses)), responses] @ phi["r"]
    return reward_weighted_regression_loss(logps, torch.ones_like(logps), rewards, beta=1.0)


def bt_outer(theta, batch):
    """[OODPL] Eq. 6–7: Bradley–Terry on the policy's log-probabilities."""
    feats, chosen, rejected = batch
    lw, ll = policy_logps(theta, feats, chosen), policy_logps(theta, feats, rejected)
    return policy_preference_loss(lw, torch.ones_like(lw), ll, torch.ones_like(ll))


def minibatches(tensors, seed: int):
    """Factory of shuffled minibatches (a new permutation each pass)."""
    gen = torch.Generator().manual_seed(seed)

    def factory():
        order = torch.randperm(len(tensors[0]), generator=gen)
        for start in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[start : start + BATCH]
            yield tuple(t[idx] for t in tensors)

    return factory


def pooled_bradley_terry_reward(domains) -> torch.Tensor:
    """The same linear reward fitted by BT on the pooled training-domain preferences."""
    feats = torch.cat([d["prefs"][0] for d in domains])
    chosen = torch.cat([d["prefs"][1] for d in domains])
    rows = torch.arange(len(chosen))
    f_w, f_l = feats[rows, chosen], feats[rows, 1 - chosen]
    phi = torch.zeros(D_SHARED + D_DRIFT, dtype=DT, requires_grad=True)
    optimizer = torch.optim.LBFGS([phi], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = bradley_terry_loss(f_w @ phi, f_l @ phi)
        loss.backward()
        return loss

    optimizer.step(closure)
    return phi.detach()


def held_out_outer_loss(reward: torch.Tensor, domain, theta_init) -> float:
    """Alg. 2 on the held-out domain with the frozen reward, then its preference loss."""
    adapted = meta_test(rwr_inner, theta_init, {"r": reward}, [domain["support"]], steps=40, lr=1.0)
    return float(bt_outer(adapted.theta, domain["prefs"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_meta_learned_reward_transfers_better_than_pooled_bradley_terry(seed):
    """Why the ordering is real: the inner optimum is ``π ∝ p_i exp(r/β)`` and ``p_i`` already
    carries domain i's drift, so the reward that is best *after adaptation* in every domain is
    the shared part ``a·s`` alone. Meta-learning (Alg. 1) finds it from the training domains; BT
    on pooled preferences also fits the training drift ``c·u``, which on the held-out domain
    (drift −c) cancels the drift that domain's own data provides."""
    torch.manual_seed(seed)
    domains, _, _ = synthetic_domains(seed)
    theta_init = {"w": torch.zeros(D_SHARED + D_DRIFT, dtype=DT)}
    phi = {"r": torch.zeros(D_SHARED + D_DRIFT, dtype=DT)}
    training = {
        f"train{i}": DomainData(
            support=minibatches(domains[i]["support"], 10 * seed + i),
            query=minibatches(domains[i]["prefs"], 10 * seed + i + 5),
        )
        for i in (0, 1)
    }
    options = {"steps": 60, "inner_steps": 10, "inner_lr": 1.0, "outer_lr": 0.5}
    result = meta_train(
        rwr_inner, bt_outer, theta_init, phi, training, method="unrolled", **options
    )
    pooled = pooled_bradley_terry_reward(domains[:2])
    held_out = domains[2]
    losses = {
        "meta-learned reward (Alg. 1)": held_out_outer_loss(result.phi["r"], held_out, theta_init),
        "pooled BT reward": held_out_outer_loss(pooled, held_out, theta_init),
        "no reward (plain SFT on the domain)": held_out_outer_loss(
            torch.zeros_like(pooled), held_out, theta_init
        ),
    }
    print(f"\nseed {seed}: held-out outer loss (policy BT, lower is better)")
    for name, value in losses.items():
        print(f"  {name:38s} {value:.4f}")
    meta_drift = float(result.phi["r"][D_SHARED:].norm())
    pooled_drift = float(pooled[D_SHARED:].norm())
    print(f"  |drift weights| meta {meta_drift:.3f}  pooled {pooled_drift:.3f}  (|c| = 2)")
    meta_loss = losses["meta-learned reward (Alg. 1)"]
    assert meta_loss < losses["pooled BT reward"] - 0.05
    assert meta_loss < losses["no reward (plain SFT on the domain)"] - 0.05
    assert meta_drift < 0.5 * pooled_drift  # the mechanism, not just the outcome
    assert result.outer_losses[-1] < result.outer_losses[0]
