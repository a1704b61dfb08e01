"""The README's table from a models/asdiv/run.sh output directory: accuracy, mean tokens
and seconds per phase, round by round, for both runs.

    python3 models/asdiv/table.py runs/asdiv
"""

import json
import os
import sys

out = sys.argv[1]
PHASES = ["sample_dpo", "dpo", "sample_sft", "sft", "eval"]
print("| run | round | accuracy | mean tokens | pairs | positives | " + " | ".join(p.replace("_", " ") + " (s)" for p in PHASES) + " |")
print("|---|---|---|---|---|---|" + "---|" * len(PHASES))
for run in ["dpo-st", "self-train"]:
    d = os.path.join(out, run)
    if not os.path.exists(os.path.join(d, "rounds.jsonl")):
        continue
    rows = []
    start = os.path.join(d, "start.json")
    if os.path.exists(start):
        rows.append(json.load(open(start)))
    rows += [json.loads(l) for l in open(os.path.join(d, "rounds.jsonl")) if l.strip()]
    for r in rows:
        cell = lambda k, f="{:.0f}": f.format(r[k]) if k in r else "-"
        print("| %s | %d | %.3f | %.1f | %s | %s | %s |" % (
            run, r["round"], r["accuracy"], r["mean_tokens"], cell("dpo_pairs"), cell("positives"),
            " | ".join(cell("seconds_" + p) for p in PHASES)))
