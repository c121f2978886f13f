"""Fuzzed recipes through the validator (tests/recipe_fuzz.py): no traceback, no hang, every error under
2 s and naming its field or the file's line; inputs that must be rejected are, valid rewrites pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import recipe_fuzz

LIMIT_S = 2.0  # per case, the bound
WATCHDOG_S = 10.0  # a case past this is stopped and counted as a hang


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    recipe_fuzz.warm_up(path)  # torch, transformers, every method and task imported once, outside the timing
    return path


def _failures(indices: range, workdir: Path, seed: int = 0) -> list[str]:
    failures = []
    for index in indices:
        out = recipe_fuzz.run_case(recipe_fuzz.case(index, seed), workdir, limit_s=WATCHDOG_S)
        if out.status not in ("accepted", "error"):
            failures.append(f"#{index} {out.kind}: {out.status} after {out.seconds:.2f} s\n{out.detail}")
        elif out.seconds > LIMIT_S:
            failures.append(f"#{index} {out.kind}: {out.seconds:.2f} s (limit {LIMIT_S} s)")
        failures += [f"#{index} {out.kind}: {p}" for p in out.problems]
    return failures


def test_generator_is_seeded_and_covers_every_kind():
    first = [recipe_fuzz.case(i) for i in range(len(recipe_fuzz.KINDS))]
    assert {c.kind for c in first} == set(recipe_fuzz.KINDS)
    assert [c.data for c in first] == [recipe_fuzz.case(i).data for i in range(len(first))]
    assert recipe_fuzz.case(5, seed=1).data != recipe_fuzz.case(5 + len(recipe_fuzz.KINDS) * 7, seed=1).data
    required = {"alias_bomb_top", "alias_bomb_unknown_key", "alias_bomb_step_param", "alias_bomb_seed", "huge_comment",
                "many_variants", "many_tasks", "hub_id", "encoding", "binary", "unhashable_name", "long_name",
                "deep_nesting", "anchor_long_name", "huge_number", "coerced_number", "duplicate_key",
                "bad_indentation", "cuda_device", "missing_calibration", "output_path", "model_files",
                "missing_model_path", "type_swap", "deletion", "random_key", "huge_value", "unicode", "tabs"}
    assert required <= set(recipe_fuzz.KINDS)
    assert len(list(recipe_fuzz.cases(1000))) == 1000


def test_fuzzed_sample_gives_clean_errors_fast(workdir):
    """Four cases of every kind (the first 4 x kinds of the seeded campaign)."""
    failures = _failures(range(4 * len(recipe_fuzz.KINDS)), workdir)
    assert not failures, "\n".join(failures[:20])


@pytest.mark.slow
def test_all_1000_fuzzed_recipes_give_clean_errors_fast(workdir):
    failures = _failures(range(1000), workdir)
    assert not failures, "\n".join(failures[:20])
