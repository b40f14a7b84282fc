"""Writes math_equiv_rlwhf.jsonl: rlwhf's own labelled (gold, model output, equivalent) pairs.

Hand-written pairs, one list per answer category, each answer wrapped in one of several
model-output styles (boxed, answer tags, closing phrases, think blocks), plus a few whole model
outputs written the way extraction must cope with (RAW). Labels are ours: a
pair is equivalent when a careful grader would pay the answer. Rerun after editing:
    python benchmarks/data/make_math_equiv_rlwhf.py
"""

import json
import random
from pathlib import Path

STYLES = [
    "Let me compute step by step.\nAfter simplifying we get\n\\[\\boxed{{{a}}}\\]",
    "<think>\nWork it out, check twice.\n</think>\n<answer>{a}</answer>",
    "We check the cases one by one.\nFinal Answer: The final answer is ${a}$. I hope it is correct.",
    "Combining the two equations gives the result.\n\n**Answer:** ${a}$",
    "So the answer is $\\boxed{{{a}}}$.",
    "<think>\nA first guess was $\\boxed{{7}}$ but that fails the check.\n</think>\nTherefore the answer is $\\boxed{{{a}}}$.",
]

PAIRS = {
    "integer": [
        ("42", "42", True),
        ("042", "42", True),
        ("-3", "-3", True),
        ("-3", "3", False),
        ("100", "100.0", True),
        ("17", "71", False),
        ("1024", "2^{10}", True),
        ("120", "5!", True),
        ("0", "-0", True),
        ("9", "9.5", False),
    ],
    "decimal": [
        ("0.75", "\\frac{3}{4}", True),
        ("0.75", "3/4", True),
        ("0.3", "\\frac{1}{3}", False),
        ("2.50", "2.5", True),
        ("0.125", "\\frac18", True),
        ("1.5", "1.05", False),
        ("\\frac{2}{3}", "0.666667", True),
        ("\\frac{2}{3}", "0.67", False),
    ],
    "fraction": [
        ("\\frac{6}{8}", "\\frac{3}{4}", True),
        ("\\dfrac{5}{2}", "2\\frac{1}{2}", True),
        ("\\frac{7}{3}", "\\frac{3}{7}", False),
        ("-\\frac{4}{9}", "\\frac{-4}{9}", True),
        ("\\frac{1}{2}+\\frac{1}{3}", "\\frac{5}{6}", True),
        ("\\frac{11}{4}", "2.75", True),
    ],
    "percent": [
        ("25\\%", "0.25", True),
        ("25\\%", "25", True),
        ("25\\%", "25 percent", True),
        ("12.5\\%", "\\frac{1}{8}", True),
        ("40\\%", "4", False),
        ("0.4", "40\\%", True),
    ],
    "thousands": [
        ("1234567", "1,234,567", True),
        ("25000", "25{,}000", True),
        ("3000", "3\\,000", True),
        ("3000", "300", False),
        ("12000.5", "12,000.5", True),
    ],
    "units": [
        ("12", "12 \\text{ cm}", True),
        ("7", "\\text{7 apples}", True),
        ("45", "\\$45", True),
        ("8", "8\\text{ meters}^2", True),
        ("30", "30 \\text{ minutes}", True),
        ("30", "3 \\text{ hours}", False),
        ("2.5", "2.5 \\text{ km}", True),
    ],
    "text": [
        ("\\text{yes}", "\\text{Yes}", True),
        ("\\text{no}", "\\text{yes}", False),
        ("\\text{Tuesday}", "Tuesday", True),
        ("\\text{Alice}", "\\text{Bob}", False),
    ],
    "choice": [
        ("B", "(B)", True),
        ("B", "\\text{(B)}", True),
        ("(C) 12", "C", True),
        ("D", "A", False),
        ("E", "\\textbf{E}", True),
    ],
    "latex": [
        ("\\frac{\\sqrt{2}}{2}", "\\dfrac{\\sqrt2}{2}", True),
        ("\\left(\\frac{1}{2}\\right)", "0.5", True),
        ("\\tfrac{3}{5}", "\\frac35", True),
        ("2^{10}", "2^10", True),
        ("\\frac{1}{4}", "\\frac14 ", True),
    ],
    "interval": [
        ("(-1, 3]", "(-1,3]", True),
        ("(-1, 3]", "[-1,3]", False),
        ("(-1,3]", "-1 < x \\le 3", True),
        ("[2,\\infty)", "x \\ge 2", True),
        ("[2, \\infty)", "(2, \\infty)", False),
        ("(-\\infty,0)\\cup(1,\\infty)", "(-\\infty, 0) \\cup (1, \\infty)", True),
        ("(-\\infty,0)\\cup(1,\\infty)", "(-\\infty, 0] \\cup (1, \\infty)", False),
        ("x < 4", "(-\\infty, 4)", True),
        ("x<4", "x>4", False),
    ],
    "set": [
        ("\\{1, 2, 5\\}", "\\{5, 2, 1\\}", True),
        ("\\{1, 2, 5\\}", "\\{1, 2\\}", False),
        ("\\{-1, 1\\}", "\\{1, -1\\}", True),
        ("\\{\\frac12, 2\\}", "\\{2, 0.5\\}", True),
    ],
    "tuple": [
        ("(1, 2)", "(1,2)", True),
        ("(1, 2)", "(2, 1)", False),
        ("(3, -1, 4)", "(3,-1,4)", True),
        ("(\\frac{1}{2}, 3)", "(0.5, 3)", True),
        ("(a,b)=(2,5)", "(2,5)", True),
    ],
    "multiple": [
        ("2, 3", "3, 2", True),
        ("2, 3", "2", False),
        ("x=2 \\text{ or } x=-2", "\\pm 2", True),
        ("1, -1, 4", "4, 1, -1", True),
        ("1, -1, 4", "1, -1, 5", False),
        ("2 \\pm \\sqrt{3}", "2+\\sqrt{3}, 2-\\sqrt{3}", True),
    ],
    "algebra": [
        ("x^2-9", "(x-3)(x+3)", True),
        ("(a+b)^2", "a^2+2ab+b^2", True),
        ("(a+b)^2", "a^2+b^2", False),
        ("\\frac{x^2-1}{x-1}", "x+1", True),
        ("2\\cos^2 x - 1", "\\cos(2x)", True),
        ("\\sin^2 x+\\cos^2 x", "1", True),
        ("3n+2", "3n-2", False),
        ("\\ln(xy)", "\\ln x + \\ln y", False),
    ],
    "equation": [
        ("x=5", "5", True),
        ("5", "x = 5", True),
        ("y=3x-2", "y = -2 + 3x", True),
        ("x+y=1", "2x+2y=2", True),
        ("x+y=1", "x-y=1", False),
        ("a+b=4", "4", False),
        ("f(x)=x^2", "x^2", True),
    ],
    "matrix": [
        ("\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", "\\begin{bmatrix}1&0\\\\0&1\\end{bmatrix}", True),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", False),
        ("\\begin{pmatrix}2\\\\-1\\\\3\\end{pmatrix}", "\\begin{pmatrix}2\\\\-1\\\\3\\end{pmatrix}", True),
        ("\\begin{pmatrix}\\frac12&1\\\\0&2\\end{pmatrix}", "\\begin{pmatrix}0.5&1\\\\0&2\\end{pmatrix}", True),
        ("\\begin{pmatrix}2&0\\\\0&2\\end{pmatrix}", "2\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", True),
    ],
    "complex": [
        ("3+4i", "4i+3", True),
        ("3+4i", "3-4i", False),
        ("\\frac{1}{2}i", "0.5i", True),
        ("-1", "i^2", True),
        ("2i", "\\sqrt{-4}", True),
    ],
    "pi_sqrt": [
        ("2\\sqrt{3}", "\\sqrt{12}", True),
        ("\\frac{\\pi}{4}", "0.25\\pi", True),
        ("3\\pi", "3.14", False),
        ("\\sqrt{2}+1", "1+\\sqrt2", True),
        ("\\sqrt{5}", "\\sqrt{6}", False),
        ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
        ("4\\pi", "\\pi 4", True),
    ],
    "degrees": [
        ("60^\\circ", "60", True),
        ("60^\\circ", "\\frac{\\pi}{3}", True),
        ("60^\\circ", "30^\\circ", False),
        ("120", "120^{\\circ}", True),
    ],
    "scientific": [
        ("6.02 \\times 10^{23}", "602000000000000000000000", True),
        ("2.5\\times10^{-4}", "0.00025", True),
        ("4 \\times 10^{3}", "4000", True),
        ("4 \\times 10^{3}", "400", False),
        ("1e6", "1000000", True),
    ],
    "negative": [
        ("-12", "-12", True),
        ("-12", "12", False),
        ("-\\frac{3}{2}", "-1.5", True),
        ("-x+1", "1-x", True),
        ("-(2)", "-2", True),
    ],
    # equal only where the variables are positive (ln(xy) above too: not for x, y < 0), and
    # identities that hold wherever both sides are defined
    "domain": [
        ("x", "|x|", False),
        ("x", "\\sqrt{x^2}", False),
        ("1", "\\frac{|x|}{x}", False),
        ("\\sin x", "|\\sin x|", False),
        ("e^x", "e^{|x|}", False),
        ("2\\ln x", "\\ln(x^2)", False),
        ("\\sqrt{x}\\sqrt{y}", "\\sqrt{xy}", False),
        ("x", "\\arccos(\\cos x)", False),
        ("x+5", "|x+5|", False),
        ("|x|", "\\sqrt{x^2}", True),
        ("\\frac{x^2-1}{x-1}", "x+1", True),
        ("x", "\\ln(e^x)", True),
        ("\\frac{1}{\\sqrt{x}}", "\\frac{\\sqrt{x}}{x}", True),
    ],
}

# Whole model outputs, not wrapped in a style: answers written in ways extraction must handle.
RAW = {
    "extraction": [
        ("10/9", "Dividing both sides gives x = \\frac{10}{9}", True),
        ("0.4", "So the probability is .4", True),
        ("1000", "The total is 1 000", True),
        ("(-6, 10)", "Final Answer: The final answer is \\((-6, 10)\\). I hope it is correct.", True),
        ("\\frac{1}{2}", "So the answer is $\\\\boxed{\\\\frac{1}{2}}$.", True),  # JSON-escaped twice
        ("\\boxed{1} and \\boxed{2}", "The roots are $\\boxed{1, 2}$.", True),
        ("\\boxed{1} and \\boxed{2}", "So $x = \\boxed{2}$.", False),
        ("0,111", "So the answer is $\\boxed{111}$.", False),
    ],
}

HAZARDS = [
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{(10^{10^{10}})!}",
    "\\boxed{" + "{" * 10000 + "}" * 10000 + "}",
    "\\boxed{7}" + "x" * 50_000,
    "\x00\\boxed{\x00}",
    "\\boxed{\\int_0^1 e^{x^2}\\,dx}",
    "\\boxed{\\begin{pmatrix}" + "\\\\".join("&".join(["x^{50}-y"] * 25) for _ in range(25)) + "\\end{pmatrix}}",
    "\\boxed{" + "\\sqrt{" * 200 + "2" + "}" * 200 + "}",
    "\\boxed{2^{3^{4^{5^{6}}}}+1}",
]


def main() -> None:
    rng = random.Random(0)
    rows = []
    for category, pairs in PAIRS.items():
        for gold, answer, equivalent in pairs:
            style = rng.choice(STYLES)
            rows.append(
                {
                    "gold": gold,
                    "prediction": style.format(a=answer),
                    "equivalent": equivalent,
                    "source": "rlwhf",
                    "category": category,
                }
            )
    for category, pairs in RAW.items():
        for gold, prediction, equivalent in pairs:
            rows.append(
                {
                    "gold": gold,
                    "prediction": prediction,
                    "equivalent": equivalent,
                    "source": "rlwhf",
                    "category": category,
                }
            )
    for hazard in HAZARDS:
        rows.append({"gold": "1", "prediction": hazard, "equivalent": False, "source": "rlwhf", "category": "hazard"})
    out = Path(__file__).with_name("math_equiv_rlwhf.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
