"""The Ray actors' use of the cores: Ray gives an actor started with num_cpus=0 one OpenMP thread; the
policy and (transformers) rollout actors take every usable core in the synchronous loop, half in
one-step async mode, or the number `train.threads` names."""

import ray

from rlwhf.config import AlgoConfig, TrainConfig
from rlwhf.workers import PolicyWorker, RolloutWorker, cold_start_sft_task, remote, usable_cores


def torch_threads(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: __import__("torch").get_num_threads()))


def policy_actor(model, **train_overrides):
    return remote(PolicyWorker).remote(
        model, AlgoConfig(), TrainConfig(**train_overrides), temperature=1.0, max_new_tokens=8
    )


def test_policy_actor_uses_every_core_in_the_synchronous_loop(tiny_model, local_ray):
    assert torch_threads(policy_actor(tiny_model)) == usable_cores()


def test_policy_actor_leaves_half_the_cores_to_the_rollout_in_async_mode(tiny_model, local_ray):
    assert torch_threads(policy_actor(tiny_model, off_policy_steps=1)) == usable_cores(shared=True)


def test_train_threads_overrides_the_default(tiny_model, local_ray):
    assert torch_threads(policy_actor(tiny_model, threads=3)) == 3


def test_transformers_rollout_actor_uses_every_core(tiny_model, local_ray):
    assert torch_threads(remote(RolloutWorker).remote("hf", tiny_model)) == usable_cores()
    assert torch_threads(remote(RolloutWorker).remote("hf", tiny_model, shared_cores=True)) == usable_cores(True)


def test_cold_start_sft_task_uses_every_core(tiny_model, local_ray, tmp_path):
    from rlwhf.data.arithmetic import make_arithmetic

    rows = make_arithmetic(8, 0, 2, 2)
    threads = ray.get(
        cold_start_sft_task.remote(
            tiny_model, rows, str(tmp_path / "sft"), steps=2, batch_size=4, learning_rate=1e-3, seed=0
        )
    )
    assert threads == usable_cores()
    assert (tmp_path / "sft" / "config.json").exists()
