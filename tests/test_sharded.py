"""The policy sharded with FSDP2 over two processes (gloo) trains exactly as one process does: same
gradients, same parameters after several steps, for every loss aggregation and both ratio levels;
and a checkpoint of the sharded policy resumes in one process to the same parameters."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rlwhf.config import AlgoConfig, TrainConfig
from rlwhf.train.distributed import rank_micro_batches, rank_rows

CASES = [
    ("token_mean", "token"),
    ("seq_mean_token_mean", "token"),
    ("seq_mean_token_sum_norm", "token"),
    ("seq_mean_token_mean", "sequence"),
]
STEPS = 3


def batches():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_policy import uneven_batch

    return [uneven_batch(seed=s, n=12) for s in range(STEPS)]


def train(model_path, loss_agg, ratio_level, mesh=None, capture=None, resume_from=None, steps=STEPS):
    from rlwhf.train.policy import PolicyTrainer

    torch.manual_seed(0)
    algo = AlgoConfig(loss_agg=loss_agg, ratio_level=ratio_level, kl_coef=0.05, entropy_coef=0.01)
    # micro-batches of up to 24 padded tokens: several per rank, and the ranks' counts differ
    # adam_eps near the gradients' scale: with a tiny eps, Adam turns a 1e-9 difference in a near-zero
    # gradient (float summation order) into a 1e-4 step, and the runs drift apart for no real reason.
    train_cfg = TrainConfig(
        learning_rate=1e-3, adam_eps=1e-3, warmup_steps=0, minibatch_size=6, micro_batch_tokens=24, logits_chunk_mib=1
    )
    policy = PolicyTrainer(model_path, algo, train_cfg, temperature=0.8, max_new_tokens=16, mesh=mesh)
    if resume_from:
        policy.load_trainer_state(resume_from)
    if capture is not None:

        def grads(opt, args, kwargs):
            capture.append(
                {
                    n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                    for n, p in policy.model.named_parameters()
                    if p.grad is not None
                }
            )

        policy.optimizer.register_step_pre_hook(grads)
    for batch in batches()[:steps]:
        policy.train_on(batch)
    return policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_worker(rank, world, port, model_path, loss_agg, ratio_level, out_dir):
    torch.set_num_threads(1)
    from rlwhf.train.distributed import init_group

    mesh = init_group(rank, world, "127.0.0.1", port, torch.device("cpu"))
    captured = []
    policy = train(model_path, loss_agg, ratio_level, mesh=mesh, capture=captured)
    weights = policy.full_state_dict()  # every rank calls it; rank 0 receives the whole
    policy.save(os.path.join(out_dir, "ckpt"), {"step": STEPS})
    if rank == 0:
        torch.save({"weights": weights, "grads": captured}, os.path.join(out_dir, "sharded.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("loss_agg, ratio_level", CASES)
def test_two_sharded_processes_train_like_one(tiny_model, tmp_path, loss_agg, ratio_level):
    mp.spawn(sharded_worker, args=(2, free_port(), tiny_model, loss_agg, ratio_level, str(tmp_path)), nprocs=2)
    sharded = torch.load(tmp_path / "sharded.pt")
    grads = []
    single = train(tiny_model, loss_agg, ratio_level, capture=grads)
    rng_after_single = torch.get_rng_state()
    assert len(grads) == len(sharded["grads"]) == 2 * STEPS  # two minibatches a step
    for one, two in zip(grads, sharded["grads"]):
        for name, g in one.items():
            assert torch.allclose(g, two[name], atol=1e-5 * float(g.abs().max()) + 1e-9), name
    whole = single.full_state_dict()
    for name, value in whole.items():
        assert torch.allclose(value, sharded["weights"][name], atol=1e-5), name
    # The sharded run's checkpoint resumes in one process: one more step matches the single run's.
    resumed = train(str(tmp_path / "ckpt"), loss_agg, ratio_level, resume_from=str(tmp_path / "ckpt"), steps=1)
    continued = single
    torch.set_rng_state(rng_after_single)  # the minibatch order: the resumed run drew it from this state too
    continued.train_on(batches()[0])
    for name, value in continued.full_state_dict().items():
        assert torch.allclose(value, resumed.full_state_dict()[name], atol=1e-5), name


def test_rows_split_by_tokens_and_every_rank_runs_as_many_passes():
    lengths = [30, 5, 5, 5, 28, 6, 7, 29]
    shares = rank_rows(lengths, 2)
    assert sorted(i for s in shares for i in s) == list(range(8))
    assert abs(sum(lengths[i] for i in shares[0]) - sum(lengths[i] for i in shares[1])) <= 30
    plans = [rank_micro_batches(lengths, 30, 2, r) for r in (0, 1)]
    assert len(plans[0]) == len(plans[1])  # the lighter rank runs empty passes (None) to keep in step
    assert [w for _, w in plans[0]] == [w for _, w in plans[1]]
    assert rank_rows(lengths, 1) == [list(range(8))]
