"""`refusal-explorer evaluate`: benchmark interventions the way the papers report them.

For each ``--intervention`` (baseline first), greedy generations of the harmful prompts (to
end of turn or ``max_new_tokens``), judged by the three judges (``explorer.judges``); the
harmless prompts under the intervention's upward form (induced refusal) and, for the baseline,
as they are; XSTest's safe prompts (over-refusal); and Arditi et al.'s side effects on the
baseline's own harmless completions: mean first-token KL(baseline ‖ edited) and the per-token
cross-entropy of those completions under the intervention. ``--sweep`` adds a clamp-value ×
set-size grid of induced refusal.

Work is done in batches; after each one every row so far is written to
``/analysis/<run>/evaluate`` (atomically, with the config), so an interrupted evaluation
continues where it stopped when run again with the same options.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import pad_left
from explorer.benchmark_interventions import Intervention, applied, parse_interventions, resolve, sae_layers_needed
from explorer.benchmark_metrics import HARMFUL, HARMLESS, XSTEST, Row, summarise
from explorer.judges import JUDGES, Judges
from store import Study, read_stage, write_stage
from store.errors import InputError

STAGE = "evaluate"


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    interventions: tuple[str, ...] = ("none", "direction")
    """What to evaluate (repeatable): none | direction | set:PROMPT_INDEX | set:joint |
    latents:LAYER=I,J[:ablate|scale=S|clamp=V]. The baseline (none) always runs first;
    without any, none and direction."""
    prompts: str | None = None
    """Harmful prompt file (any format `cache` reads); None = the study's held-out harmful prompts."""
    prompt_column: str | None = None
    """Column / key holding the prompt text in ``prompts``."""
    category_column: str | None = None
    """CSV column with each prompt's category (default: category or SemanticCategory)."""
    max_prompts: int | None = None
    """Use the first N harmful prompts."""
    harmless: str | None = None
    """Harmless prompt file; None = the study's held-out harmless prompts."""
    max_harmless: int | None = None
    """Use the first N harmless prompts."""
    xstest: str | None = None
    """XSTest prompts CSV (its ``label == safe`` rows are used) for over-refusal."""
    max_xstest: int | None = None
    """Use the first N safe XSTest prompts."""
    max_new_tokens: int = 256
    """Generation stops at the end of the turn or after this many tokens."""
    batch_size: int = 8
    """Prompts per batched generation (1 = one at a time)."""
    judges: tuple[str, ...] = JUDGES
    """Judges to run (substring, phrase, semantic); the semantic one needs the judge extra."""
    induce_clamp: float | None = None
    """Clamp value for a set: intervention's upward form (induced refusal); None = not measured."""
    sweep_values: tuple[float, ...] = ()
    """--sweep: clamp values; with ``sweep_sizes``, a grid of induced refusal on harmless prompts."""
    sweep_sizes: tuple[int, ...] = ()
    """--sweep: set sizes (the first k latents of the set: or latents: intervention)."""
    sweep_prompts: int = 16
    """Harmless prompts per --sweep cell."""
    sweep_tokens: int = 48
    """Tokens generated per --sweep prompt."""

    def __post_init__(self) -> None:
        specs = parse_interventions(list(self.interventions or ("none", "direction")))
        names = [s.text for s in specs]
        if "none" in names:
            names.remove("none")
        object.__setattr__(self, "interventions", ("none", *names))
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.sweep_tokens < 1 or self.sweep_prompts < 1:
            raise InputError("--max-new-tokens, --batch-size, --sweep-tokens and --sweep-prompts must be ≥ 1")
        for name in ("max_prompts", "max_harmless", "max_xstest"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be ≥ 1")
        unknown = [j for j in self.judges if j not in JUDGES]
        if unknown or not self.judges:
            raise InputError(f"--judges: unknown judge {unknown[0] if unknown else '(none)'}; choose from {', '.join(JUDGES)}")
        if bool(self.sweep_values) != bool(self.sweep_sizes):
            raise InputError("--sweep needs both clamp values and set sizes, e.g. --sweep 10,20,30x1,2,4")
        if any(s < 1 for s in self.sweep_sizes):
            raise InputError("--sweep set sizes must be ≥ 1")


@dataclass
class PromptSet:
    name: str
    texts: list[str]
    categories: list[str]
    token_ids: list[list[int]] = field(default_factory=list)


@dataclass
class State:
    """Everything measured so far; what is stored after each batch."""

    rows: list[Row] = field(default_factory=list)
    tokens: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)  # generated ids, per row key
    effects: list[tuple[str, int, float, float, int]] = field(default_factory=list)  # (intervention, index, kl, ce_sum, n_tokens)
    sweep: list[tuple[float, int, dict[str, float]]] = field(default_factory=list)  # (value, size, judge -> rate)
    done: set[str] = field(default_factory=set)  # finished batch keys
    evidence: dict[tuple[str, str, int], dict[str, str]] = field(default_factory=dict)  # per row key: judge -> why

    def side_effects(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name in {e[0] for e in self.effects}:
            mine = [e for e in self.effects if e[0] == name]
            tokens = sum(e[4] for e in mine)
            out[name] = {"kl": float(np.mean([e[2] for e in mine])), "ce": sum(e[3] for e in mine) / tokens if tokens else math.nan}
        return out


# ---------------------------------------------------------------------------------------------
# Prompt sets
# ---------------------------------------------------------------------------------------------


def load_prompt_sets(study: Study, config: EvaluateConfig) -> dict[str, PromptSet]:
    from cache.prompts import load_prompts

    from explorer.live import select_prompts

    def from_study(label: str, limit: int | None) -> PromptSet:
        chosen = select_prompts(study, label=label, split="val") or select_prompts(study, label=label)
        chosen = chosen[:limit] if limit else chosen
        records = [study.prompt(i) for i in chosen]
        return PromptSet(label, [r.text for r in records], [r.category for r in records])

    def from_file(name: str, path: str, label: str, limit: int | None, column: str | None = None) -> PromptSet:
        prompts = load_prompts(path, label=label, column=column, category_column=config.category_column)
        prompts = prompts[:limit] if limit else prompts
        return PromptSet(name, [p.text for p in prompts], [p.category for p in prompts])

    sets = {
        HARMFUL: from_file(HARMFUL, config.prompts, "harmful", config.max_prompts, config.prompt_column)
        if config.prompts else from_study("harmful", config.max_prompts),
        HARMLESS: from_file(HARMLESS, config.harmless, "harmless", config.max_harmless)
        if config.harmless else from_study("harmless", config.max_harmless),
    }
    if config.xstest:
        sets[XSTEST] = PromptSet(XSTEST, *load_xstest_safe(Path(config.xstest), config.max_xstest))
    for name, prompt_set in sets.items():
        if not prompt_set.texts:
            raise InputError(f"no {name} prompts to evaluate (give a file or cache held-out prompts)")
    return sets


def load_xstest_safe(path: Path, limit: int | None) -> tuple[list[str], list[str]]:
    """XSTest's safe prompts (``label == safe``) and their ``type`` as the category."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read XSTest prompts ({error.__class__.__name__})") from None
    if not rows or not {"prompt", "label"} <= set(rows[0]):
        raise InputError(f"{path}: not an XSTest CSV (needs 'prompt' and 'label' columns)")
    safe = [r for r in rows if r["label"].strip() == "safe" and r["prompt"].strip()]
    safe = safe[:limit] if limit else safe
    if not safe:
        raise InputError(f"{path}: no rows with label 'safe'")
    return [r["prompt"].strip() for r in safe], [r.get("type", "").strip() for r in safe]


# ---------------------------------------------------------------------------------------------
# Model work
# ---------------------------------------------------------------------------------------------


def stop_ids(model: torch.nn.Module, tokenizer: Any, pad_id: int) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None:
        eos.append(int(tokenizer.eos_token_id))
    return {int(e) for e in eos} | {int(pad_id)}


@torch.no_grad()
def generate_ids(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int, stop: set[int]) -> list[list[int]]:
    """Greedy new token ids per prompt, cut at the first end-of-turn token (not included)."""
    inputs = pad_left(token_ids, pad_id, model.device)
    inputs.pop("position_ids")  # generate() derives positions from the attention mask
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=sorted(stop - {pad_id}) or None,
        temperature=None, top_p=None, top_k=None,
    )
    out = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        out.append(row[:cut])
    return out


@torch.no_grad()
def side_effect_batch(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, hooks: Any,
) -> list[tuple[float, float, int]]:
    """Per prompt: (first-token KL(baseline ‖ edited), CE sum of the baseline completion under
    the edit, completion length). One prompt per forward keeps the [len, vocab] logits small."""
    out = []
    for prompt, completion in zip(prompts, completions):
        clean = model(**pad_left([list(prompt)], pad_id, model.device), use_cache=False, logits_to_keep=1).logits[0, -1].float()
        keep = len(completion) + 1  # the last prompt position predicts the first completion token
        inputs = pad_left([list(prompt) + list(completion)], pad_id, model.device)
        with applied(hooks):
            logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits[0].float()  # [keep, vocab]
        log_p, log_q = torch.log_softmax(clean, -1), torch.log_softmax(logits[0], -1)
        kl = float((log_p.exp() * (log_p - log_q)).sum())
        ce_sum = 0.0
        if completion:
            log_probs = torch.log_softmax(logits[:-1], -1)  # [len, vocab]
            target = torch.tensor(list(completion), device=log_probs.device)
            ce_sum = float(-log_probs.gather(1, target[:, None]).sum())
        out.append((kl, ce_sum, len(completion)))
    return out


# ---------------------------------------------------------------------------------------------
# The run: batches, judged, stored after each one
# ---------------------------------------------------------------------------------------------


class Evaluation:
    """One `evaluate` run over a study; ``run()`` does the remaining work and returns the summary."""

    def __init__(
        self, study_path: Path, live: Any, config: EvaluateConfig, *, run: str = "default", judges: Judges | None = None,
        progress: bool = True, overwrite: bool = False,
    ) -> None:
        self.path, self.live, self.config, self.run_name, self.progress = Path(study_path), live, config, run, progress
        self.judges = judges or Judges(detector=live.detector)
        tokenizer = live.loaded.tokenizer
        with Study(self.path) as study:
            self.sets = load_prompt_sets(study, config)
            self.state = State()
            stored = read_stage(study.file, run, STAGE)
            if stored is not None and not overwrite:
                if _comparable(stored.config) != _comparable(self._record(config)):
                    raise InputError(
                        f"run {run!r} already holds an evaluation made with other options; pass --overwrite to replace it or use another --run"
                    )
                # Same prompts and budgets: the stored interventions' rows are kept and the new
                # ones are added (so adding an intervention later costs only that intervention).
                kept = [str(name) for name in stored.config.get("interventions", [])]
                config = replace(config, interventions=tuple(dict.fromkeys([*kept, *config.interventions])))
                self.state = _state_from_stage(stored.arrays)
            specs = parse_interventions(list(config.interventions))
            sae_layers_needed(specs, study, run)
            self.interventions: dict[str, Intervention] = {
                s.text: resolve(s, study, live, run, induce_clamp=config.induce_clamp) for s in specs
            }
            self.config, self.config_record = config, self._record(config)
        for prompt_set in self.sets.values():
            prompt_set.token_ids = [live.loaded.adapter.encode(tokenizer, t) for t in prompt_set.texts]
        self.stop = stop_ids(live.model, tokenizer, live.pad_id)

    def _record(self, config: EvaluateConfig) -> dict[str, Any]:
        """The config as stored: the options plus a digest of each prompt set."""
        return asdict(config) | {"prompt_sets": {k: {"n": len(v.texts), "digest": _digest(v.texts)} for k, v in self.sets.items()}}

    # -- plan
    def _units(self) -> list[tuple[str, str, int]]:
        """(intervention, part, batch start) in the order they run; part is a prompt set, "effects" or "sweep"."""
        b = self.config.batch_size
        units = []
        for name, intervention in self.interventions.items():
            parts = [HARMFUL]
            if name == "none" or intervention.upward is not None:
                parts.append(HARMLESS)
            if XSTEST in self.sets:
                parts.append(XSTEST)
            for part in parts:
                units += [(name, part, s) for s in range(0, len(self.sets[part].texts), b)]
            if name != "none":
                units += [(name, "effects", s) for s in range(0, len(self.sets[HARMLESS].texts), b)]
        if self.config.sweep_values:
            units += [("sweep", "sweep", i) for i in range(len(self.config.sweep_values) * len(self.config.sweep_sizes))]
        return units

    def run(self) -> dict[str, Any]:
        units = [u for u in self._units() if _key(u) not in self.state.done]
        with tqdm(total=len(self._units()), initial=len(self._units()) - len(units), desc="evaluate", unit="batch", disable=not self.progress) as bar:
            for unit in units:
                name, part, start = unit
                bar.set_postfix_str(f"{name} {part}")
                if part == "effects":
                    self._effects(name, start)
                elif part == "sweep":
                    self._sweep_cell(start)
                else:
                    self._generate(name, part, start)
                self.state.done.add(_key(unit))
                self._save(complete=False)
                bar.update()
        summary = self.summary()
        self._save(complete=True, summary=summary)
        return summary

    def summary(self) -> dict[str, Any]:
        out = summarise(self.state.rows, list(self.interventions), list(self.config.judges), self.state.side_effects())
        for name, entry in out["interventions"].items():
            entry["describe"] = self.interventions[name].describe
            entry["baseline_harmless_refusal"] = out["interventions"]["none"]["induced_refusal"] if name != "none" else None
        if self.state.sweep:
            out["sweep"] = [{"value": v, "size": s, "refusal_rate": r} for v, s, r in self.state.sweep]
            source = next((n for n, i in self.interventions.items() if i.latent_set), None)
            if source is not None:  # the viewers head the sweep's columns with these latent ids
                chosen = self.interventions[source]
                out["sweep_source"] = {"intervention": source, "layer": int(chosen.layer),
                                       "latents": [int(x) for x in chosen.latent_set]}
        return out

    # -- work units
    def _generate(self, name: str, part: str, start: int) -> None:
        prompt_set = self.sets[part]
        chunk = prompt_set.token_ids[start : start + self.config.batch_size]
        intervention = self.interventions[name]
        hooks = intervention.upward if part == HARMLESS and name != "none" else intervention.jailbreak
        with applied(hooks):
            new_ids = generate_ids(self.live.model, chunk, self.config.max_new_tokens, self.live.pad_id, self.stop)
        texts = [self.live.loaded.tokenizer.decode(ids, skip_special_tokens=True).rstrip() for ids in new_ids]
        indices = range(start, start + len(chunk))
        verdicts = self.judges.judge([prompt_set.texts[i] for i in indices], texts)
        for k, (i, text) in enumerate(zip(indices, texts)):
            row = Row(name, part, i, prompt_set.categories[i], text, {j: verdicts[j][k].refusal for j in self.config.judges})
            self.state.rows.append(row)
            self.state.tokens[(name, part, i)] = new_ids[k]
            self.state.evidence[(name, part, i)] = {j: verdicts[j][k].evidence for j in self.config.judges}

    def _effects(self, name: str, start: int) -> None:
        harmless = self.sets[HARMLESS]
        indices = range(start, min(start + self.config.batch_size, len(harmless.texts)))
        prompts = [harmless.token_ids[i] for i in indices]
        completions = [self.state.tokens[("none", HARMLESS, i)] for i in indices]
        baseline = side_effect_batch(self.live.model, prompts, completions, self.live.pad_id, None)
        edited = side_effect_batch(self.live.model, prompts, completions, self.live.pad_id, self.interventions[name].jailbreak)
        for i, (_kl0, ce0, n), (kl, ce, _n) in zip(indices, baseline, edited):
            if not any(e[0] == "none" and e[1] == i for e in self.state.effects):
                self.state.effects.append(("none", i, 0.0, ce0, n))
            self.state.effects.append((name, i, kl, ce, n))

    def _sweep_cell(self, cell: int) -> None:
        from cache.interventions import LatentEdit, sae_edits

        source = next((i for i in self.interventions.values() if i.latent_set), None)
        if source is None:
            raise InputError("--sweep needs a set: or latents: intervention whose latents it clamps")
        sizes, values = self.config.sweep_sizes, self.config.sweep_values
        value, size = values[cell // len(sizes)], sizes[cell % len(sizes)]
        latents = source.latent_set[: size]
        sae = self.live.sae(int(source.layer))
        edit = LatentEdit(layer=int(source.layer), latents=latents, mode="clamp", value=float(value))
        harmless = self.sets[HARMLESS]
        n = min(self.config.sweep_prompts, len(harmless.texts))
        texts: list[str] = []
        for s in range(0, n, self.config.batch_size):
            chunk = harmless.token_ids[s : min(s + self.config.batch_size, n)]
            with sae_edits(self.live.model, {int(source.layer): sae}, [edit]):
                ids = generate_ids(self.live.model, chunk, self.config.sweep_tokens, self.live.pad_id, self.stop)
            texts += [self.live.loaded.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
        verdicts = self.judges.judge(harmless.texts[:n], texts)
        rates = {j: float(np.mean([v.refusal for v in verdicts[j]])) for j in self.config.judges}
        self.state.sweep.append((float(value), len(latents), rates))

    # -- storage
    def _save(self, *, complete: bool, summary: dict[str, Any] | None = None) -> None:
        rows = self.state.rows
        tokens = [self.state.tokens.get((r.intervention, r.prompt_set, r.index), []) for r in rows]
        arrays: dict[str, np.ndarray] = {
            "row_intervention": np.array([r.intervention for r in rows], dtype=object),
            "row_set": np.array([r.prompt_set for r in rows], dtype=object),
            "row_index": np.array([r.index for r in rows], np.int64),
            "row_category": np.array([r.category for r in rows], dtype=object),
            "row_prompt": np.array([self.sets[r.prompt_set].texts[r.index] for r in rows], dtype=object),
            "row_generation": np.array([r.generation for r in rows], dtype=object),
            "row_token_offsets": np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64),
            "row_token_ids": np.array([t for ids in tokens for t in ids], np.int64),
            "effect_intervention": np.array([e[0] for e in self.state.effects], dtype=object),
            "effect_index": np.array([e[1] for e in self.state.effects], np.int64),
            "effect_kl": np.array([e[2] for e in self.state.effects], np.float64),
            "effect_ce_sum": np.array([e[3] for e in self.state.effects], np.float64),
            "effect_tokens": np.array([e[4] for e in self.state.effects], np.int64),
            "sweep_value": np.array([s[0] for s in self.state.sweep], np.float64),
            "sweep_size": np.array([s[1] for s in self.state.sweep], np.int64),
            "done": np.array(sorted(self.state.done), dtype=object),
        }
        for judge in self.config.judges:
            arrays[f"row_{judge}"] = np.array([r.verdicts[judge] for r in rows], np.int8)
            arrays[f"row_{judge}_evidence"] = np.array(
                [self.state.evidence.get((r.intervention, r.prompt_set, r.index), {}).get(judge, "") for r in rows], dtype=object
            )
            arrays[f"sweep_{judge}"] = np.array([s[2][judge] for s in self.state.sweep], np.float64)
        attrs = {"complete": complete, "judges": list(self.config.judges), "interventions": list(self.interventions)}
        if summary is not None:
            attrs["summary"] = summary
        write_stage(self.path, self.run_name, STAGE, arrays=arrays, attrs=attrs, config=self.config_record)


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """What must match for a stored evaluation to be resumed or extended: everything but the
    interventions (JSON round trip, as stored)."""
    return {k: v for k, v in json.loads(json.dumps(record)).items() if k != "interventions"}


def _key(unit: tuple[str, str, int]) -> str:
    return f"{unit[0]}|{unit[1]}|{unit[2]}"


def _digest(texts: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def _state_from_stage(arrays: dict[str, np.ndarray]) -> State:
    """Rebuild the measured rows from a stored (possibly unfinished) evaluation."""
    state = State()
    judges = [k[4:] for k in arrays if k.startswith("row_") and k[4:] in JUDGES]
    offsets = arrays["row_token_offsets"]
    evidence = state.evidence
    for r in range(len(arrays["row_index"])):
        key = (str(arrays["row_intervention"][r]), str(arrays["row_set"][r]), int(arrays["row_index"][r]))
        state.rows.append(Row(*key, str(arrays["row_category"][r]), str(arrays["row_generation"][r]), {j: bool(arrays[f"row_{j}"][r]) for j in judges}))
        state.tokens[key] = arrays["row_token_ids"][offsets[r] : offsets[r + 1]].tolist()
        evidence[key] = {j: str(arrays[f"row_{j}_evidence"][r]) for j in judges}
    state.effects = [
        (str(n), int(i), float(kl), float(ce), int(t))
        for n, i, kl, ce, t in zip(arrays["effect_intervention"], arrays["effect_index"], arrays["effect_kl"], arrays["effect_ce_sum"], arrays["effect_tokens"])
    ]
    state.sweep = [
        (float(v), int(s), {j: float(arrays[f"sweep_{j}"][k]) for j in judges}) for k, (v, s) in enumerate(zip(arrays["sweep_value"], arrays["sweep_size"]))
    ]
    state.done = {str(d) for d in arrays["done"]}
    return state


def load_evaluation(study: Study, run: str = "default") -> dict[str, Any] | None:
    """The stored evaluation of a run for the viewers: its summary and rows, or None."""
    stored = read_stage(study.file, run, STAGE)
    if stored is None:
        return None
    return {"summary": stored.attrs.get("summary"), "complete": stored.attrs.get("complete", False), "arrays": stored.arrays, "config": stored.config}
