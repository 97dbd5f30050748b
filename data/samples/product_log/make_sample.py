"""Rebuild hh_rlhf_single_turn.jsonl: HH-RLHF single-turn pairs as product-log rows.

Usage (from the repository root): python data/samples/product_log/make_sample.py

Each shipped HH-RLHF test pair whose chosen and rejected dialogues are one
"Human" turn and one "Assistant" turn with the same prompt becomes two rows of
the product-log format (docs/instruction_tuning.md): the prompt with the chosen
answer labelled "good" and with the rejected answer labelled "bad". Every
PER_FILE-th qualifying pair (in file order) is taken until PER_FILE pairs per
file. Ids name the file, the line and the side. HH-RLHF carries no timestamps,
so none are written (the field is optional).
"""

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HH = ROOT / "data" / "samples" / "hh_rlhf"
OUT = Path(__file__).with_name("hh_rlhf_single_turn.jsonl")
FILES = ["helpful-base_test", "harmless-base_test"]
PER_FILE = 50
H, A = "\n\nHuman:", "\n\nAssistant:"


def single_turn(text: str) -> tuple[str, str] | None:
    if text.count(H) != 1 or text.count(A) != 1 or not text.startswith(H):
        return None
    prompt, answer = text[len(H) :].split(A)
    return prompt.strip(), answer.strip()


def main() -> None:
    rows = []
    for name in FILES:
        pairs = []
        with gzip.open(HH / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                obj = json.loads(line)
                good, bad = single_turn(obj["chosen"]), single_turn(obj["rejected"])
                if not good or not bad or good[0] != bad[0]:
                    continue
                if not all(good) or not bad[1] or good[1] == bad[1]:
                    continue
                pairs.append((lineno, good, bad))
        step = max(1, len(pairs) // PER_FILE)
        for lineno, good, bad in pairs[::step][:PER_FILE]:
            for side, (prompt, answer), label in (
                ("chosen", good, "good"),
                ("rejected", bad, "bad"),
            ):
                rows.append(
                    {
                        "id": f"{name}:{lineno}:{side}",
                        "prompt": prompt,
                        "response": answer,
                        "feedback": label,
                    }
                )
    with open(OUT, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(rows)} rows")


if __name__ == "__main__":
    main()
