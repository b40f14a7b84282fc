"""Multi-turn episodes: the model acts, a tool or an environment answers, the model goes on.

``EpisodeRunner`` wraps a rollout engine and is one itself: ``generate`` runs, for every prompt, ``n``
episodes of up to ``max_turns`` model turns. A turn is one request to the engine, stopped at a tool
call (``environment.stop``), at the end of the model's message, or at its token budget; the
environment's ``step`` then answers (in a thread pool, so tools run side by side), and the answer is
appended to the episode as token ids. Only the episodes still going take part in the next turn's
request, so an episode that ended costs nothing more; the engine batches each turn's requests.

Token in, token out: every turn's request is the prompt's token ids followed by all the episode's
ids so far, exactly as sampled or appended, never decoded and re-encoded; an observation is
tokenized once, when it is appended. ``Completion.mask`` is 1 on the model's tokens and 0 on the
observation's (log-prob 0.0 there), so the trainer's loss, old log-probs, importance weights and
router metrics cover the model's tokens only.

How an observation is framed: for a conversational prompt, as the chat template's own ``tool`` (or
``user``) turn after the model's (the text the template puts between the model's message and the
next assistant turn: end of message, the tool's turn, the opening of the next assistant message);
for a text prompt, a tool's result in an output fence (`` ```output\\n...\\n```\\n``) and an
environment's reply as a line of its own.

Limits: ``max_turns`` model turns (the environment still answers the last one, so a game can end and
pay there, but nothing more is appended: a tool call in it is cut, ``cut="max_turns"``); ``max_total_tokens`` over the whole episode, observations included (a turn's
budget is the smaller of ``max_new_tokens`` and what is left; an observation that leaves no room for
the model to answer ends the episode before it is appended, ``cut="max_total_tokens"``). An episode
always ends with the model's turn, so a reward never reads a tool's output as the model's answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rlwhf.data.prompts import RENDERED_KEYS
from rlwhf.data.rows import is_conversation
from rlwhf.rollout.base import Completion, Group, Prompt, SamplingSettings, prompt_seeds
from rlwhf.tools import Environment, Step, ToolEnvironment, get_tool, load_environment

_MARK = "\x00rlwhf-turn\x00"


@dataclasses.dataclass
class Turn:
    """One turn of an episode: the model's (``role`` assistant, trained on) or an observation's
    (``tool`` or ``user``, masked out), with its token ids as they are in the episode."""

    role: str
    text: str
    token_ids: list[int]
    tool: str | None = None
    status: str | None = None  # a tool's: ok, error, timeout, refused, unknown_tool, flood
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EpisodeOptions:
    """How episodes run (``rollout.*`` of a recipe): see ``rlwhf.config.RolloutConfig``."""

    tools: list[str] = dataclasses.field(default_factory=list)
    environment: str | None = None
    environment_kwargs: dict = dataclasses.field(default_factory=dict)
    turn_stop: list[str] = dataclasses.field(default_factory=list)
    max_turns: int = 4
    max_total_tokens: int = 256
    tool_timeout_s: float = 5.0
    max_observation_chars: int = 1000
    tool_threads: int = 8

    def environments(self) -> Callable[[], Environment]:
        """A factory of one fresh environment per episode."""
        if self.environment:
            return load_environment(self.environment, self.environment_kwargs)
        tools = [get_tool(name) for name in self.tools]
        return lambda: ToolEnvironment(tools, self.tool_timeout_s, self.max_observation_chars)


class _Episode:
    def __init__(self, prompt_ids: list[int], seed: int | None, conversational: bool, env: Environment):
        self.prompt_ids, self.seed, self.conversational, self.env = prompt_ids, seed, conversational, env
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.mask: list[int] = []
        self.turns: list[Turn] = []
        self.routes: list[np.ndarray] = []
        self.finish, self.cut, self.env_reward = "stop", None, 0.0
        self.done = False

    def append(self, turn: Turn, logprobs: list[float] | None) -> None:
        self.turns.append(turn)
        self.ids += turn.token_ids
        trained = logprobs is not None
        self.logprobs += logprobs if trained else [0.0] * len(turn.token_ids)
        self.mask += [1 if trained else 0] * len(turn.token_ids)

    def end(self, finish: str, cut: str | None = None) -> None:
        self.done, self.finish, self.cut = True, finish, cut

    def completion(self) -> Completion:
        return Completion(
            "".join(t.text for t in self.turns),
            self.ids,
            self.logprobs,
            self.finish,
            routes=_merged_routes(self.routes),
            mask=self.mask,
            turns=self.turns,
            cut=self.cut,
            env_reward=self.env_reward,
        )


def _merged_routes(parts: list[np.ndarray]) -> np.ndarray | None:
    """An episode's routes from its turns' requests: the last request saw every position but the
    ones its prefix cache skipped (-1); an earlier request's computation fills those."""
    if not parts or any(p is None for p in parts):
        return None
    out = parts[-1].copy()
    for earlier in reversed(parts[:-1]):
        n = min(len(earlier), len(out))
        unknown = out[:n] == -1
        out[:n][unknown] = earlier[:n][unknown]
    return out


def turn_seed(seed: int | None, sample: int, turn: int) -> int | None:
    """Sample ``sample``'s seed for turn ``turn`` of its episode, from its prompt's seed."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.blake2b(f"{seed}/{sample}/{turn}".encode(), digest_size=4).digest(), "little")


def observation_ids(tokenizer, text: str, role: str, conversational: bool, after_eos: bool) -> list[int]:
    """The token ids that put ``text`` into an episode as a ``role`` turn (``tool`` or ``user``): for a
    prompt framed by a chat template, what the template puts between the model's message and the next
    assistant turn (less the end of message when the model's turn already ended with it,
    ``after_eos``); otherwise, or when the template frames turns with nothing (the tiny model's
    ``plain`` one), a tool's answer in an output fence and any other as a line of its own."""
    framed = None
    if conversational and tokenizer.chat_template:
        messages = [{"role": "user", "content": "-"}, {"role": "assistant", "content": _MARK}]
        rendered = tokenizer.apply_chat_template(
            [*messages, {"role": role, "content": text}], tokenize=False, add_generation_prompt=True
        )
        framed = rendered.split(_MARK, 1)[1]
        if after_eos and tokenizer.eos_token and framed.startswith(tokenizer.eos_token):
            framed = framed[len(tokenizer.eos_token) :]  # the model's own end of message is in the episode already
        if framed.strip() == text.strip():
            framed = None
    if framed is None:
        framed = (
            f"```output\n{text.rstrip()}\n```\n" if role == "tool" else text if text.endswith("\n") else text + "\n"
        )
    return tokenizer.encode(framed, add_special_tokens=False)


class EpisodeRunner:
    """A rollout engine whose completions are multi-turn episodes (see the module docstring)."""

    def __init__(self, engine, options: EpisodeOptions):
        self.engine, self.options = engine, options
        self.tokenizer = engine.tokenizer
        self.make_environment = options.environments()
        self.pool = ThreadPoolExecutor(options.tool_threads, thread_name_prefix="rlwhf-tool")

    def __getattr__(self, name):  # update_weights, set_routing_bias, weight transfer, close: the engine's
        return getattr(self.__dict__["engine"], name)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        getattr(self.engine, "close", lambda: None)()

    def generate(self, prompts: list[Prompt], sampling: SamplingSettings) -> list[Group]:
        opts, tok = self.options, self.tokenizer
        prompt_ids = [tok.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        rows = sampling.rows or [{} for _ in prompts]
        seeds = sampling.prompt_seeds or prompt_seeds(sampling.seed, len(prompts))
        episodes = [
            _Episode(ids, turn_seed(seed, k, 0), _chat(row), self.make_environment())
            for ids, seed, row in zip(prompt_ids, seeds, rows)
            for k in range(sampling.n)
        ]
        openings = list(
            self.pool.map(
                lambda e: e[0].env.reset(_columns(e[1])), zip(episodes, [r for r in rows for _ in range(sampling.n)])
            )
        )
        for ep, opening in zip(episodes, openings):
            if opening:
                ids = observation_ids(tok, opening, "user", ep.conversational, after_eos=False)
                ep.append(Turn("user", tok.decode(ids), ids), None)
        stop = [*(getattr(episodes[0].env, "stop", None) or [] if episodes else []), *opts.turn_stop]
        for turn in range(opts.max_turns):
            for ep in episodes:
                if not ep.done and len(ep.ids) >= opts.max_total_tokens:
                    ep.end("length", "max_total_tokens")
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            budgets = [min(sampling.max_new_tokens, opts.max_total_tokens - len(ep.ids)) for ep in active]
            groups = self.engine.generate(
                [ep.prompt_ids + ep.ids for ep in active],
                dataclasses.replace(
                    sampling,
                    n=1,
                    prompt_seeds=[turn_seed(ep.seed, 0, turn) for ep in active],
                    max_new_tokens=max(budgets),
                    max_new_tokens_each=budgets,
                    stop=stop or None,
                    rows=None,
                ),
            )
            stepping = []
            for ep, group in zip(active, groups):
                c = group.completions[0]
                ep.append(Turn("assistant", c.text, list(c.token_ids)), list(c.logprobs))
                ep.routes.append(c.routes)
                if c.finish_reason == "length":
                    ep.end("length", "max_total_tokens" if len(ep.ids) >= opts.max_total_tokens else "max_new_tokens")
                else:
                    stepping.append((ep, c))
            steps: list[Step] = list(self.pool.map(lambda pair: pair[0].env.step(pair[1].text), stepping))
            for (ep, c), step in zip(stepping, steps):
                ep.env_reward += step.reward
                if step.done:
                    ep.end("stop")
                    continue
                if turn + 1 == opts.max_turns:
                    ep.end("length", "max_turns")
                    continue
                if step.observation is None:
                    continue
                ended_by_eos = bool(c.token_ids) and c.token_ids[-1] == tok.eos_token_id
                ids = observation_ids(tok, step.observation, step.role, ep.conversational, ended_by_eos)
                if len(ep.ids) + len(ids) >= opts.max_total_tokens:
                    ep.end("length", "max_total_tokens")
                    continue
                ep.append(
                    Turn(step.role, tok.decode(ids), ids, step.tool, step.status if step.tool else None, step.seconds),
                    None,
                )
        groups, i = [], 0
        for ids, prompt in zip(prompt_ids, prompts):
            text = prompt if isinstance(prompt, str) else tok.decode(ids)
            groups.append(Group(text, ids, [ep.completion() for ep in episodes[i : i + sampling.n]]))
            i += sampling.n
        return groups


def _chat(row: dict) -> bool:
    """Whether a prompt was framed by its chat template (``rlwhf.data.prompts``), so its episode frames
    observations with it too; a row never rendered: whether its prompt is a conversation."""
    return bool(row.get("prompt_chat", is_conversation(row.get("prompt"))))


def _columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in RENDERED_KEYS}


def answer_text(completion: Completion) -> str:
    """Where a completion's final answer is: an episode's last turn of the model's, else its text."""
    if completion.turns:
        own = [t.text for t in completion.turns if t.role == "assistant"]
        return own[-1] if own else ""
    return completion.text


def episode_stats(completion: Completion) -> dict:
    """What rewards receive about an episode (the ``episode`` column) and the metrics sum up: turns
    of the model, tool calls and their failures, observation tokens, the limit that cut it, the
    environment's reward."""
    turns = completion.turns or []
    calls = [t for t in turns if t.tool]
    return {
        "turns": sum(t.role == "assistant" for t in turns),
        "tool_calls": len(calls),
        "tool_errors": sum(t.status not in ("ok", None) for t in calls),
        "observation_tokens": sum(len(t.token_ids) for t in turns if t.role != "assistant"),
        "cut": completion.cut or "",
        "env_reward": completion.env_reward,
    }


def episode_metrics(completions: list[Completion], prefix: str = "episodes/") -> dict:
    """Multi-turn metrics over ``completions`` (empty when none is an episode): model turns, tool
    calls and the share of episodes with one, tool errors (by status), observation tokens, the share
    cut by each limit, and the tool calls' latency."""
    episodes = [c for c in completions if c.turns is not None]
    if not episodes:
        return {}
    stats = [episode_stats(c) for c in episodes]
    calls = [t for c in episodes for t in c.turns if t.tool]
    out = {
        f"{prefix}turns": float(np.mean([s["turns"] for s in stats])),
        f"{prefix}tool_calls": float(np.mean([s["tool_calls"] for s in stats])),
        f"{prefix}tool_use_frac": float(np.mean([s["tool_calls"] > 0 for s in stats])),
        f"{prefix}tool_errors": int(sum(s["tool_errors"] for s in stats)),
        f"{prefix}observation_tokens": float(np.mean([s["observation_tokens"] for s in stats])),
        f"{prefix}env_reward": float(np.mean([s["env_reward"] for s in stats])),
    }
    for limit in ("max_new_tokens", "max_turns", "max_total_tokens"):
        out[f"{prefix}cut/{limit}"] = float(np.mean([s["cut"] == limit for s in stats]))
    for status in sorted({t.status for t in calls} - {"ok"}):
        out[f"{prefix}tool_status/{status}"] = sum(t.status == status for t in calls)
    if calls:
        seconds = [t.seconds for t in calls]
        out[f"{prefix}tool_latency_p50_s"] = float(np.percentile(seconds, 50))
        out[f"{prefix}tool_latency_p99_s"] = float(np.percentile(seconds, 99))
    return out


def tool_calls(completions: list[Completion]) -> list[tuple[float, str]]:
    """Every tool call of these completions as ``(seconds, status)``."""
    return [(t.seconds, t.status) for c in completions if c.turns for t in c.turns if t.tool]


def tool_call_summary(calls: list[tuple[float, str]]) -> dict:
    """Tool calls (``tool_calls``) summed up for a run's ``summary.json``: how many, how many failed
    (by status), and their latency's median and 99th percentile."""
    if not calls:
        return {"calls": 0}
    seconds = [s for s, _ in calls]
    return {
        "calls": len(calls),
        "errors": sum(status != "ok" for _, status in calls),
        "latency_p50_s": round(float(np.percentile(seconds, 50)), 4),
        "latency_p99_s": round(float(np.percentile(seconds, 99)), 4),
        "by_status": {k: sum(status == k for _, status in calls) for k in sorted({status for _, status in calls})},
    }
