"""Verdicts from the line (data.feedback, `exdd feedback`): copied in, appended, never rewritten or doubled,
and read by the features stage like any manifest."""

from datetime import datetime, timezone

import numpy as np
import pytest

from exdd_core.data.feedback import COLUMNS, add_verdicts, init_feedback, read_verdicts
from exdd_core.data.imageio import save_png
from exdd_core.data.records import read_manifest
from exdd_core.runtime.errors import InputError

SIZE = (24, 16)
WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def image(path, seed, size=SIZE):
    save_png(path, np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))
    return path


def mask(path, on=True):
    m = np.zeros(SIZE, np.uint8)
    m[4:9, 3:7] = 255 if on else 0
    save_png(path, m)
    return path


def test_verdicts_are_copied_and_appended_and_read_as_records(tmp_path):
    root = tmp_path / "feedback"
    a, b, c = (image(tmp_path / f"{n}.png", i) for i, n in enumerate("abc"))
    m = mask(tmp_path / "a_mask.png")
    first = add_verdicts(
        root, "defect", [a], SIZE, masks=[m], note="shift B", defect_type="scratch", now=WHEN
    )
    assert first.ids == ["feedback_defect_0000"] and not first.skipped
    before = (root / "defect" / "manifest.csv").read_bytes()
    second = add_verdicts(root, "defect", [b, a], SIZE, now=WHEN)  # a again: skipped, not doubled
    assert second.ids == ["feedback_defect_0001"] and [p.name for p, _ in second.skipped] == ["a.png"]
    after = (root / "defect" / "manifest.csv").read_bytes()
    assert after.startswith(before) and len(after) > len(before)  # appended, the first row untouched
    add_verdicts(root, "normal", [c], SIZE, now=WHEN)
    rows = read_verdicts(root)
    assert [(r["id"], r["verdict"]) for r in rows] == [
        ("feedback_defect_0000", "defect"),
        ("feedback_defect_0001", "defect"),
        ("feedback_normal_0000", "normal"),
    ]
    assert rows[0]["note"] == "shift B" and rows[0]["time"] == "2026-12-01T12:00:00+00:00"
    assert rows[0]["source"] == str(a.resolve()) and len(rows[0]["sha256"]) == 64
    recs = read_manifest(root / "defect" / "manifest.csv")
    assert [r.label for r in recs] == [1, 1] and recs[0].defect_type == "scratch"
    assert recs[0].mask_path is not None and recs[1].mask_path is None
    assert recs[0].image_path.read_bytes() == a.read_bytes()  # the file as given, byte for byte
    assert read_manifest(root / "normal" / "manifest.csv")[0].label == 0


def test_an_empty_feedback_folder_has_both_manifests_and_no_verdict(tmp_path):
    init_feedback(tmp_path)
    for v in ("defect", "normal"):
        assert (tmp_path / v / "manifest.csv").read_text() == ",".join(COLUMNS) + "\n"
        assert read_manifest(tmp_path / v / "manifest.csv") == []


def test_bad_verdicts_are_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "feedback"
    good, big = image(tmp_path / "good.png", 0), image(tmp_path / "big.png", 1, (30, 16))
    cases = [
        (("defect", [good, big]), {}, "big.png is 30x16.*24x16"),
        (("defect", [good]), {"masks": [mask(tmp_path / "e.png", on=False)]}, "marks no pixel"),
        (("defect", [good, big]), {"masks": [mask(tmp_path / "m.png")]}, "1 masks for 2 images"),
        (("normal", [good]), {"masks": [mask(tmp_path / "m.png")]}, "--defect only"),
    ]
    for (verdict, images), kw, message in cases:
        with pytest.raises(InputError, match=message):
            add_verdicts(root, verdict, images, SIZE, **kw)
        assert not (root / verdict / "images").exists()
    add_verdicts(root, "normal", [good], SIZE)
    with pytest.raises(InputError, match="already recorded as normal"):
        add_verdicts(root, "defect", [good], SIZE)
    assert len(read_verdicts(root)) == 1


def test_the_cli_records_and_lists_against_the_card_size(tmp_path, capsys, monkeypatch):
    """`exdd feedback add` checks sizes against the deployment card; `list --json` counts what is recorded."""
    import json

    from exdd_core.serve.cli import main

    card = tmp_path / "eval" / "model.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"format": "probe"}))
    monkeypatch.chdir(tmp_path)
    good = image(tmp_path / "good.png", 0)
    assert (
        main(["feedback", "add", "--normal", str(good), "--to", "fb", "--model", str(card)]) == 1
    )  # bad card
    out = capsys.readouterr()
    assert "model.json" in out.err + out.out
    assert main(["feedback", "list", "--json", "--to", "fb"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recorded"] == {"defect": 0, "normal": 0} and doc["in_banks"] is None
