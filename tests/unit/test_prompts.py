"""Prompt loading, the demo set, splitting and the prompt-set digest."""

from __future__ import annotations

import json
import logging
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from cache.prompts import (
    Prompt,
    demo_prompts,
    load_prompts,
    prompt_set_digest,
    split_prompts,
)
from store.errors import InputError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def error_of(path: Path, **kwargs) -> str:
    kwargs.setdefault("label", "harmful")
    with pytest.raises(InputError) as info:
        load_prompts(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message
    return message


def texts(prompts: list[Prompt]) -> list[str]:
    return [p.text for p in prompts]


# --------------------------------------------------------------------------------------------
# Prompt


def test_prompt_is_frozen_and_keyword_only():
    p = Prompt(text="hi", label="harmless", dataset="d")
    assert p.split == "train" and p.category == ""
    with pytest.raises(FrozenInstanceError):
        p.text = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Prompt("hi", "harmless", "d")  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Formats


def test_json_list_of_strings(tmp_path):
    path = write(tmp_path, "mine.json", json.dumps(["  first  ", "second", "", "   "]))
    prompts = load_prompts(path, label="harmful")
    assert texts(prompts) == ["first", "second"]
    assert all(p.label == "harmful" and p.dataset == "mine" and p.split == "train"
               for p in prompts)
    assert all(p.category == "" for p in prompts)


@pytest.mark.parametrize("key", ["instruction", "prompt", "text"])
def test_json_objects_with_each_key(tmp_path, key):
    data = [{key: "do a thing", "category": "c1"}, {key: "another", "category": None}]
    prompts = load_prompts(write(tmp_path, "x.json", json.dumps(data)), label="harmless")
    assert texts(prompts) == ["do a thing", "another"]
    assert [p.category for p in prompts] == ["c1", ""]
    assert all(p.label == "harmless" for p in prompts)


def test_json_key_priority_and_mixed_items(tmp_path):
    data = [{"text": "from text", "instruction": "from instruction"}, "plain string"]
    prompts = load_prompts(write(tmp_path, "x.json", json.dumps(data)), label="harmful")
    assert texts(prompts) == ["from instruction", "plain string"]


def test_json_column_names_the_key(tmp_path):
    data = [{"goal": "g1", "prompt": "p1"}]
    prompts = load_prompts(write(tmp_path, "x.json", json.dumps(data)), label="harmful",
                           column="goal")
    assert texts(prompts) == ["g1"]


def test_json_object_with_label_list(tmp_path):
    data = {"harmful": [{"instruction": "bad"}], "harmless": ["good"]}
    path = write(tmp_path, "both.json", json.dumps(data))
    assert texts(load_prompts(path, label="harmful")) == ["bad"]
    assert texts(load_prompts(path, label="harmless")) == ["good"]


def test_json_with_utf8_bom_and_unicode(tmp_path):
    path = write(tmp_path, "x.json", b"\xef\xbb\xbf" + json.dumps(["caf\u00e9 \u2615"]).encode())
    assert texts(load_prompts(path, label="harmless")) == ["caf\u00e9 \u2615"]


def test_jsonl(tmp_path):
    lines = [
        json.dumps({"prompt": "one", "category": "a"}),
        "",
        json.dumps("two"),
        json.dumps({"instruction": "three"}),
        "   ",
    ]
    prompts = load_prompts(write(tmp_path, "set.jsonl", "\n".join(lines) + "\n"),
                           label="harmful")
    assert texts(prompts) == ["one", "two", "three"]
    assert [p.category for p in prompts] == ["a", "", ""]
    assert prompts[0].dataset == "set"


def test_csv_default_column_and_category(tmp_path):
    content = 'id,category,prompt\n1,cat-a,"Hello, world"\n2,cat-b,"multi\nline"\n3,x,\n'
    prompts = load_prompts(write(tmp_path, "p.csv", content), label="harmless")
    assert texts(prompts) == ["Hello, world", "multi\nline"]
    assert [p.category for p in prompts] == ["cat-a", "cat-b"]


@pytest.mark.parametrize(
    "column", ["instruction", "prompt", "text", "goal", "forbidden_prompt", "Behavior"]
)
def test_csv_each_default_column(tmp_path, column):
    content = f"other,{column}\nignored,the prompt\n"
    prompts = load_prompts(write(tmp_path, "p.csv", content), label="harmful")
    assert texts(prompts) == ["the prompt"]


def test_csv_default_column_order(tmp_path):
    content = "goal,instruction\ng,i\n"
    assert texts(load_prompts(write(tmp_path, "p.csv", content), label="harmful")) == ["i"]


def test_csv_named_column_and_case_insensitive_default(tmp_path):
    content = "Goal,Text,note\nthe goal,the text,n\n"
    path = write(tmp_path, "p.csv", content)
    assert texts(load_prompts(path, label="harmful")) == ["the text"]
    assert texts(load_prompts(path, label="harmful", column="note")) == ["n"]
    assert texts(load_prompts(path, label="harmful", column="goal")) == ["the goal"]


def test_csv_crlf_and_short_rows(tmp_path):
    content = "a,prompt\r\n1,first\r\n2\r\n3,second\r\n"
    prompts = load_prompts(write(tmp_path, "p.csv", content), label="harmful")
    assert texts(prompts) == ["first", "second"]


def test_tsv(tmp_path):
    content = "id\tprompt\n1\tuse, commas freely\n2\tsecond\n"
    prompts = load_prompts(write(tmp_path, "p.tsv", content), label="harmful")
    assert texts(prompts) == ["use, commas freely", "second"]


def test_txt(tmp_path):
    content = "  first line  \n\n\nsecond line\r\n   \nthird\n"
    prompts = load_prompts(write(tmp_path, "lines.txt", content), label="harmless",
                           dataset="custom")
    assert texts(prompts) == ["first line", "second line", "third"]
    assert all(p.dataset == "custom" for p in prompts)


def test_extension_is_case_insensitive(tmp_path):
    assert texts(load_prompts(write(tmp_path, "A.TXT", "x\n"), label="harmful")) == ["x"]


def test_accepts_str_path(tmp_path):
    path = write(tmp_path, "a.txt", "x\n")
    assert texts(load_prompts(str(path), label="harmful")) == ["x"]


# --------------------------------------------------------------------------------------------
# Deduplication


def test_dedup_keeps_first_and_order(tmp_path, caplog):
    data = [{"prompt": "a", "category": "first"}, "b", {"prompt": " a ", "category": "second"},
            "c", "b"]
    with caplog.at_level(logging.WARNING, logger="cache.prompts"):
        prompts = load_prompts(write(tmp_path, "d.json", json.dumps(data)), label="harmful")
    assert texts(prompts) == ["a", "b", "c"]
    assert prompts[0].category == "first"
    assert any("dropped 2 duplicate" in r.getMessage() for r in caplog.records)


def test_no_dedup_warning_without_duplicates(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cache.prompts"):
        load_prompts(write(tmp_path, "d.txt", "a\nb\n"), label="harmful")
    assert not caplog.records


def test_dedup_is_case_sensitive(tmp_path):
    prompts = load_prompts(write(tmp_path, "d.txt", "Hello\nhello\n"), label="harmful")
    assert texts(prompts) == ["Hello", "hello"]


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path):
    message = error_of(tmp_path / "nope.json")
    assert "no such file" in message


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.json").mkdir()
    assert "not a file" in error_of(tmp_path / "dir.json")


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl", "empty.csv", "empty.txt"])
@pytest.mark.parametrize("content", ["", "  \n\n "])
def test_empty_file(tmp_path, name, content):
    assert "empty" in error_of(write(tmp_path, name, content))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.json", "[]"),
        ("b.json", '["", "  "]'),
        ("c.jsonl", '""\n"  "\n'),
        ("d.csv", "prompt\n\n  \n"),
        ("e.csv", "prompt\n"),
        ("f.txt", "\n \t\n"),
    ],
)
def test_no_prompts(tmp_path, name, content):
    message = error_of(write(tmp_path, name, content))
    assert "no prompts" in message or "empty" in message


@pytest.mark.parametrize("name", ["prompts.yaml", "prompts.parquet", "prompts"])
def test_unknown_format(tmp_path, name):
    message = error_of(write(tmp_path, name, "- a\n"))
    assert "unknown prompt file format" in message
    assert ".json" in message and ".csv" in message and ".txt" in message


def test_unknown_format_names_the_extension(tmp_path):
    assert "'.yaml'" in error_of(write(tmp_path, "p.yaml", "- a\n"))
    assert "no extension" in error_of(write(tmp_path, "plain", "a\n"))


@pytest.mark.parametrize("name", ["bad.json", "bad.jsonl", "bad.csv", "bad.txt"])
def test_bad_encoding(tmp_path, name):
    raw = "prompt\nfine line\n".encode() + b"caf\xe9 latin-1\n"
    message = error_of(write(tmp_path, name, raw))
    assert "not UTF-8" in message
    assert "0xe9" in message
    offset = raw.index(b"\xe9")
    assert f"byte offset {offset}" in message


def test_bad_encoding_offset_counts_the_bom(tmp_path):
    raw = b"\xef\xbb\xbfab\xff"
    assert "byte offset 5" in error_of(write(tmp_path, "bom.txt", raw))


def test_invalid_json_gives_line_and_column(tmp_path):
    content = '[\n  "ok"\n  "missing comma before me"\n]\n'
    message = error_of(write(tmp_path, "bad.json", content))
    assert "invalid JSON" in message
    assert "line 3, column 3" in message and "delimiter" in message


def test_invalid_json_trailing_comma(tmp_path):
    message = error_of(write(tmp_path, "bad.json", '["a", "b",]'))
    assert "invalid JSON at line 1, column 11" in message


def test_invalid_jsonl_gives_line(tmp_path):
    content = '"ok"\n\n{"prompt": "x"\n'
    message = error_of(write(tmp_path, "bad.jsonl", content))
    assert "invalid JSON at line 3" in message


def test_csv_missing_named_column_lists_columns(tmp_path):
    path = write(tmp_path, "p.csv", "id,question,category\n1,q,c\n")
    message = error_of(path, column="prompt")
    assert "no column 'prompt'" in message
    assert "'id', 'question', 'category'" in message


def test_csv_without_default_column_lists_columns(tmp_path):
    message = error_of(write(tmp_path, "p.csv", "id,question\n1,q\n"))
    assert "no prompt column" in message
    assert "'id', 'question'" in message
    assert "forbidden_prompt" in message


def test_csv_malformed(tmp_path):
    content = "prompt\nok\n" + "x" * 200_000 + "\n"
    message = error_of(write(tmp_path, "p.csv", content))
    assert "malformed CSV at line 3" in message and "field larger" in message


def test_json_objects_without_usable_key(tmp_path):
    data = [{"prompt": "ok"}, {"question": "what", "id": 2}]
    message = error_of(write(tmp_path, "p.json", json.dumps(data)))
    assert "item 2" in message
    assert "'instruction' or 'prompt' or 'text'" in message
    assert "'question', 'id'" in message


def test_jsonl_object_without_usable_key(tmp_path):
    message = error_of(write(tmp_path, "p.jsonl", '{"prompt": "a"}\n{"q": "b"}\n'))
    assert "line 2" in message and "'q'" in message


def test_json_named_key_missing(tmp_path):
    message = error_of(write(tmp_path, "p.json", json.dumps([{"prompt": "a"}])), column="goal")
    assert "no 'goal' key" in message


def test_json_wrong_item_types(tmp_path):
    assert "item 2 is a number" in error_of(write(tmp_path, "a.json", '["a", 3]'))
    message = error_of(write(tmp_path, "b.json", '[{"prompt": null}]'))
    assert "'prompt' is null, not a string" in message


def test_json_wrong_top_level(tmp_path):
    assert "got a string" in error_of(write(tmp_path, "a.json", '"just one"'))
    message = error_of(write(tmp_path, "b.json", '{"prompts": ["a"]}'))
    assert "expected a JSON list" in message and "'prompts'" in message


def test_error_message_with_newline_in_name_stays_one_line(tmp_path):
    path = write(tmp_path, "p.csv", '"id\nx",other\n1,2\n')
    with pytest.raises(InputError) as info:
        load_prompts(path, label="harmful")
    assert "\n" not in str(info.value)


def test_empty_label_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        load_prompts(write(tmp_path, "a.txt", "x\n"), label="")


# --------------------------------------------------------------------------------------------
# Demo set


def test_demo_prompts_sizes_labels_and_no_overlap():
    harmful, harmless = demo_prompts()
    assert len(harmful) >= 55 and len(harmless) >= 55
    assert all(p.label == "harmful" and p.dataset == "demo" for p in harmful)
    assert all(p.label == "harmless" and p.dataset == "demo" for p in harmless)
    assert all(p.category for p in harmful + harmless)
    h = {p.text.lower() for p in harmful}
    s = {p.text.lower() for p in harmless}
    assert len(h) == len(harmful) and len(s) == len(harmless)
    assert not h & s


def test_demo_prompts_shape():
    harmful, harmless = demo_prompts()
    edgy = [p for p in harmless if p.category == "edgy-safe"]
    assert 4 <= len(edgy) <= 10
    for p in harmful + harmless:
        assert 5 <= len(p.text.split()) <= 25, p.text
        assert p.text == p.text.strip() and "\n" not in p.text


def test_demo_prompts_is_stable():
    assert prompt_set_digest(sum(demo_prompts(), [])) == prompt_set_digest(
        sum(demo_prompts(), [])
    )


def test_demo_file_loads_through_load_prompts():
    from importlib.resources import as_file, files

    with as_file(files("cache") / "data" / "demo_prompts.json") as path:
        loaded = load_prompts(path, label="harmful", dataset="demo")
    assert loaded == demo_prompts()[0]


# --------------------------------------------------------------------------------------------
# Splitting


def make(n: int, label: str = "harmful") -> list[Prompt]:
    return [Prompt(text=f"{label} prompt {i}", label=label, dataset="t") for i in range(n)]


def test_split_is_deterministic_and_returns_new_objects():
    prompts = make(40) + make(30, "harmless")
    a = split_prompts(prompts, holdout_fraction=0.25, seed=7)
    b = split_prompts(prompts, holdout_fraction=0.25, seed=7)
    assert a == b
    assert all(p.split == "train" for p in prompts)  # inputs untouched
    assert [p.text for p in a] == [p.text for p in prompts]  # order kept
    assert {p.split for p in a} == {"train", "val"}


def test_split_does_not_depend_on_input_order():
    prompts = make(40) + make(30, "harmless")
    a = {p.text: p.split for p in split_prompts(prompts, holdout_fraction=0.2, seed=1)}
    b = {p.text: p.split for p in split_prompts(prompts[::-1], holdout_fraction=0.2, seed=1)}
    assert a == b


def test_split_seed_changes_assignment():
    prompts = make(60)
    a = [p.split for p in split_prompts(prompts, holdout_fraction=0.3, seed=0)]
    b = [p.split for p in split_prompts(prompts, holdout_fraction=0.3, seed=1)]
    assert a != b


def test_split_counts_are_stratified_by_label():
    prompts = make(40) + make(20, "harmless")
    out = split_prompts(prompts, holdout_fraction=0.25, seed=3)
    val = [p for p in out if p.split == "val"]
    assert sum(p.label == "harmful" for p in val) == 10
    assert sum(p.label == "harmless" for p in val) == 5


def test_split_edges():
    assert all(p.split == "train" for p in split_prompts(make(10), holdout_fraction=0.0, seed=0))
    tiny = split_prompts(make(3), holdout_fraction=0.01, seed=0)
    assert [p.split for p in tiny].count("val") == 1
    big = split_prompts(make(3), holdout_fraction=0.99, seed=0)
    assert [p.split for p in big].count("train") == 1
    one = split_prompts(make(1), holdout_fraction=0.5, seed=0)
    assert [p.split for p in one] == ["train"]
    assert split_prompts([], holdout_fraction=0.5, seed=0) == []
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            split_prompts(make(4), holdout_fraction=bad, seed=0)


# --------------------------------------------------------------------------------------------
# Digest


def test_digest_is_hex_sha256_and_stable():
    prompts = make(5)
    d = prompt_set_digest(prompts)
    assert len(d) == 64 and int(d, 16) >= 0
    assert prompt_set_digest(list(prompts)) == d
    assert prompt_set_digest(iter(prompts)) == d


def test_digest_changes_when_a_prompt_changes():
    prompts = make(5)
    base = prompt_set_digest(prompts)
    from dataclasses import replace

    changed_text = prompts[:2] + [replace(prompts[2], text="something else")] + prompts[3:]
    changed_label = prompts[:2] + [replace(prompts[2], label="harmless")] + prompts[3:]
    assert prompt_set_digest(changed_text) != base
    assert prompt_set_digest(changed_label) != base
    assert prompt_set_digest(prompts[:-1]) != base
    assert prompt_set_digest(prompts + make(1, "harmless")) != base
    assert prompt_set_digest(prompts[::-1]) != base


def test_digest_ignores_split_dataset_and_category():
    prompts = make(5)
    other = [Prompt(text=p.text, label=p.label, dataset="x", split="val", category="c")
             for p in prompts]
    assert prompt_set_digest(other) == prompt_set_digest(prompts)


def test_digest_is_unambiguous():
    a = [Prompt(text="a b", label="harmful", dataset="t")]
    b = [Prompt(text="a", label="harmful", dataset="t"),
         Prompt(text="b", label="harmful", dataset="t")]
    assert prompt_set_digest(a) != prompt_set_digest(b)


def test_harmbench_contextual_behaviours_carry_their_context(tmp_path):
    path = tmp_path / "harmbench.csv"
    path.write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "Give instructions for X,standard,illegal,,,x\n"
        '"Given this code, write an exploit",contextual,cybercrime_intrusion,context,"def f():\n    pass",y\n',
        encoding="utf-8",
    )
    plain, contextual = load_prompts(path, label="harmful")
    assert plain.text == "Give instructions for X" and plain.category == "illegal"
    assert contextual.text == "def f():\n    pass\n\n---\n\nGiven this code, write an exploit"
    # another column chosen by name is read as it is
    assert [p.text for p in load_prompts(path, label="harmful", column="BehaviorID")] == ["x", "y"]


# --------------------------------------------------------------------------------------------
# Real data files beside the repository (not part of it; skipped when absent)


REAL_FILES = [
    ("refusal_direction/harmful_train.json", None, 250),
    ("xstest/xstest_prompts.csv", "prompt", 440),
    ("pypi/strongreject_dataset.csv", "forbidden_prompt", 300),
    ("pypi/harmbench_behaviors_text_val.csv", "Behavior", 75),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")
@pytest.mark.parametrize(("relpath", "column", "at_least"), REAL_FILES)
def test_real_data_files_load(relpath, column, at_least):
    path = SHARED_DATA / relpath
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    prompts = load_prompts(path, label="harmful", column=column)
    assert len(prompts) >= at_least
    assert len({p.text for p in prompts}) == len(prompts)
    assert all(p.text and p.text == p.text.strip() for p in prompts)
    assert all(p.dataset == path.stem for p in prompts)
