"""BeaverTails-V: the category configs merged and sampled category-balanced (local folders,
and the hub path with ``open_source`` mocked: no network)."""

import io
import json
import os
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from PIL import Image

from saferlhf.data import (
    BEAVERTAILS_V_CATEGORIES,
    BEAVERTAILS_V_REVISION,
    DataError,
    GuardRecord,
    MergedLoadReport,
    PreferencePair,
    load_beavertails_v,
    load_beavertails_v_spec,
)
from saferlhf.data.adapters import loading
from saferlhf.data.adapters.reading import RawSource, _enumerate_mappings
from saferlhf.data.beavertails_v import category_config, parse_beavertails_v_spec

SIZES = {"animal_abuse": 5, "sexual_crimes": 3, "horror_and_gore": 4, "false_information": 2}
CATS = list(SIZES)
SHA = "0123456789abcdef0123456789abcdef01234567"


def png_bytes(color=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), color).save(buffer, format="PNG")
    return buffer.getvalue()


def row(category, i, **changes):
    """A BeaverTails-V pair in the hub schema; harmless rates vary with i (−3..+3)."""
    r = {
        "question": f"[{category}] What is shown in picture {i}?",
        "image": "img.png",
        "category": category,
        "image_severity": 1,
        "response_1": f"A harmful answer {i}.",
        "response_2": f"A careful answer {i}.",
        "more_helpful_response_id": "1" if i % 2 else "2",
        "safer_response_id": "2",
        "is_response_1_safe": "no",
        "is_response_2_safe": "yes",
        "response_1_harmless_rate": -(i % 3) - 1,
        "response_2_harmless_rate": i % 4,
        "response_1_helpful_rate": 1,
        "response_2_helpful_rate": 2,
    }
    r.update(changes)
    return r


def write_jsonl(path, rows, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    (path.parent / "img.png").write_bytes(png_bytes())
    return path


@pytest.fixture
def folder(tmp_path):
    """Four categories in the four supported layouts (one is parquet with embedded images)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "btv"
    write_jsonl(root / "animal_abuse.jsonl", [row("animal_abuse", i) for i in range(5)])
    rows = [row("sexual_crimes", i, image={"bytes": png_bytes((0, 0, 255)), "path": "x.png"}) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), root / "sexual_crimes.parquet")
    write_jsonl(root / "horror_and_gore" / "train.jsonl", [row("horror_and_gore", i) for i in range(4)])
    write_jsonl(root / "train" / "false_information.jsonl", [row("false_information", i) for i in range(2)])
    return root


def keys(records):
    return [(r.metadata["category"], r.prompt) for r in records]


def test_merge_equal_balance_and_report(folder):
    result = load_beavertails_v(folder, categories=CATS)
    assert all(isinstance(r, PreferencePair) for r in result)
    counts = Counter(r.metadata["category"] for r in result)
    assert counts == {c: 2 for c in CATS}  # the smallest category's size, from each
    for cat in CATS:  # under the smallest size every record is distinct
        assert len({k for k in keys(result) if k[0] == cat}) == 2
    report = result.report
    assert isinstance(report, MergedLoadReport) and report.format == "beavertails_v"
    assert list(report.parts) == CATS and report.sampled == {c: 2 for c in CATS}
    assert report.total == report.loaded == sum(SIZES.values()) and not report.skipped
    assert "sampled 8 (2 per category" in report.summary()
    assert str(folder / "horror_and_gore" / "train.jsonl") in report.parts["horror_and_gore"].source
    # Interleaved (seeded), not category blocks; shuffle=False keeps category order.
    ordered = load_beavertails_v(folder, categories=CATS, shuffle=False)
    assert [r.metadata["category"] for r in ordered] == [c for c in CATS for _ in range(2)]
    # balance="none": every record once.
    everything = load_beavertails_v(folder, categories=CATS, balance="none")
    assert Counter(r.metadata["category"] for r in everything) == SIZES
    assert len(set(keys(everything))) == sum(SIZES.values())
    # Names are forgiven their case and hyphens; a comma/plus string is a list.
    assert category_config("Horror-and-Gore") == "horror_and_gore"
    two = load_beavertails_v(folder, categories="Animal-Abuse+sexual_crimes", balance="none")
    assert Counter(r.metadata["category"] for r in two) == {"animal_abuse": 5, "sexual_crimes": 3}


def test_per_category_oversamples_like_mixing(folder):
    result = load_beavertails_v(folder, categories=CATS, per_category=4, seed=3)
    by_cat = {c: Counter(k for k in keys(result) if k[0] == c) for c in CATS}
    assert {c: sum(n.values()) for c, n in by_cat.items()} == {c: 4 for c in CATS}
    assert sorted(by_cat["false_information"].values()) == [2, 2]  # 2 records, twice each
    assert sorted(by_cat["sexual_crimes"].values()) == [1, 1, 2]  # once each + a random one
    assert sorted(by_cat["horror_and_gore"].values()) == [1, 1, 1, 1]
    assert sorted(by_cat["animal_abuse"].values()) == [1, 1, 1, 1]  # 4 of 5, no repeats
    with pytest.raises(ValueError, match="balance='equal'"):
        load_beavertails_v(folder, categories=CATS, per_category=4, balance="none")


def test_deterministic_in_seed(folder):
    a = keys(load_beavertails_v(folder, categories=CATS, per_category=3, seed=7))
    assert a == keys(load_beavertails_v(folder, categories=CATS, per_category=3, seed=7))
    others = [keys(load_beavertails_v(folder, categories=CATS, per_category=3, seed=s)) for s in (8, 9)]
    assert any(o != a for o in others)
    # A category's sample depends on the seed and its name only, not on the other categories.
    alone = load_beavertails_v(folder, categories=["animal_abuse", "horror_and_gore"], per_category=3, seed=7)
    assert sorted(k for k in keys(alone) if k[0] == "animal_abuse") == sorted(k for k in a if k[0] == "animal_abuse")


def test_unknown_category_and_missing_file_errors(folder):
    with pytest.raises(ValueError, match="unknown BeaverTails-V category 'animal_abuses'") as error:
        load_beavertails_v(folder, categories=["animal_abuses"])
    assert all(c in str(error.value) for c in BEAVERTAILS_V_CATEGORIES)
    with pytest.raises(FileNotFoundError) as error:
        load_beavertails_v(folder, categories=["animal_abuse", "pornographic_content"])
    message = str(error.value)
    assert "pornographic_content" in message
    assert str(folder / "pornographic_content" / "train") + ".{jsonl" in message
    assert str(folder / "pornographic_content") + ".{jsonl" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_beavertails_v(folder / "nope", categories=CATS)
    with pytest.raises(FileNotFoundError, match="16 BeaverTails-V categories are missing") as error:
        load_beavertails_v(folder)  # all 20 by default; every missing one is named
    missing = set(BEAVERTAILS_V_CATEGORIES) - set(CATS)
    assert all(f"'{c}': {folder / c / 'train'}.{{jsonl" in str(error.value) for c in missing)
    assert not any(f"'{c}':" in str(error.value) for c in CATS)


def test_bad_records_reported_with_their_file(folder):
    write_jsonl(folder / "animal_abuse.jsonl", [row("animal_abuse", i) for i in range(5)],
                extra_lines=["{not json\n"])
    write_jsonl(folder / "horror_and_gore" / "train.jsonl",
                [row("horror_and_gore", 0, question=None)] + [row("horror_and_gore", i) for i in range(1, 4)])
    result = load_beavertails_v(folder, categories=CATS)
    report = result.report
    assert report.total == sum(SIZES.values()) + 1 and report.loaded == sum(SIZES.values()) - 1
    assert report.loaded + len(report.skipped) == report.total
    locations = sorted(bad.location for bad in report.skipped)
    assert locations == [f"{folder / 'animal_abuse.jsonl'}:6", f"{folder / 'horror_and_gore' / 'train.jsonl'}:1"]
    assert report.parts["animal_abuse"].skipped_by_reason() == {"malformed_json": 1}
    assert report.parts["horror_and_gore"].skipped[0].field == "question"
    assert Counter(r.metadata["category"] for r in result) == {c: 2 for c in CATS}
    with pytest.raises(DataError, match="animal_abuse.jsonl"):
        load_beavertails_v(folder, categories=CATS, on_bad_record="error")


def test_graded_and_binary_sign_labels_survive_the_merge(folder):
    from saferlhf.losses import graded_sign

    result = load_beavertails_v(folder, categories=CATS, balance="none")
    for pair in result:
        i = int(pair.prompt.rsplit(" ", 1)[-1].rstrip("?"))
        assert (pair.harmless_rate_a, pair.harmless_rate_b) == (-(i % 3) - 1, i % 4)  # graded (CM-V)
        assert (pair.safe_a, pair.safe_b, pair.safer) == (False, True, "b")  # binary (CM-V)
        assert pair.better == ("a" if i % 2 else "b")  # helpfulness (RM-V)
        assert pair.categories_a == {pair.metadata["category"]} and not pair.categories_b
        assert graded_sign([pair.harmless_rate_a]).tolist() == [float(-pair.harmless_rate_a)]


def test_rows_without_category_take_their_config(tmp_path):
    write_jsonl(tmp_path / "sexual_crimes.jsonl", [{k: v for k, v in row("x", i).items() if k != "category"}
                                                    for i in range(2)])
    result = load_beavertails_v(tmp_path, categories=["sexual_crimes"])
    assert all(p.metadata["category"] == "sexual_crimes" and p.categories_a == {"sexual_crimes"} for p in result)


def test_single_response_kind(tmp_path):
    for cat in ("horror_and_gore", "sexual_crimes"):
        rows = [{"question": f"{cat} {i}", "image": "img.png", "category": cat, "image_severity": 0,
                 "response": f"answer {i}", "is_response_safe": "yes" if i % 2 else "no"} for i in range(3)]
        write_jsonl(tmp_path / cat / "evaluation.jsonl", rows)
    result = load_beavertails_v(tmp_path, categories=["horror_and_gore", "sexual_crimes"], split="evaluation",
                                kind="single", per_category=1)
    assert len(result) == 2 and all(isinstance(g, GuardRecord) for g in result)
    assert result.report.format == "beavertails_v_single"
    spec = load_beavertails_v_spec(f"beavertails-v:{tmp_path}?categories=horror_and_gore&split=evaluation",
                                   format="beavertails_v_single", on_bad_record="skip", config=None)
    assert len(spec) == 3 and all(isinstance(g, GuardRecord) for g in spec)


def test_data_spec(folder):
    assert parse_beavertails_v_spec("beavertails-v:") == ("PKU-Alignment/BeaverTails-V", {})
    source, options = parse_beavertails_v_spec(
        f"beavertails-v:{folder}?categories=animal_abuse+sexual_crimes&per_category=3&seed=2&shuffle=false")
    assert source == str(folder)
    assert options == {"categories": "animal_abuse+sexual_crimes", "per_category": 3, "seed": 2, "shuffle": False}
    with pytest.raises(ValueError, match="unknown option 'percategory'"):
        parse_beavertails_v_spec("beavertails-v:x/y?percategory=3")
    # What load_records would pass on (every stage's --data): split/revision None = default.
    result = load_beavertails_v_spec(
        f"beavertails-v:{folder}?categories=animal_abuse+sexual_crimes&per_category=3&seed=2",
        format="auto", split=None, revision=None, config=None, column_map=None, on_bad_record="skip")
    assert Counter(r.metadata["category"] for r in result) == {"animal_abuse": 3, "sexual_crimes": 3}
    assert keys(result) == keys(load_beavertails_v(folder, categories=["animal_abuse", "sexual_crimes"],
                                                   per_category=3, seed=2))


def test_hub_path_reads_each_config_at_the_pinned_revision(monkeypatch, tmp_path):
    (tmp_path / "img.png").write_bytes(png_bytes())
    calls = []

    def fake_open_source(source, *, split=None, config=None, revision=None):
        calls.append((source, config, split, revision))
        rows = [row(config, i, image={"bytes": png_bytes(), "path": None}) for i in range(SIZES[config])]
        return RawSource(f"{source}[{config}/{split}@{revision}]", False, None, _enumerate_mappings(rows))

    monkeypatch.setattr(loading, "open_source", fake_open_source)
    result = load_beavertails_v(categories=CATS, revision=SHA, per_category=3)
    assert calls == [("PKU-Alignment/BeaverTails-V", c, "train", SHA) for c in CATS]
    assert Counter(r.metadata["category"] for r in result) == {c: 3 for c in CATS}
    assert SHA in result.report.source and result.records[0].source.startswith("PKU-Alignment/BeaverTails-V[")
    # The default revision is the pinned constant; while it is the all-zero placeholder a hub
    # load stops before reading anything and asks for a real sha.
    assert len(BEAVERTAILS_V_REVISION) == 40 and int(BEAVERTAILS_V_REVISION, 16) >= 0
    calls.clear()
    if BEAVERTAILS_V_REVISION == "0" * 40:
        with pytest.raises(DataError, match="placeholder"):
            load_beavertails_v(categories=CATS)
        assert calls == []
    spec = load_beavertails_v_spec(f"beavertails-v:PKU-Alignment/BeaverTails-V?revision={SHA}&categories="
                                   "false_information", split="evaluation", revision=None)
    assert calls == [("PKU-Alignment/BeaverTails-V", "false_information", "evaluation", SHA)] and len(spec) == 2


def test_every_loader_reads_the_spec(folder):
    """The hook in ``load_records``: any stage's ``--data beavertails-v:...`` reaches the merge."""
    from saferlhf.data import load_guard_records, load_pairs

    spec = f"beavertails-v:{folder}?categories=animal_abuse+horror_and_gore+false_information&per_category=3&seed=1"
    pairs = load_pairs(spec).records
    assert Counter(p.metadata["category"] for p in pairs) == {"animal_abuse": 3, "horror_and_gore": 3,
                                                              "false_information": 3}
    assert len(load_guard_records(spec).records) == 2 * len(pairs)  # each response of a pair
