"""Robustness to shifted acquisition dates: mTAN-SVGP against the raw-date L-TAE.

    python bench/date_shift.py DATA [--models mtan-svgp,raw-ltae] [--shifts 0,1,2,3,5] [--seeds 0]
                                    [--epochs N] [--batch-size B] [--small] [--device auto]

Each model is trained from scratch through `sits finetune` (see bench/compare.py for the
settings), then its test OA is measured with every acquisition date moved by each delta (days):
`finetune`'s `eval_date_shift`, the test of the mTAN-SVGP paper (Fig. 12), where mTAN-SVGP stays
flat and the L-TAE on raw dates loses about a third of its OA at delta = 5 days.

Prints one JSON document: per model the mean/std OA for each delta over seeds and the relative
loss of OA at the largest delta, with the settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from compare import parse_ints, print_table, run_all, settings

from sitscli.data.prepared import open_prepared


def relative_loss(date_shift: dict) -> float | None:
    """1 - OA(largest delta) / OA(0): the share of OA lost (None without delta 0)."""
    if "0" not in date_shift or not date_shift["0"]["mean"]:
        return None
    largest = max(date_shift, key=int)
    return round(1 - date_shift[largest]["mean"] / date_shift["0"]["mean"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a prepared pixel dataset with train and test splits")
    parser.add_argument("--models", default="mtan-svgp,raw-ltae")
    parser.add_argument("--shifts", type=parse_ints, default=[0, 1, 2, 3, 5])
    parser.add_argument("--seeds", type=parse_ints, default=[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="reduced hyper-parameters (compare.SMALL_HPARAMS)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    models = args.models.split(",")
    data = str(Path(open_prepared(args.data).path).resolve())
    out = Path(tempfile.mkdtemp(prefix="sits_date_shift_"))
    try:
        results = run_all(data, models, args.seeds, out, epochs=args.epochs, batch_size=args.batch_size,
                          small=args.small, device=args.device, eval_date_shift=args.shifts)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print_table(results)
    table = {model: {"oa_per_shift": s.get("date_shift_oa"), "relative_oa_loss_at_max_shift":
                     relative_loss(s["date_shift_oa"]) if "date_shift_oa" in s else None,
                     "macro_f1": s.get("macro_f1"), "errors": s.get("errors")}
             for model, s in results.items()}
    for model, row in table.items():
        print(f"{model}: OA per shift {row['oa_per_shift']}", file=sys.stderr)
    print(json.dumps({"benchmark": "date_shift", "shifts_days": args.shifts, "settings": settings(args, models, data),
                      "results": table}, indent=2))


if __name__ == "__main__":
    main()
