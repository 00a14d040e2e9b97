"""The lm-evaluation-harness side of the parity test, run as a subprocess with .lmeval-site on PYTHONPATH.

    python tests/pipeline/lm_eval_side.py --data FILE.jsonl --out RESULT.json --run NAME:ADD_BOS=DIR ...

Runs lm-eval's own ``medqa_4options`` task (its YAML and doc_to_text, included from the installed package) with
the dataset swapped for a local SWAG-style JSONL file, through ``HFLM`` (fp32, CPU), and a cloze twin of it whose
choices are the option texts. Writes, per (model, add_bos, task), every document's log-likelihoods and lm-eval's
own ``acc`` / ``acc_norm``, for the test to compare with ``pipeline.evaluate.scoring``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import tempfile
from pathlib import Path

# lm-eval's HFLM(add_bos_token=...) for our data.add_bos values.
ADD_BOS_TOKEN = {"auto": None, "always": True, "never": False}

_CHOICES_MODULE = '''
def endings(doc):
    return [doc["ending0"], doc["ending1"], doc["ending2"], doc["ending3"]]
'''


def _write_tasks(folder: Path, data: Path) -> None:
    import lm_eval.tasks

    medqa_yaml = Path(lm_eval.tasks.__file__).parent / "medqa" / "medqa.yaml"
    local = (
        f"include: {medqa_yaml}\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: '{data}'}}}}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\n"
    )
    (folder / "parity_medqa_letter.yaml").write_text("task: parity_medqa_letter\n" + local)
    (folder / "parity_choices.py").write_text(_CHOICES_MODULE)
    (folder / "parity_medqa_cloze.yaml").write_text(
        "task: parity_medqa_cloze\n" + local + "doc_to_choice: !function parity_choices.endings\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", action="append", required=True, help="NAME:ADD_BOS=DIR (add_bos: auto|always|never)")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _write_tasks(Path(tmp), args.data.resolve())
        manager = TaskManager(include_path=tmp, include_defaults=False)
        for spec in args.run:
            key, _, folder = spec.partition("=")
            add_bos = key.rpartition(":")[2]
            lm = HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=16,
                      add_bos_token=ADD_BOS_TOKEN[add_bos])
            out = lm_eval.simple_evaluate(model=lm, tasks=["parity_medqa_letter", "parity_medqa_cloze"],
                                          task_manager=manager, log_samples=True, bootstrap_iters=0)
            for task, samples in out["samples"].items():
                scoring = "letter" if task.endswith("letter") else "cloze"
                rows = sorted(samples, key=lambda s: s["doc_id"])
                results[f"{key}/{scoring}"] = {
                    "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in rows],
                    "acc": [float(s["acc"]) for s in rows],
                    "acc_norm": [float(s["acc_norm"]) for s in rows],
                }
    args.out.write_text(json.dumps({"lm_eval_version": importlib.metadata.version("lm_eval"), "results": results}))


if __name__ == "__main__":
    main()
