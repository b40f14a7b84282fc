"""transformers ``generate`` rollout engine: slower than vLLM, runs wherever transformers runs."""

from __future__ import annotations

from pathlib import Path

import torch

from rlwhf.rollout.base import Completion, Group, Prompt, SamplingSettings, WeightBuckets, as_buckets
from rlwhf.train.routing import ROUTING_BIAS_FILE, Routing


class HFEngine:
    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, batch_size: int = 64):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.model.config.output_router_logits = False
        self.routing = Routing(self.model)  # selects with the trainer's balancing bias, when it has one
        if (Path(model_path) / ROUTING_BIAS_FILE).is_file():
            self.routing.set_bias(torch.load(Path(model_path) / ROUTING_BIAS_FILE))
        self.seed = seed
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: SamplingSettings) -> list[Group]:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature == 0
        eos = self.tokenizer.eos_token_id
        prompt_ids = [self.tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompts]
        flat = [ids for ids in prompt_ids for _ in range(sampling.n)]
        results: list[Completion] = []
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            enc = self.tokenizer.pad({"input_ids": chunk}, return_tensors="pt", padding=True)  # on the left
            out = self.model.generate(
                **enc,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
            new_tokens = out.sequences[:, enc.input_ids.shape[1] :]
            logits = torch.stack(out.logits, dim=1).float()  # [b, t, V], before temperature
            if not greedy:
                logits = logits / sampling.temperature
            token_logprobs = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            for row, lp in zip(new_tokens.tolist(), token_logprobs.tolist()):
                length = row.index(eos) + 1 if eos in row else len(row)
                ids = row[:length]
                finish = "stop" if eos in ids else "length"
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                results.append(Completion(text, ids, lp[:length], finish))
        groups = []
        for i, (prompt, ids) in enumerate(zip(prompts, prompt_ids)):
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids)
            groups.append(Group(text, ids, results[i * sampling.n : (i + 1) * sampling.n]))
        return groups

    def set_routing_bias(self, bias: torch.Tensor) -> None:
        """Select experts with ``bias [layers, experts]`` added to the router's scores, as the trainer does."""
        self.routing.set_bias(bias)

    def update_weights(self, weights: WeightBuckets) -> None:
        missing = set(self.model.state_dict())
        for bucket in as_buckets(weights):
            self.model.load_state_dict(bucket, strict=False)
            missing -= set(bucket)
        if missing:
            raise ValueError(f"update_weights: no new value for {len(missing)} weights, e.g. {sorted(missing)[:3]}")
