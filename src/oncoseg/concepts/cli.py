"""`oncoseg concepts`: the structures the default model finds from a text prompt."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  oncoseg concepts                       # the concepts, their synonyms, modality and training data
  oncoseg concepts --match "colon polyp" # which concept a text prompt maps to, and how well
  oncoseg segment polyp.jpg --text polyp -o polyps.png
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "concepts",
        help="list the structures the default model segments from a text prompt (--text)",
        description="The vocabulary of the default model's concept head: each concept's name, synonyms, "
        "modality and the dataset it was trained on. Free text maps to the nearest concept.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--match", metavar="TEXT", help="show the concept TEXT maps to, with its score")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from oncoseg.concepts.detect import known_concepts
    from oncoseg.concepts.vocabulary import CONCEPTS, match, matcher_kind

    if args.match is not None:
        concept, score = match(args.match)
        if args.json:
            print(json.dumps({"text": args.match, "concept": concept.name, "score": round(score, 3)}))
        else:
            print(f"{args.match!r} -> {concept.name} (score {score:.2f}, {matcher_kind()} matching)")
        return 0
    trained = set(known_concepts())
    rows = [
        {
            "name": c.name,
            "modality": c.modality,
            "synonyms": list(c.synonyms),
            "trained_on": [d for d, _ in c.sources],
            "in_shipped_head": c.name in trained,
        }
        for c in CONCEPTS
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'concept':<15} {'modality':<11} {'trained on':<20} synonyms")
    for row in rows:
        mark = "" if row["in_shipped_head"] else " (not in the shipped head)"
        print(
            f"{row['name']:<15} {row['modality']:<11} {', '.join(row['trained_on']):<20} "
            f"{', '.join(row['synonyms'])}{mark}"
        )
    print(f"\nfree text is matched to the nearest concept ({matcher_kind()} matching)")
    return 0
