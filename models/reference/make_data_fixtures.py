"""Make models/fixtures/data/*.parquet: small datasets laid out as Hugging Face datasets
store them (Parquet, snappy), with column names that are not ponder's, for tests/data_formats.rs.

    pip install pyarrow
    python3 models/reference/make_data_fixtures.py
"""

import os

import pyarrow as pa
import pyarrow.parquet as pq

out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
os.makedirs(out, exist_ok=True)

pairs = [
    ("Question: what is 12 plus 30?", " 12 + 30 = 42. The answer is 42.", " 40."),
    ("Is 17 prime?", " 17 is not divisible by 2, 3 or 5, so yes.", " No."),
    ("Alice has 3 apples, Bob twice as many. Total?", " Bob has 6, so 3 + 6 = 9.", " 7."),
    ("What is 9 times 7?", " 9 x 7 = 63. The answer is 63.", " 56."),
]
pq.write_table(pa.table({
    "id": list(range(len(pairs))),
    "instruction": [p for p, _, _ in pairs],
    "preferred": [c for _, c, _ in pairs],
    "dispreferred": [r for _, _, r in pairs],
    "source": ["fixture"] * len(pairs),
}), os.path.join(out, "pairs.parquet"), compression="snappy")

conv = [
    [{"role": "user", "content": p}, {"role": "assistant", "content": c.strip()}] for p, c, _ in pairs
]
pq.write_table(pa.table({"conversation": conv, "id": list(range(len(conv)))}),
               os.path.join(out, "chat_sft.parquet"), compression="zstd")

# ASDiv-like word problems: a passage and a question, answers with units
asdiv = [
    ("Seven red apples and two green apples are in the basket.", "How many apples are in the basket?", "9 apples"),
    ("Ellen has six more balls than Marin. Marin has nine balls.", "How many balls does Ellen have?", "15 balls"),
    ("A book costs $1,200.25 and a pen $34.25.", "How much do both cost?", "$1,234.50"),
    ("Tom was born on the 3rd.", "What time does the shop open?", "3:30 p.m."),
]
pq.write_table(pa.table({
    "passage": [a for a, _, _ in asdiv],
    "question": [q for _, q, _ in asdiv],
    "answer": [x for _, _, x in asdiv],
}), os.path.join(out, "wordproblems.parquet"), compression="snappy")
print(sorted(os.listdir(out)))
