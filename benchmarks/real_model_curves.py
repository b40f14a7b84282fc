"""The curves of a real-model run for docs/: reward, held-out accuracy and response length per step
(``rlwhf.traces.plot_curves``), and the answer format the model uses, per step, over its training
samples: how often the ``auto`` extractor finds the answer as a bare number (a closing phrase such
as "The answer is 56." or an equation "7 * 8 = 56"), and how often the completion is prose that
ends without one.

    .venv/bin/python benchmarks/real_model_curves.py runs/smollm2-arithmetic docs/smollm2_curves.png
"""

from __future__ import annotations

import re
import sys

from rewards.gym import extract_answer
from rlwhf import traces

NUMBER = re.compile(r"-?\d+")


def answer_format(text: str) -> str:
    """'number' when the extracted answer is a bare integer, else 'other' (prose, nothing found)."""
    answer = extract_answer(text)
    return "number" if answer is not None and NUMBER.fullmatch(answer.replace(",", "")) else "other"


def main(run_dir: str, out: str) -> None:
    metrics = traces.load_metrics(run_dir)
    samples = traces.load(run_dir)
    samples["format"] = samples["completion"].map(answer_format)
    share = samples.groupby("step")["format"].apply(lambda f: (f == "number").mean())
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18.4, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    traces.plot_curves(metrics, traces.reward_weights(run_dir), ax=list(axes[:3]))
    axes[3].plot(share.index, share.values, color="tab:blue")
    axes[3].set(title="answers given as a bare number", xlabel="step", ylabel="share of samples", ylim=(0, 1.05))
    fig.savefig(out, dpi=90)
    print(
        f"wrote {out}: bare-number answers {share.iloc[0]:.2f} at step {share.index[0]}, "
        f"{share.iloc[-1]:.2f} at step {share.index[-1]}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
