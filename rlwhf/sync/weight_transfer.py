"""Weight sync through vLLM's weight-transfer API (``sync.transport: collective``).

The other transport, ``object_store``, has rank 0 gather the whole model and put it in Ray's object
store in buckets for every engine to read. This one goes through vLLM 0.32's own interface for RL
trainers (``vllm.distributed.weight_transfer``): the trainer's rank 0 and every worker of every
engine form one process group, and each step rank 0 broadcasts the weights into the engines
tensor by tensor while vLLM's layerwise reload loads them:

- trainer side, on every policy rank: vLLM's ``NCCLTrainerWeightTransferEngine`` drives the round
  (``start_weight_update``, the broadcast running alongside the engines' ``update_weights``,
  ``finish_weight_update``), fed by ``CheckpointLayoutSource``: the policy's weights one decoder
  layer at a time (gathered from every FSDP rank, cast to the compute dtype, turned into the
  checkpoint's names and shapes), so no rank ever holds a second copy of the whole model;
- ``EnginesClient``: vLLM's ``VLLMWeightSyncClient`` protocol over the rollout engines' Ray actors.
  vLLM's own Ray client gives every engine the same ranks (it expects one data-parallel engine);
  here engine ``i`` of ``M`` independent ones takes ranks ``1 + i * tp`` onwards;
- engine side: on GPUs vLLM's ``nccl`` backend. vLLM has no CPU backend (NCCL and CUDA IPC only),
  so on CPUs the same round runs over gloo: ``GlooWeightTransferEngine`` (engine side, registered
  with vLLM's engine factory) and ``GlooTrainerWeightTransferEngine`` (trainer side, a subclass of
  vLLM's NCCL trainer engine that changes only how the group is opened and how a tensor is sent).
  After vLLM's layerwise reload the CPU backend's packed copies of the experts and the LM head are
  rebuilt (``rlwhf.sync.cpu_repack``), as after the object-store path's ``reload_weights``.

A restarted engine cannot rejoin a group in place: the driver reconnects every engine and the
trainer in a new group (``rlwhf.sync.CollectiveSync``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    WeightSource,
    WeightTransferEngine,
    layerwise_groups,
    materialize_full_tensor,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferUpdateInfo,
)

from rlwhf.sync.cpu_repack import repack_cpu_weights

GLOO_BACKEND = "rlwhf_gloo"
TIMEOUT = datetime.timedelta(minutes=10)


def backend_for(device_type: str) -> str:
    """The weight-transfer backend that the engines of a run on ``device_type`` use."""
    return "nccl" if device_type == "cuda" else GLOO_BACKEND


class GlooBroadcastGroup:
    """A gloo process group of its own (rank 0: the trainer), outside torch's default group, which
    the policy's FSDP ranks and vLLM's workers already use for themselves."""

    def __init__(self, address: str, port: int, rank: int, world_size: int):
        store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=TIMEOUT)
        self.group = dist.ProcessGroupGloo(dist.PrefixStore("rlwhf-weights", store), rank, world_size, TIMEOUT)
        self.store = store  # the store must outlive the group

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = src
        self.group.broadcast([tensor], options).wait()

    def destroy(self) -> None:
        self.group = self.store = None


# -- engine side -----------------------------------------------------------------------------------


class GlooWeightTransferEngine(WeightTransferEngine[NCCLWeightTransferInitInfo, NCCLWeightTransferUpdateInfo]):
    """vLLM's weight-transfer engine for CPU workers: the NCCL engine's init and update messages,
    one tensor at a time over gloo, loaded by vLLM's layerwise reload."""

    init_info_cls = NCCLWeightTransferInitInfo
    update_info_cls = NCCLWeightTransferUpdateInfo

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.group: GlooBroadcastGroup | None = None

    def init_transfer_engine(self, init_info: NCCLWeightTransferInitInfo) -> None:
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = GlooBroadcastGroup(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # nothing asynchronous to wait for on a CPU

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("weight transfer: init_weight_transfer_engine was not called")
        for name, dtype, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes):
            weight = torch.empty(shape, dtype=getattr(torch, dtype))
            self.group.broadcast(weight)
            self.model.load_weights([(name, weight)])

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        repack_cpu_weights(self.model)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.destroy()
            self.group = None


# -- trainer side ----------------------------------------------------------------------------------


@dataclass
class GlooTrainerInitInfo(NCCLTrainerInitInfo):
    backend: ClassVar[str] = GLOO_BACKEND
    packed: bool = False  # one broadcast per tensor: gloo has no streams to overlap packed buffers on


class GlooTrainerWeightTransferEngine(NCCLTrainerWeightTransferEngine):
    """vLLM's NCCL trainer engine (its update round, its checks that what is sent is what was
    announced) with a gloo group and a plain broadcast."""

    init_info_cls = GlooTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None) -> GlooTrainerWeightTransferEngine:
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, packed=False)
        if engine.is_sender:
            worker_info = NCCLWeightTransferInitInfo(
                master_address=init_info.master_address,
                master_port=init_info.master_port,
                rank_offset=1,
                world_size=init_info.world_size,
            )
            # The engines wait in the rendezvous until the trainer joins it too.
            with ThreadPoolExecutor(max_workers=1) as pool:
                joined = pool.submit(client.init_weight_transfer_engine, worker_init_payload(worker_info))
                engine.model_update_group = GlooBroadcastGroup(
                    init_info.master_address, init_info.master_port, 0, init_info.world_size
                )
                joined.result()
        return engine

    def _broadcast(self, source, meta) -> None:
        if not self.is_sender:
            for _ in source:  # the FSDP gathers are collectives of every policy rank
                pass
            return
        for _name, tensor in self._checked_iter(source, meta):
            self.model_update_group.broadcast(tensor.contiguous())


def register_backends() -> None:
    """Make the gloo backend known to vLLM's factories in this process (once)."""
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
    if GLOO_BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO_BACKEND, GlooTrainerWeightTransferEngine)


class CheckpointLayoutSource(WeightSource):
    """The policy's weights as vLLM loads them: one decoder layer at a time, each tensor gathered
    from every FSDP rank (``full_tensor``), cast to the compute dtype, and turned from transformers'
    in-memory layout (fused experts) into the checkpoint's names and shapes. Every policy rank
    iterates it in the same order (the gathers are collectives)."""

    def __init__(self, model, dtype: torch.dtype):
        from transformers.core_model_loading import revert_weight_conversion

        self.model, self.dtype, self._revert = model, dtype, revert_weight_conversion
        self.groups_in_memory = layerwise_groups(list(model.state_dict()))
        self._meta: list[ParamMeta] | None = None

    def _wire_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        return self.dtype if tensor.is_floating_point() else tensor.dtype

    def _checkpoint_layout(self, group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._revert(self.model, group)

    def metadata(self) -> list[ParamMeta]:
        if self._meta is None:  # the conversion run on meta tensors: shapes without data
            state = self.model.state_dict()
            self._meta = [
                ParamMeta(name, t.dtype, tuple(t.shape))
                for names in self.groups_in_memory
                for name, t in self._checkpoint_layout(
                    {n: torch.empty(state[n].shape, dtype=self._wire_dtype(state[n]), device="meta") for n in names}
                ).items()
            ]
        return self._meta

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        state = self.model.state_dict()
        for names in self.groups_in_memory:
            group = {}
            for name in names:
                tensor = materialize_full_tensor(state[name].detach())
                group[name] = tensor.to(self._wire_dtype(tensor))
            yield from self._checkpoint_layout(group).items()


class EnginesClient:
    """vLLM's ``VLLMWeightSyncClient`` over M rollout engines (``RolloutWorker`` actors), each of
    ``tp`` workers: every call goes to every engine and waits for all; engine ``i``'s workers join
    the group at ranks ``1 + i * tp`` onwards."""

    def __init__(self, engines: list, tp: int = 1):
        self.engines, self.tp = engines, tp

    @property
    def world_size(self) -> int:
        return 1 + len(self.engines) * self.tp

    def _all(self, method: str, *args) -> None:
        import ray

        ray.get([getattr(e, method).remote(*args) for e in self.engines])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        import ray

        ray.get(
            [
                e.init_weight_transfer_engine.remote({**init_info, "rank_offset": 1 + i * self.tp})
                for i, e in enumerate(self.engines)
            ]
        )

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info) -> None:
        self._all("receive_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


def connect(
    model, dtype: torch.dtype, engines: list, tp: int, *, rank: int, address: tuple[str, int] | None, device_type: str
):
    """The trainer side of the transfer group, on policy rank ``rank`` (every rank calls it; rank 0
    is the sender and gives the address). Returns vLLM's trainer engine: ``send_weights()`` each step."""
    register_backends()
    client = EnginesClient(engines, tp)
    info_cls = NCCLTrainerInitInfo if backend_for(device_type) == "nccl" else GlooTrainerInitInfo
    host, port = address if address is not None else ("", 0)
    init_info = info_cls(master_address=host, master_port=port, world_size=client.world_size, rank=rank)
    return WeightTransferTrainerFactory.trainer_init(
        init_info, client=client, source=CheckpointLayoutSource(model, dtype)
    )
