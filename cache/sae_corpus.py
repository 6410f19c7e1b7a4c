"""The offline corpus the embedded model's SAEs are trained on, gathered deterministically.

Chat-formatted prompts (held-out ``val`` ones marked; optionally followed by the model's own
greedy response, so refusals and answers are in the training distribution), user text files, then docstrings of
installed packages in a fixed order, packed into chunks of at most ``context`` tokens. The same
inputs always give the same corpus, recorded by ``corpus_digest``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import importlib.util
import random
import sys
import sysconfig
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cache.models import LoadedModel
from cache.prompts import Prompt
from store.errors import InputError


class CorpusSettings(Protocol):
    """What the corpus builder reads of a training config (``cache.train_sae.TrainSAEConfig``)."""

    n_tokens: int
    response_tokens: int
    context: int
    text_files: tuple[Path, ...]
    doc_packages: tuple[str, ...]
    chat_fraction: float
    seed: int


#: Directories whose files are skipped when gathering docstrings (tests, vendored code).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "testing", "site-packages", "dist-packages", "__pycache__"})
_MIN_DOC_CHARS = 40


@dataclass(frozen=True)
class Segment:
    """One model input of the corpus."""

    token_ids: tuple[int, ...]
    source: str
    """prompt | text | doc | doc-chat"""
    holdout: bool = False
    """Held out of training; measures the SAE."""
    n_post: int = 0
    """Post-instruction template tokens at its end (chat-formatted segments only)."""
    n_pre: int = 0
    """Template tokens before the instruction (chat-formatted only; not part of the digest)."""
    n_response: int = 0
    """Tokens of the model's own response after the post-instruction tokens (prompts only)."""


def _doc_roots(packages: Sequence[str]) -> list[tuple[str, Path]]:
    roots = []
    for name in packages:
        if name == "stdlib":
            roots.append((name, Path(sysconfig.get_paths()["stdlib"])))
            continue
        try:
            # find_spec of a top-level name locates the package without importing it
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"--doc-packages: {name!r} is not an installed Python package")
        roots.append((name, Path(sorted(spec.submodule_search_locations)[0])))
    return roots


def doc_sources(packages: Sequence[str]) -> dict[str, str]:
    """The docstring sources and their versions (the corpus depends on them)."""
    versions = {}
    for name, _root in _doc_roots(packages):
        if name == "stdlib" or name in sys.stdlib_module_names:
            versions[name] = f"python {sys.version.split()[0]}"
        else:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = "unknown"
    return versions


def iter_docstrings(packages: Sequence[str], seed: int) -> Iterator[str]:
    """Docstrings (module, class, function) of the packages' source files, read with ``ast``
    (no code runs), de-duplicated. Files are sorted by package and relative path, then shuffled
    with ``seed``, so the order is the same on every machine with the same versions."""
    files = []
    for name, root in _doc_roots(packages):
        for path in root.rglob("*.py"):
            relative = path.relative_to(root)
            if not _SKIP_DIRS.intersection(relative.parts[:-1]):
                files.append((name, relative.as_posix(), path))
    files.sort(key=lambda item: (item[0], item[1]))
    random.Random(seed).shuffle(files)
    seen: set[bytes] = set()
    for _name, _relative, path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escapes etc. in old sources
                tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=True)
            if not doc or len(doc) < _MIN_DOC_CHARS:
                continue
            key = hashlib.sha1(doc.encode("utf-8", "replace")).digest()
            if key not in seen:
                seen.add(key)
                yield doc


def _iter_text_files(paths: Sequence[Path]) -> Iterator[str]:
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--text {path}: cannot be read as UTF-8 text ({error})") from None
        for paragraph in text.split("\n\n"):
            if paragraph.strip():
                yield paragraph.strip()


class _Packer:
    """Packs token runs into chunks of at most ``context`` tokens (long runs are split)."""

    def __init__(self, context: int, separator: list[int], source: str) -> None:
        self.context, self.separator, self.source = context, separator, source
        self.buffer: list[int] = []

    def add(self, ids: list[int]) -> list[Segment]:
        out = []
        if self.buffer and len(self.buffer) + len(self.separator) + len(ids) > self.context:
            out.append(self.flush())
        if self.buffer:
            ids = self.separator + ids
        self.buffer.extend(ids)
        while len(self.buffer) > self.context:
            out.append(Segment(tuple(self.buffer[: self.context]), self.source))
            self.buffer = self.buffer[self.context :]
        return out

    def flush(self) -> Segment:
        segment = Segment(tuple(self.buffer), self.source)
        self.buffer = []
        return segment


def build_corpus(loaded: LoadedModel, prompts: Sequence[Prompt], config: CorpusSettings) -> list[Segment]:
    """The corpus, in a fixed order: chat-formatted prompts (``val`` ones held out), then the
    text files, then docstrings until ``n_tokens`` training tokens (a ``chat_fraction`` of
    the docstrings as chat user turns, the rest packed as plain text)."""
    tokenizer, adapter = loaded.tokenizer, loaded.adapter
    n_post = adapter.n_post_instruction(tokenizer)
    marker = "Summarise the water cycle"
    template = adapter.format(tokenizer, marker)
    n_pre = len(tokenizer(template[: template.index(marker)], add_special_tokens=False)["input_ids"])

    def tokens(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    encoded = [adapter.encode(tokenizer, p.text) for p in prompts]
    responses = own_responses(loaded, encoded, config.response_tokens) if config.response_tokens else [[] for _ in encoded]
    segments = [Segment(tuple(ids + response), "prompt", p.split == "val", n_post, n_pre, len(response))
                for p, ids, response in zip(prompts, encoded, responses)]
    budget = config.n_tokens - sum(len(s.token_ids) for s in segments if not s.holdout)
    separator = tokens("\n\n")
    texts = _Packer(config.context, separator, "text")
    for paragraph in _iter_text_files(config.text_files):
        if budget <= 0:
            break
        for segment in texts.add(tokens(paragraph)):
            segments.append(segment)
            budget -= len(segment.token_ids)
    if texts.buffer and budget > 0:
        budget -= len(texts.buffer)
        segments.append(texts.flush())
    if budget <= 0 or not config.doc_packages:
        return segments
    rng = random.Random(config.seed)
    chat_room = config.context - len(adapter.encode(tokenizer, "")) - 2  # template tokens around the text
    docs = _Packer(config.context, separator, "doc")
    for doc in iter_docstrings(config.doc_packages, config.seed):
        if budget <= 0:
            break
        ids = tokens(doc)
        if chat_room >= 8 and rng.random() < config.chat_fraction:
            chat = adapter.encode(tokenizer, tokenizer.decode(ids[:chat_room]).strip())
            if len(chat) <= config.context:
                segments.append(Segment(tuple(chat), "doc-chat", False, n_post, n_pre))
                budget -= len(chat)
            continue
        for segment in docs.add(ids):
            segments.append(segment)
            budget -= len(segment.token_ids)
    if docs.buffer and budget > 0:
        segments.append(docs.flush())
    return segments


def corpus_digest(segments: Sequence[Segment]) -> str:
    """sha256 over every segment's source, held-out flag and token ids, in order."""
    digest = hashlib.sha256()
    for s in segments:
        response = f"|r{s.n_response}" if s.n_response else ""  # absent before responses existed: old digests hold
        digest.update(f"{s.source}|{int(s.holdout)}|{s.n_post}{response}|{','.join(map(str, s.token_ids))}\n".encode())
    return digest.hexdigest()


def own_responses(loaded: LoadedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, *,
                  batch_size: int = 8) -> list[list[int]]:
    """The model's greedy responses (token ids, up to its end-of-turn token) to each prompt,
    kept in a JSON file under the project's cache dir so a rerun does not generate them again
    (keyed by model, revision, dtype, length and the prompts' token ids)."""
    from cache.default_model import cache_home
    from cache.generation import greedy_response_ids

    dtype = next(loaded.model.parameters()).dtype
    key = hashlib.sha256(json.dumps([loaded.model_id, loaded.revision, str(dtype), max_new_tokens,
                                     [list(map(int, ids)) for ids in prompt_ids]]).encode()).hexdigest()
    path = cache_home() / "responses" / f"{key[:24]}.json"
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, list) and len(stored) == len(prompt_ids):
            return [[int(t) for t in row] for row in stored]
    except (OSError, ValueError):
        pass
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        out += greedy_response_ids(loaded.model, loaded.tokenizer, prompt_ids[start : start + batch_size], max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)  # a reader never sees half a file
    return out


def corpus_stats(segments: Sequence[Segment]) -> dict[str, Any]:
    by_source: dict[str, dict[str, int]] = {}
    for s in segments:
        key = f"{s.source}-holdout" if s.holdout else s.source
        entry = by_source.setdefault(key, {"segments": 0, "tokens": 0})
        entry["segments"] += 1
        entry["tokens"] += len(s.token_ids)
    return {
        "segments": len(segments),
        "train_tokens": sum(len(s.token_ids) for s in segments if not s.holdout),
        "holdout_tokens": sum(len(s.token_ids) for s in segments if s.holdout),
        "by_source": by_source,
    }
