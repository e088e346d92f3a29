"""What rules cost: creates per second of one entity with 10 CEL validation rules, 3 computed fields and
a workflow against the same entity without them, through the write pipeline (Python API, SQLite file,
one process), plus the cost of evaluating the rules of one record. A third variant stores the three
columns filled by the client: against it, the overhead is what the expressions cost, without the cost
of storing three more values.

    .venv/bin/python bench/rules.py                 # 3000 creates per variant and round, 7 rounds; the variants
    #                                                   take turns every 100 creates
    .venv/bin/python bench/rules.py --creates 10000 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Target (issue 5): at most 15 % fewer creates per second. A figure, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from api import database

RULES = {
    "positive_amount": "record.amount == null || record.amount > 0.0",
    "discount_limit": "record.discount == null || record.amount != null && record.discount <= record.amount * 0.2",
    "won_needs_amount": "record.stage != 'won' || record.amount != null",
    "title_length": "size(record.title) >= 3",
    "close_after_open": "record.close_date == null || record.close_date >= '2020-01-01'",
    "units_positive": "record.units == null || record.units > 0",
    "probability_range": "record.probability == null || record.probability >= 0 && record.probability <= 100",
    "lost_needs_reason": "record.stage != 'lost' || record.reason != null",
    "big_deals_need_units": "record.amount == null || record.amount < 100000.0 || record.units != null",
    "no_shrinking": "old.amount == null || record.amount == null || record.amount >= old.amount",
}
FIELDS = """
      title: {type: string, required: true}
      amount: {type: money}
      discount: {type: money}
      stage: {type: enum, options: [open, won, lost], default: open}
      close_date: {type: date}
      units: {type: integer}
      probability: {type: integer}
      reason: {type: string}
"""


COMPUTED = """
      weighted: {type: money, compute: "record.amount == null || record.probability == null ? null : record.amount * double(record.probability) / 100.0"}
      net: {type: money, compute: "record.amount == null ? null : record.amount - (record.discount == null ? 0.0 : record.discount)"}
      size: {type: enum, options: [small, big], compute: "record.amount != null && record.amount >= 10000.0 ? 'big' : 'small'"}
"""


WORKFLOW = """
workflows:
  pipeline:
    entity: deal
    field: stage
    states:
      won: {terminal: true, required: [amount]}
      lost: {terminal: true, required: [reason]}
    transitions:
      win: {from: open, to: won, actions: [{set: {probability: "100"}}]}
      lose: {from: open, to: lost, actions: [{set: {probability: "0"}}]}
"""


#: The computed fields as plain columns the client fills: the "columns" variant stores as much as "rules".
STORED = """
      weighted: {type: money}
      net: {type: money}
      size: {type: enum, options: [small, big]}
"""


def project(variant: str) -> dict[str, str]:
    rules = "".join(f"      {name}: {{check: \"{text}\", message: {name}}}\n" for name, text in RULES.items())
    fields = FIELDS + {"rules": COMPUTED, "columns": STORED}.get(variant, "")
    text = "entities:\n  deal:\n    fields:" + fields + ("    rules:\n" + rules + WORKFLOW if variant == "rules" else "")
    return {"loom.yaml": "app: {name: Bench}\ninclude: [entities.yaml]\n", "entities.yaml": text}


def body(i: int, variant: str = "plain") -> dict:
    data = {"title": f"Deal {i}", "amount": f"{1000 + i}.50", "discount": "100", "stage": "open",
            "close_date": "2027-01-01", "units": 3, "probability": 40}
    if variant == "columns":  # what the computed fields would give
        data.update(weighted=f"{(1000 + i + 0.5) * 0.4:.2f}", net=f"{900 + i}.50", size="small")
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--creates", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block", type=int, default=100, help="creates per variant before the next one takes its turn")
    p.add_argument("--database-url", help="as in bench/api.py (default: a temporary SQLite file)")
    args = p.parse_args()

    from loomcrm.engine.runtime.context import Context
    from loomcrm.engine.testing import make_loom

    results: dict[str, list[float]] = {"plain": [], "columns": [], "rules": []}
    with tempfile.TemporaryDirectory(prefix="loom-bench-rules-") as tmp, contextlib.ExitStack() as stack:
        looms = {}
        for variant in results:
            (Path(tmp) / variant).mkdir()
            url = stack.enter_context(database(args.database_url, Path(tmp) / variant))
            looms[variant] = make_loom(project(variant), url)
            stack.callback(looms[variant].close)
        for round_ in range(args.rounds):  # the variants take turns in small blocks: drift hits them alike
            spent = dict.fromkeys(results, 0.0)
            for start in range(0, args.creates, args.block):
                order = list(results) if (start // args.block) % 2 == 0 else list(reversed(results))
                for variant in order:
                    loom = looms[variant]
                    entity, stop = loom.entity("deal"), min(start + args.block, args.creates)
                    started = time.perf_counter()
                    for i in range(start, stop):
                        loom.records.create(entity, body(round_ * args.creates + i, variant), Context(channel="python"))
                    spent[variant] += time.perf_counter() - started
            for variant in results:
                results[variant].append(args.creates / spent[variant])
            print(f"  round {round_ + 1}: " + ", ".join(f"{v} {results[v][-1]:6.0f}" for v in results) + " creates/s",
                  flush=True)
        loom, ctx, n = looms["rules"], Context(channel="python"), 20000
        entity = loom.entity("deal")  # records as the creates above had them: each with its own title and amount
        records = [loom.records.validate(entity, body(i), partial=False) for i in range(1000)]
        started = time.perf_counter()
        for i in range(n):
            loom.records.rules.errors(ctx, entity, records[i % 1000], None)
        per_record = (time.perf_counter() - started) / n * 1e6
    def overhead(base: str) -> float:
        ratios = [r / p for r, p in zip(results["rules"], results[base], strict=True)]
        return 100 * (1 - statistics.median(ratios))

    plain, columns, ruled = (statistics.median(results[v]) for v in ("plain", "columns", "rules"))
    print(f"\nplain entity:                                    {plain:8.0f} creates/s (median of {args.rounds})")
    print(f"plain entity with the 3 columns filled by hand:  {columns:8.0f} creates/s")
    print(f"with 10 rules, 3 computed fields and a workflow: {ruled:8.0f} creates/s  -> overhead {overhead('plain'):.1f} % "
          f"against the plain entity (target <= 15 %; median of the per-round ratios), {overhead('columns'):.1f} % "
          "against the one storing as much")
    print(f"evaluating the 10 rules of one record: {per_record:.1f} us ({per_record / 10:.1f} us per rule, binding "
          "the values included: each record has a title and an amount of its own)")


if __name__ == "__main__":
    main()
