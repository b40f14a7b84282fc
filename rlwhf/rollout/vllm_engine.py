"""vLLM rollout engine, with in-place weight updates.

Weight sync: vLLM 0.32's workers expose ``reload_weights(weights_iterator, is_checkpoint_format)``
(reached through ``LLM.collective_rpc``). Given weights in *checkpoint* layout it re-runs each
layer's post-load processing, which is what the CPU MoE backend needs: it repacks expert weights
into its own kernel layout at load time, so loading a plain ``load_weights`` over the live model
writes into tensors that no longer have the checkpoint's shapes. ``reload_weights`` alone is not
enough on CPU either: it leaves the experts unpacked and the LM head's packed copy stale, so after
it we re-run those layers' packing (``_repack_cpu_weights``). The trainer holds transformers'
fused in-memory layout (``experts.gate_up_proj``), so we first turn its state dict back into
checkpoint layout with transformers' ``revert_weight_conversion`` on a meta-device twin of the
model (no memory, no copy of the weights). That is ``update_weights``, for weights that come as
state dicts or object-store buckets; with ``weight_transfer`` the engine instead takes part in
vLLM's weight-transfer API (``rlwhf.sync.weight_transfer``), the trainer broadcasting into it.

The engine runs in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that weights
pass by reference, not through a pipe.

MoE routing (``record_routes``): vLLM 0.32 can return each token's experts
(``enable_return_routed_experts``) only with its V2 model runner, which needs Triton; the CPU build has
none, so that option is refused (vllm/config/vllm.py: "AuxOutput Connector requires Model Runner V2"
and "Model Runner V2 requires Triton"). We record the same thing ourselves: every fused-MoE layer's
router reports its logical top-k ids to a capture callback (``BaseRouter.set_capture_fn``), and the
model runner's state at that moment (which requests the batch's rows belong to, and each row's
position) says whose token each row is. The selection bias of auxiliary-loss-free balancing is applied
as the CPU router's custom routing function (``_install_bias``).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import torch

from rlwhf.rollout.base import (
    Completion,
    Group,
    Prompt,
    SamplingSettings,
    WeightBuckets,
    as_buckets,
    prompt_seeds,
)
from rlwhf.sync.cpu_repack import repack_cpu_weights
from rlwhf.train.routing import ROUTING_BIAS_FILE


def _prepare_environment(kv_cache_gib: float) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int = 512,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        record_routes: bool = False,
        prefix_caching: bool = True,
        compile: bool = False,
        weight_transfer: bool = False,
    ):
        _prepare_environment(kv_cache_gib)
        from transformers import AutoConfig, AutoModelForCausalLM
        from vllm import LLM

        # A context longer than the model's positions is refused by vLLM: clamp (the tiny model has 512).
        config = AutoConfig.from_pretrained(model_path)
        positions = getattr(config, "max_position_embeddings", None)
        if positions:
            max_model_len = min(max_model_len, positions)
        kwargs = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["tensor_parallel_size"] = tensor_parallel_size
        else:
            # With chunked prefill, a request whose prompt is split across scheduler steps samples a
            # token that is thrown away, and vLLM (gpu_model_runner._bookkeeping_sync) then rewinds
            # that request's seeded generator by its Philox offset; a CPU generator has no offset and
            # raises "CPU Generator does not use offset". Every prompt is prefilled whole instead, as
            # vLLM itself does on CPUs where chunking is unsupported; a step then takes whole prompts
            # up to its token budget, which must hold the longest one.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 4096)
            # Multi-head latent attention (DeepSeek-V3): on CPUs with AMX vLLM picks its AMX kernel,
            # which takes only 16-bit weights; in float32 the reference CPU kernel runs instead.
            if getattr(config, "kv_lora_rank", None) and dtype == "float32":
                kwargs["attention_backend"] = "CPU_MLA"
        if weight_transfer:  # weights arrive through vLLM's weight-transfer API (rlwhf.sync.weight_transfer)
            from rlwhf.sync.weight_transfer import backend_for, register_backends

            register_backends()
            kwargs["weight_transfer_config"] = {"backend": backend_for("cuda" if torch.cuda.is_available() else "cpu")}
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=not (torch.cuda.is_available() or compile),
            # Log-probs of the distribution actually sampled from (after temperature), as the
            # trainer computes them.
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=prefix_caching,
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        with torch.device("meta"):
            self._layout_twin = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
        self.recorder = None
        if record_routes:
            if self.llm.llm_engine.vllm_config.parallel_config.world_size != 1:
                raise ValueError(
                    "moe.rollout_routing records routes in the engine's own process: it needs "
                    "rollout.tensor_parallel_size 1"
                )
            self.recorder = self.llm.collective_rpc(_RouteRecorder.install)[0]
        bias_file = Path(model_path) / ROUTING_BIAS_FILE
        if bias_file.is_file():
            self.set_routing_bias(torch.load(bias_file))

    def close(self) -> None:
        """Stop the engine core and drop the engine; it runs in this process, so without this its
        threads and buffers live until the interpreter exits."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

    def set_routing_bias(self, bias: torch.Tensor) -> None:
        """Select experts with ``bias [layers, experts]`` added to the router's scores, as the trainer does."""
        self.llm.collective_rpc(_install_bias, args=(bias.float().cpu(),))

    def generate(self, prompts: list[Prompt], sampling: SamplingSettings) -> list[Group]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seeds = sampling.prompt_seeds or prompt_seeds(sampling.seed, len(prompts))
        budgets = sampling.max_new_tokens_each or [sampling.max_new_tokens] * len(prompts)
        stops = {"stop": list(sampling.stop), "include_stop_str_in_output": True} if sampling.stop else {}
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=budget,
                seed=seed,
                logprobs=0,
                **stops,
            )
            for seed, budget in zip(seeds, budgets)
        ]
        inputs = [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        if self.recorder is not None:
            self.recorder.steps.clear()
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        routes = self.recorder.take() if self.recorder is not None else {}
        groups = []
        for prompt, out in zip(prompts, outputs):
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)
            group = Group(prompt=text, prompt_ids=list(out.prompt_token_ids))
            for c in out.outputs:
                ids = list(c.token_ids)
                logprobs = [entry[tok].logprob for tok, entry in zip(ids, c.logprobs)]
                fed = len(group.prompt_ids) + len(ids) - 1  # the last token is sampled, never fed back
                group.completions.append(
                    Completion(
                        c.text,
                        ids,
                        logprobs,
                        _finish(c.finish_reason),
                        routes=self.recorder.routes_of(routes, out.request_id, c.index, fed)
                        if self.recorder is not None
                        else None,
                    )
                )
            groups.append(group)
        return groups

    def update_weights(self, buckets: WeightBuckets) -> None:
        from transformers.core_model_loading import revert_weight_conversion

        def checkpoint_layout():  # one bucket at a time, each turned into the checkpoint's names and shapes
            for bucket in as_buckets(buckets):
                yield from revert_weight_conversion(self._layout_twin, bucket).items()

        # The engine runs in this process, so vLLM can read the buckets as they arrive; several
        # workers (tensor parallel) need the whole list, sent to each.
        weights = (
            checkpoint_layout()
            if self.llm.llm_engine.vllm_config.parallel_config.world_size == 1
            else list(checkpoint_layout())
        )
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if not torch.cuda.is_available():
            self.llm.collective_rpc(_repack_cpu_weights)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights

    # -- the engine side of vLLM's weight-transfer API (``sync.weight_transfer.EnginesClient``) --
    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def receive_weights(self, update_info: dict) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self) -> None:
        self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()


def _moe_routers(model) -> list:
    """The routers of the model's fused-MoE layers, in layer order."""
    return [m.router for m in model.modules() if hasattr(getattr(m, "router", None), "set_capture_fn")]


class _RouteRecorder:
    """Keeps, for every forward of the engine, each fused-MoE layer's top-k expert ids and which
    request and position each row of the batch is (see the module docstring)."""

    def __init__(self, runner, layers: int):
        self.runner, self.layers = runner, layers
        self.steps: list[tuple[list[str], np.ndarray, np.ndarray, list]] = []

    @staticmethod
    def install(worker) -> _RouteRecorder:
        runner = worker.model_runner
        routers = _moe_routers(runner.get_model())
        recorder = _RouteRecorder(runner, len(routers))
        for layer, router in enumerate(routers):
            router.set_capture_fn(recorder._capture(layer))
        return recorder

    def _capture(self, layer: int):
        def capture(topk_ids: torch.Tensor) -> None:
            if layer == 0:
                runner = self.runner
                n = runner.input_batch.num_reqs
                starts = runner.query_start_loc.cpu[: n + 1].numpy().copy()
                positions = runner.positions[: int(starts[-1])].cpu().numpy().copy()
                self.steps.append((list(runner.input_batch.req_ids[:n]), starts, positions, [None] * self.layers))
            rows = len(self.steps[-1][2])
            self.steps[-1][3][layer] = topk_ids[:rows].to(torch.int16).cpu().numpy()

        return capture

    def take(self) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
        """Every sample's ``(positions, routes [rows, layers, k])`` recorded since ``steps`` was cleared,
        by ``(request id, sample index)``. vLLM names the requests of ``LLM.generate`` ``{id}-{suffix}``
        and the samples of an ``n > 1`` request ``{index}_{id}-{suffix}``."""
        per_request: dict[str, list] = {}
        for req_ids, starts, positions, layers in self.steps:
            if not len(positions) or any(x is None for x in layers):
                continue
            routes = np.stack(layers, axis=1)
            for i, req in enumerate(req_ids):
                a, b = starts[i], starts[i + 1]
                per_request.setdefault(req, []).append((positions[a:b], routes[a:b]))
        self.steps.clear()
        out = {}
        for req, parts in per_request.items():
            name = req.rsplit("-", 1)[0]
            child, _, parent = name.partition("_")
            key = (parent, int(child)) if parent else (name, 0)
            out[key] = (np.concatenate([p for p, _ in parts]), np.concatenate([r for _, r in parts]))
        return out

    @staticmethod
    def routes_of(recorded: dict, request_id: str, index: int, length: int) -> np.ndarray | None:
        """One sample's ``[length, layers, k]`` routes (-1 where no forward computed a position: a
        prefix-cache hit)."""
        if (request_id, index) not in recorded:
            return None
        positions, routes = recorded[(request_id, index)]
        out = np.full((length, *routes.shape[1:]), -1, dtype=np.int16)
        keep = positions < length
        out[positions[keep]] = routes[keep]  # a position computed twice (after a preemption): the last
        return out


def _install_bias(worker, bias: torch.Tensor) -> int:
    """Make each fused-MoE layer select its top-k by softmax score plus that layer's ``bias`` row,
    weighting the chosen experts by their unbiased scores (rlwhf.train.routing's softmax kind)."""
    routers = _moe_routers(worker.model_runner.get_model())
    if len(routers) != len(bias):
        raise ValueError(f"routing bias for {len(bias)} layers; the engine's model has {len(routers)} MoE layers")
    for router, row in zip(routers, bias):
        if not hasattr(router, "custom_routing_function") or getattr(router, "use_grouped_topk", False):
            raise NotImplementedError(
                f"an rlwhf selection bias on vLLM's {type(router).__name__} (only the CPU "
                "router's softmax top-k is steered here)"
            )
        router.custom_routing_function = _biased_softmax_topk(row)
    return len(routers)


def _biased_softmax_topk(bias: torch.Tensor):
    def route(hidden_states, gating_output, topk, renormalize):
        scores = torch.softmax(gating_output.float(), dim=-1)
        ids = torch.topk(scores + bias.to(scores.device), topk, dim=-1)[1]
        weights = scores.gather(1, ids)
        if renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights, ids.to(torch.int32)

    return route


def _repack_cpu_weights(worker) -> int:
    return repack_cpu_weights(worker.model_runner.get_model())


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"
