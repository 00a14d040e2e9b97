"""The embedded demo data: a small clinical multiple-choice set in MedQA layout, generated from tables below.

The project cannot ship MedQA (users bring their own), but ``make demo`` must show fine-tuning measurably raise
accuracy on questions it did not train on. So the set is generated here from two fact tables:

* drug -> drug class (15 classes, 75 drugs). The last drug of every class never appears in training: those
  test questions ("drug-class-heldout") are answerable by generalizing from name stems (-pril, -sartan, -statin;
  some held-out names even contain a trained one: ofloxacin/levofloxacin, citalopram/escitalopram).
* pathogen -> first-line treatment. The last 8 pathogens never appear in training ("pathogen-heldout"): no name
  stem links a bacterium to its antibiotic, so this is an honest control that should stay near chance (25%)
  unless the base model already knows the fact. Trained pathogens are tested again under new phrasing
  ("pathogen").

Train and test questions differ on purpose: disjoint question templates (test phrasings never occur in
training), distractors and option order drawn from separate random streams (a test row never repeats an option
list used in training), and the answer letter balanced over A-D within each split so a letter bias cannot
score. Everything is a function of ``seed``.

The facts are simplified textbook associations for a software demo, not clinical guidance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from kit import atomic

# Class names are the answer options; every class has at least three drugs so two stay for training.
DRUG_CLASSES: dict[str, list[str]] = {
    "ACE inhibitor": ["lisinopril", "enalapril", "ramipril", "captopril", "benazepril", "quinapril", "perindopril"],
    "Angiotensin II receptor blocker": [
        "losartan", "valsartan", "irbesartan", "candesartan", "olmesartan", "telmisartan"
    ],
    "Statin": ["atorvastatin", "simvastatin", "rosuvastatin", "pravastatin", "lovastatin", "pitavastatin"],
    "Beta blocker": ["metoprolol", "atenolol", "propranolol", "bisoprolol", "nadolol", "nebivolol"],
    "Calcium channel blocker": ["amlodipine", "nifedipine", "felodipine", "nicardipine", "isradipine"],
    "Proton pump inhibitor": ["omeprazole", "pantoprazole", "lansoprazole", "esomeprazole", "rabeprazole"],
    "H2 receptor antagonist": ["famotidine", "ranitidine", "cimetidine", "nizatidine"],
    "Benzodiazepine": ["diazepam", "lorazepam", "alprazolam", "clonazepam", "midazolam", "temazepam"],
    "Fluoroquinolone": ["ciprofloxacin", "levofloxacin", "moxifloxacin", "ofloxacin"],
    "Macrolide": ["azithromycin", "clarithromycin", "erythromycin"],
    "DPP-4 inhibitor": ["sitagliptin", "saxagliptin", "linagliptin", "alogliptin"],
    "SGLT2 inhibitor": ["empagliflozin", "dapagliflozin", "canagliflozin", "ertugliflozin"],
    "Triptan": ["sumatriptan", "rizatriptan", "zolmitriptan", "eletriptan", "naratriptan"],
    "Azole antifungal": ["fluconazole", "itraconazole", "voriconazole", "ketoconazole", "posaconazole"],
    "Selective serotonin reuptake inhibitor": ["fluoxetine", "sertraline", "paroxetine", "citalopram", "escitalopram"],
}

# Every treatment is distinct, so each question has exactly one right option.
PATHOGEN_TREATMENTS: list[tuple[str, str]] = [
    ("Treponema pallidum", "Benzathine penicillin G"),
    ("Neisseria gonorrhoeae", "Ceftriaxone"),
    ("Chlamydia trachomatis", "Doxycycline"),
    ("Pneumocystis jirovecii", "Trimethoprim-sulfamethoxazole"),
    ("Mycobacterium tuberculosis", "Rifampin, isoniazid, pyrazinamide and ethambutol"),
    ("Trichomonas vaginalis", "Metronidazole"),
    ("Herpes simplex virus", "Acyclovir"),
    ("Influenza A virus", "Oseltamivir"),
    ("Methicillin-resistant Staphylococcus aureus", "Vancomycin"),
    ("Listeria monocytogenes", "Ampicillin"),
    # held out from training:
    ("Clostridioides difficile", "Fidaxomicin"),
    ("Plasmodium falciparum", "Artemether-lumefantrine"),
    ("Toxoplasma gondii", "Pyrimethamine and sulfadiazine"),
    ("Enterobius vermicularis", "Albendazole"),
    ("Cryptococcus neoformans", "Amphotericin B and flucytosine"),
    ("Legionella pneumophila", "Azithromycin"),
    ("Hepatitis C virus", "Sofosbuvir-velpatasvir"),
    ("Cytomegalovirus", "Ganciclovir"),
]
TRAINED_PATHOGENS = 10

# Each trained fact is asked once per template, in different words each time: a question text repeated with other
# options is what the kit's own loader warns about (a likely merge mistake), and the demo must load without warnings.
TRAIN_DRUG_TEMPLATES = [
    "Which drug class does {drug} belong to?",
    "{Drug} is a member of which class of medications?",
    "A patient is started on {drug}. To which pharmacological class does this drug belong?",
    "What is the drug class of {drug}?",
    "To which class of drugs does {drug} belong?",
    "Which class of medication includes {drug}?",
    "A clinician prescribes {drug}. What class of drug is this?",
    "{Drug} belongs to which group of medications?",
]
TEST_DRUG_TEMPLATES = [
    "A 62-year-old man's medication list includes {drug}. Which of the following best describes this medication?",
    "A pharmacist reviews a new prescription for {drug}. This agent is classified as which of the following?",
    "{Drug} is best categorized as which type of drug?",
]
TRAIN_PATHOGEN_TEMPLATES = [
    "What is the first-line treatment for an infection with {pathogen}?",
    "An infection caused by {pathogen} is best treated first with which of the following?",
    "Which drug is the first-line therapy for {pathogen} infection?",
    "Which regimen is first-line for {pathogen}?",
    "What should be given first for an infection with {pathogen}?",
    "The first-choice treatment for {pathogen} infection is which of the following?",
]
TEST_PATHOGEN_TEMPLATES = [
    "A patient is diagnosed with an infection due to {pathogen}. Which of the following is the most appropriate "
    "initial therapy?",
    "Laboratory studies identify {pathogen} as the cause of a patient's illness. What is the recommended "
    "first-line treatment?",
]
LETTERS = "ABCD"


def _fill(template: str, **names: str) -> str:
    values = dict(names)
    for key, value in names.items():
        values[key.capitalize()] = value[:1].upper() + value[1:]
    return template.format(**values)


class _Builder:
    """Makes 4-option rows with the answer letter drawn from a balanced, shuffled deck (A-D equally often)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.deck: list[int] = []

    def row(
        self, question: str, answer: str, pool: list[str], meta_info: str, avoid: frozenset = frozenset()
    ) -> dict[str, Any]:
        """A row whose option list is not in ``avoid`` (test rows never repeat an option list used in training)."""
        if not self.deck:
            self.deck = list(range(len(LETTERS)))
            self.rng.shuffle(self.deck)
        position = self.deck.pop()
        while True:
            distractors = self.rng.sample([p for p in pool if p != answer], len(LETTERS) - 1)
            texts = distractors[:position] + [answer] + distractors[position:]
            if tuple(texts) not in avoid:
                break
        options = dict(zip(LETTERS, texts, strict=False))
        return {
            "question": question,
            "answer": answer,
            "options": options,
            "meta_info": meta_info,
            "answer_idx": LETTERS[position],
        }


def demo_rows(seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, test rows) in MedQA layout; the same seed gives the same rows."""
    classes = list(DRUG_CLASSES)
    treatments = [t for _, t in PATHOGEN_TREATMENTS]
    train_drugs = [(d, c) for c, drugs in DRUG_CLASSES.items() for d in drugs[:-1]]
    heldout_drugs = [(drugs[-1], c) for c, drugs in DRUG_CLASSES.items()]
    train_pathogens = PATHOGEN_TREATMENTS[:TRAINED_PATHOGENS]
    heldout_pathogens = PATHOGEN_TREATMENTS[TRAINED_PATHOGENS:]

    # Separate streams: adding test rows never changes the training rows, and vice versa.
    train = _Builder(random.Random(f"demo-train:{seed}"))
    test = _Builder(random.Random(f"demo-test:{seed}"))
    train_rows = []
    for drug, cls in train_drugs:
        for template in TRAIN_DRUG_TEMPLATES:
            train_rows.append(train.row(_fill(template, drug=drug), cls, classes, "drug-class"))
    for pathogen, treatment in train_pathogens:
        for template in TRAIN_PATHOGEN_TEMPLATES:
            train_rows.append(train.row(_fill(template, pathogen=pathogen), treatment, treatments, "pathogen"))
    train.rng.shuffle(train_rows)

    trained_options = frozenset(tuple(row["options"].values()) for row in train_rows)
    test_rows = []
    for drug, cls in train_drugs:  # seen drugs, one new phrasing each
        template = test.rng.choice(TEST_DRUG_TEMPLATES)
        test_rows.append(test.row(_fill(template, drug=drug), cls, classes, "drug-class", trained_options))
    for drug, cls in heldout_drugs:
        for template in TEST_DRUG_TEMPLATES[:2]:
            test_rows.append(test.row(_fill(template, drug=drug), cls, classes, "drug-class-heldout"))
    for pathogen, treatment in train_pathogens:
        template = test.rng.choice(TEST_PATHOGEN_TEMPLATES)
        test_rows.append(
            test.row(_fill(template, pathogen=pathogen), treatment, treatments, "pathogen", trained_options)
        )
    for pathogen, treatment in heldout_pathogens:
        for template in TEST_PATHOGEN_TEMPLATES:
            test_rows.append(test.row(_fill(template, pathogen=pathogen), treatment, treatments, "pathogen-heldout"))
    return train_rows, test_rows


def write_demo_data(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (MedQA layout) into ``out_dir``, atomically; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = demo_rows(seed)
    paths = []
    for name, rows in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
        path = out_dir / name
        atomic.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        paths.append(path)
    return paths[0], paths[1]
