"""rlm.bench: generators, gold answers, scoring rules, the oracle end to end, `rlm bench`."""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM
from rlm.bench import generate, generate_tasks, oolong, oolong_pairs, oracle, scoring, sniah
from rlm.bench.cli import add_arguments, bench_config
from rlm.bench.runner import BenchConfig, format_table, run
from rlm.bench.tasks import Task
from rlm.cli import main as cli_main
from rlm.commands import rlm_options
from rlm.commands.rlm_options import backend_settings
from rlm.core.types import Message
from rlm.errors import ConfigurationError, ProviderError
from rlm.logger import RLMLogger

pytestmark = pytest.mark.timeout(120)

MILLION = 2**20


# ------------------------------------------------------------------------ helpers


def run_oracle(task: Task, reader: oracle.OracleReader | None = None) -> tuple[str, Any]:
    """Run one task through a real RLM with the oracle root and sub-LM; (response, completion)."""
    reader = reader or oracle.OracleReader()
    reader.task = task
    root, sub, _ = oracle.backend_kwargs(task.benchmark, reader)
    with RLM(
        backend="scripted",
        backend_kwargs=root,
        other_backends=["scripted"],
        other_backend_kwargs=[sub],
        max_iterations=3,
        logger=RLMLogger(log_context=False),  # count_subcalls reads completion.metadata
    ) as rlm:
        completion = rlm.completion(task.context, root_prompt=task.question)
    return completion.response, completion


def hidden_rows(task: Task) -> list[tuple[date, int, str]]:
    h = task.hidden
    return [
        (date.fromisoformat(d), u, y)
        for d, u, y in zip(h["dates"], h["users"], h["labels"], strict=True)
    ]


# ------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("benchmark", ["sniah", "oolong", "oolong_pairs"])
def test_generators_are_deterministic_per_task(benchmark: str) -> None:
    batch = generate_tasks(benchmark, 8192, n=4)
    alone = generate(benchmark, 8192, 3)  # regenerates alone, without tasks 0-2
    assert (alone.context, alone.question, alone.gold) == (
        batch[3].context,
        batch[3].question,
        batch[3].gold,
    )
    assert alone.hidden == batch[3].hidden
    assert len({t.context for t in batch}) == 4
    reseeded = generate(benchmark, 8192, 3, seed=1)
    assert reseeded.context != alone.context
    assert generate("oolong-pairs" if benchmark == "oolong_pairs" else benchmark, 8192, 3).gold == (
        alone.gold
    )


def test_unknown_benchmark_and_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        generate("ruler", 8192, 0)
    with pytest.raises(ConfigurationError):
        generate("sniah", 0, 0)
    with pytest.raises(ConfigurationError):
        oolong_pairs.generate(8192, 0, query=21)


# ------------------------------------------------------------------------ S-NIAH


@pytest.mark.parametrize("length", [8192, 131_072])
def test_sniah_needle_and_gold(length: int) -> None:
    for task in generate_tasks("sniah", length, n=3):
        h = task.hidden
        assert abs(len(task.context) - 4 * length) < 300  # tokens ≈ chars / 4
        assert task.context[h["offset"] :].startswith(h["needle"])
        assert h["needle"] == f"One of the special magic numbers for {h['key']} is: {h['value']}."
        assert task.gold == h["value"] and re.fullmatch(r"\d{7}", task.gold)
        assert task.context.count(task.gold) == 1
        assert task.context.count("special magic") == 1
        assert h["key"] in task.question
        assert sniah.parse_question(task.question) == h["key"]
        assert h["depth"] in sniah.DEPTHS
        # at a sentence boundary, near the requested depth
        assert h["offset"] == 0 or task.context[h["offset"] - 2 : h["offset"]] == ". "
        assert abs(h["offset"] / len(task.context) - h["depth"]) < 0.01


def test_sniah_distractors_and_noise_haystack() -> None:
    task = sniah.generate(8192, 0, distractors=3)
    assert task.context.count("special magic numbers for") == 4
    assert len(task.hidden["needles"]) == 4
    assert task.hidden["needles"][task.hidden["key"]] == task.gold
    noise = sniah.generate(8192, 0, haystack="noise")
    assert "The grass is green." in noise.context
    with pytest.raises(ConfigurationError):
        sniah.generate(8192, 0, haystack="essays")


def test_sniah_million_tokens_generates() -> None:
    task = sniah.generate(MILLION, 0)
    assert abs(len(task.context) - 4 * MILLION) < 300
    assert task.approx_tokens == len(task.context) // 4


# ------------------------------------------------------------------------ OOLONG


def test_oolong_line_count_formula() -> None:
    assert oolong.n_lines(131_072) == 3182  # floor((131072*0.95 - 168 - 250) / 39)
    assert oolong.n_lines(MILLION) == 25_531
    assert oolong.n_lines(1024) == 14


def independent_gold(q: oolong.Question, rows: list[tuple[date, int, str]]) -> str:
    """The gold answer recomputed here, without the generator's code."""
    counts = {label: 0 for label in oolong.LABELS}
    for _, _, y in rows:
        counts[y] += 1

    def count(pred: Any) -> str:
        return str(len([1 for r in rows if pred(*r)]))

    def top(values: list[int]) -> str:
        tally: dict[int, int] = defaultdict(int)
        for v in values:
            tally[v] += 1
        best = max(tally.values())
        winners = [u for u, c in tally.items() if c == best]
        assert len(winners) == 1, "the generator must only ask about a unique top user"
        return str(winners[0])

    f = q.family
    if f in ("most_common_label", "least_common_label"):
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=f == "most_common_label")
        assert abs(ranked[0][1] - ranked[1][1]) > 0.02 * len(rows)  # OOLONG's 2% rule
        return ranked[0][0]
    if f == "label_comparison":
        a, b = counts[q.label or ""], counts[q.label_b or ""]
        assert a == b or abs(a - b) > 0.02 * len(rows)
        word = "more common than" if a > b else "less common than" if a < b else "same frequency as"
        return f"{q.label} is {word} {q.label_b}"
    if f == "label_count":
        return str(counts[q.label or ""])
    if f == "most_common_user":
        return top([u for _, u, _ in rows])
    if f == "user_most_label":
        return top([u for _, u, y in rows if y == q.label])
    if f == "user_subset_count":
        return count(lambda d, u, y: u in q.users and y == q.label)
    if f == "month_count":
        return count(lambda d, u, y: d.month == q.month and y == q.label)
    if f == "date_range_count":
        assert q.start is not None and q.end is not None
        return count(lambda d, u, y: q.start <= d <= q.end and y == q.label)
    if f == "months_a_over_b":
        months = {(d.year, d.month) for d, _, _ in rows}
        wins = 0
        for ym in months:
            a = len([1 for d, _, y in rows if (d.year, d.month) == ym and y == q.label])
            b = len([1 for d, _, y in rows if (d.year, d.month) == ym and y == q.label_b])
            wins += a > b
        return str(wins)
    if f == "label_date_extreme":
        days = sorted(d for d, _, y in rows if y == q.label)
        pick = days[0] if q.extreme == "earliest" else days[-1]
        return f"{pick.month:02d}/{pick.day:02d}/{pick.year}"
    raise AssertionError(f)


@pytest.mark.parametrize("length", [1024, 8192, 32_768])
def test_oolong_gold_recomputed_from_hidden_labels(length: int) -> None:
    tasks = generate_tasks("oolong", length, n=len(oolong.FAMILIES))
    assert {t.family for t in tasks} >= set(oolong.FAMILIES) - {
        "most_common_label",
        "least_common_label",
        "most_common_user",
        "user_most_label",
    }
    for task in tasks:
        q = oolong.parse_question(task.question)
        assert q.render() == task.question
        assert q.family == task.family and q.answer_type == task.answer_type
        assert task.gold == independent_gold(q, hidden_rows(task)), task.task_id


def test_oolong_context_matches_hidden_labels() -> None:
    task = oolong.generate(32_768, 0)
    n = oolong.n_lines(32_768)
    lines = [ln for ln in task.context.splitlines() if ln.startswith("Date: ")]
    assert len(lines) == n == len(task.hidden["labels"])
    assert f"contain {n} general-knowledge questions" in task.context
    assert "Label" not in task.context.replace("label", "")  # labels are never shown
    parsed = oolong.parse_lines(task.context)
    assert [d.isoformat() for d, _, _ in parsed] == task.hidden["dates"]
    assert [u for _, u, _ in parsed] == task.hidden["users"]
    assert [q for _, _, q in parsed] == task.hidden["instances"]
    assert re.match(
        r"Date: [A-Z][a-z]{2} \d{2}, 202[2-5] \|\| User: \d{5} \|\| Instance: ", lines[0]
    )


def test_oolong_label_is_a_function_of_the_text() -> None:
    seen: dict[str, str] = {}
    for index in range(4):
        task = oolong.generate(131_072, index)
        for text, label in zip(task.hidden["instances"], task.hidden["labels"], strict=True):
            assert seen.setdefault(text, label) == label, text


def test_oolong_users_are_skewed() -> None:
    task = oolong.generate(131_072, 0)
    tally: dict[int, int] = defaultdict(int)
    for u in task.hidden["users"]:
        tally[u] += 1
    ids = task.hidden["user_ids"]
    top = sorted(tally.values(), reverse=True)[: len(ids) // 5]
    assert 0.7 < sum(top) / len(task.hidden["users"]) < 0.9  # ~80% of lines on 20% of IDs


# ------------------------------------------------------------------------ OOLONG-Pairs


def brute_force_pairs(task: Task) -> set[tuple[int, int]]:
    q = oolong_pairs.parse_query(task.question)
    rows = hidden_rows(task)
    users = sorted({u for _, u, _ in rows})

    tally: dict[tuple[int, str], int] = defaultdict(int)
    for _, v, y in rows:
        tally[(v, y)] += 1

    def n(u: int, label: str) -> int:
        return tally[(u, label)]

    def meets(u: int, conditions: tuple[tuple[str, str], ...]) -> bool:
        limits = {
            "at least one": lambda k: k >= 1,
            "at least two": lambda k: k >= 2,
            "exactly one": lambda k: k == 1,
            "exactly two": lambda k: k == 2,
        }
        return all(limits[quant](n(u, label)) for quant, label in conditions)

    def symmetric(u: int) -> bool:
        if not any(n(u, x) for x in q.labels):
            return False
        if q.date_label is None:
            return True
        days = [d for d, v, y in rows if v == u and y == q.date_label]
        assert q.date_value is not None
        if q.date_side == "after":
            return all(d > q.date_value for d in days)
        return all(d < q.date_value for d in days)

    out = set()
    for a, b in combinations(users, 2):
        if q.symmetric:
            ok = symmetric(a) and symmetric(b)
        else:
            ok = (meets(a, q.first) and meets(b, q.second)) or (
                meets(b, q.first) and meets(a, q.second)
            )
        if ok:
            out.add((a, b))
    return out


def test_pairs_gold_recomputed_for_all_twenty_queries() -> None:
    sizes = []
    for task in generate_tasks("oolong_pairs", 8192, n=20):
        assert oolong_pairs.parse_query(task.question).render() == task.question
        expected = brute_force_pairs(task)
        assert scoring.parse_pairs(task.gold) == expected, task.task_id
        assert (task.gold == "[]") == (not expected)
        sizes.append(len(expected))
    assert sum(1 for s in sizes if s) >= 10  # most queries have answers at this size


def test_pairs_query_shapes() -> None:
    texts = [q.render() for q in oolong_pairs.QUERIES]
    assert len(set(texts)) == 20
    assert all("list all pairs in the format (user_id_1, user_id_2)" in t for t in texts)
    assert sum("both users have" in t for t in texts) == 10
    assert sum("must be after" in t or "must be before" in t for t in texts) == 5
    assert (
        "one user has at least two instances with a numeric value and the other user has "
        in (texts[11])
    )
    task = oolong_pairs.generate(32_768, 0)
    assert len(set(task.hidden["users"])) <= 300


# ------------------------------------------------------------------------ scoring rules


def test_substring_scoring() -> None:
    assert scoring.substring_score("1234567", "The magic number is 1234567.") == 1.0
    assert scoring.substring_score("AbC-9", "answer: xabc-9y") == 1.0
    assert scoring.substring_score("1234567", "123456") == 0.0
    assert scoring.substring_score("1234567", "") == 0.0


def test_numeric_scoring_is_075_to_the_error() -> None:
    assert scoring.numeric_score("10", "Answer: 10") == 1.0
    assert scoring.numeric_score("10", "Answer: 11") == 0.75
    assert scoring.numeric_score("10", "Answer: 8") == 0.5625
    assert scoring.numeric_score("10", "Answer: **9**") == 0.75
    assert scoring.numeric_score("10", "Answer: [12]") == 0.5625
    assert scoring.numeric_score("1500", "Answer: 1,500") == 1.0
    assert scoring.numeric_score("10", "Answer: ten") == 0.0
    assert scoring.numeric_score("10", "there are 10: I counted") == 0.0  # after the last ':'


def test_exact_label_and_user_scoring() -> None:
    assert scoring.exact_score("location", "Label: location") == 1.0
    assert scoring.exact_score("location", "Label: **[Location]**") == 1.0
    assert scoring.exact_score("location", "I think: Label: location") == 1.0
    assert scoring.exact_score("location", "Label: entity") == 0.0
    assert scoring.exact_score("location", "Label: location.") == 0.0  # exact match
    assert scoring.exact_score("12345", "User: 12345") == 1.0
    assert scoring.exact_score("12345", "User: 12346") == 0.0


def test_comparison_scoring() -> None:
    gold = "location is more common than entity"
    assert scoring.comparison_score(gold, "Answer: location is more common than entity") == 1.0
    assert scoring.comparison_score(gold, "Answer: more common") == 1.0
    assert scoring.comparison_score(gold, "Answer: location is less common than entity") == 0.0
    assert scoring.comparison_score(gold, "Answer: same frequency") == 0.0
    assert scoring.comparison_score(gold, "Answer: more common or less common") == 0.0
    same = "entity is same frequency as abbreviation"
    assert scoring.comparison_score(same, "Answer: entity is the same frequency as it") == 1.0


def test_date_scoring() -> None:
    assert scoring.date_score("01/05/2023", "Date: 01/05/2023") == 1.0
    assert scoring.date_score("01/05/2023", "Date: January 5, 2023") == 1.0
    assert scoring.date_score("01/05/2023", "Date: Jan 05, 2023") == 1.0
    assert scoring.date_score("01/05/2023", "Date: 2023-01-05") == 1.0
    assert scoring.date_score("01/05/2023", "Date: 01/06/2023") == 0.0
    assert scoring.date_score("01/05/2023", "Date: soon") == 0.0


def test_pair_f1() -> None:
    gold = "(1, 2)\n(3, 4)"
    assert scoring.pair_f1(gold, "(2, 1)\n(3,4)\n(3, 4)") == 1.0  # normalised, deduplicated
    assert scoring.pair_f1(gold, "(1, 2)\n(5, 6)") == pytest.approx(0.5)
    assert scoring.pair_f1(gold, "(1, 2)") == pytest.approx(2 / 3)  # P=1, R=1/2
    assert scoring.pair_f1(gold, "(1, 2), (3, 4), (5, 6), (7, 8)") == pytest.approx(2 / 3)
    assert scoring.pair_f1(gold, "(5, 6)") == 0.0
    assert scoring.pair_f1("[]", "[]") == 1.0
    assert scoring.pair_f1("[]", "no pairs") == 1.0
    assert scoring.pair_f1("[]", "(1, 2)") == 0.0
    assert scoring.pair_f1(gold, "[]") == 0.0


def test_task_score_uses_its_answer_type() -> None:
    numeric = Task("oolong", 8, 0, 0, "", "q", "10", "numeric", "label_count")
    assert numeric.score("Answer: 12") == 0.5625
    assert numeric.score(None) == 0.0
    with pytest.raises(ConfigurationError):
        Task("x", 8, 0, 0, "", "q", "1", "fuzzy", "f").score("1")


# ------------------------------------------------------------------------ the oracle


@pytest.mark.parametrize("length", [8192, 131_072, MILLION])
def test_oracle_sniah_scores_one(length: int) -> None:
    task = sniah.generate(length, 1)
    response, completion = run_oracle(task)
    assert completion.stop_reason == "final_answer"
    assert task.score(response) == 1.0
    expected_chunks = -(-len(task.context) // oracle.CHUNK_CHARS)
    from rlm.bench.runner import count_subcalls

    assert abs(count_subcalls(completion) - expected_chunks) <= 1


def test_oracle_sniah_with_distractors_answers_for_the_asked_key() -> None:
    task = sniah.generate(32_768, 2, distractors=4)
    response, _ = run_oracle(task)
    assert response.strip() == task.gold


def test_oracle_oolong_every_family_scores_one() -> None:
    tasks = generate_tasks("oolong", 8192, n=len(oolong.FAMILIES))
    for task in tasks:
        response, completion = run_oracle(task)
        assert task.score(response) == 1.0, (task.family, response, task.gold)
        assert completion.iterations == 1


def test_oracle_oolong_million_tokens() -> None:
    task = oolong.generate(MILLION, 3)
    response, completion = run_oracle(task)
    assert task.score(response) == 1.0
    from rlm.bench.runner import count_subcalls

    assert 5 <= count_subcalls(completion) <= 40  # ~100K characters of questions per call


def test_oracle_pairs_scores_one() -> None:
    for task in [*generate_tasks("oolong_pairs", 8192, n=20), oolong_pairs.generate(32_768, 3)]:
        response, _ = run_oracle(task)
        assert task.score(response) == 1.0, task.task_id


class OffByOneReader(oracle.OracleReader):
    """A reader that mislabels the one instance text occurring once with the asked label."""

    def __init__(self, text: str, wrong: str) -> None:
        super().__init__()
        self.text, self.wrong = text, wrong

    def _label(self, text: str) -> str:
        labels = json.loads(super()._label(text))
        questions = [line.partition(". ")[2] for line in text.splitlines()]
        pairs = zip(questions, labels, strict=True)
        return json.dumps([self.wrong if q == self.text else y for q, y in pairs])


def test_wrong_answers_score_what_the_rules_say() -> None:
    task = generate_tasks("oolong", 32_768, n=4)[3]
    assert task.family == "label_count"
    label = oolong.parse_question(task.question).label
    texts = [
        t
        for t, y in zip(task.hidden["instances"], task.hidden["labels"], strict=True)
        if y == label
    ]
    once = next(t for t in texts if task.hidden["instances"].count(t) == 1)
    other = next(x for x in oolong.LABELS if x != label)
    response, _ = run_oracle(task, OffByOneReader(once, other))
    assert scoring.parse_int(response) == int(task.gold) - 1
    assert task.score(response) == 0.75

    needle = sniah.generate(8192, 0)
    blind = oracle.OracleReader()
    blind._needle = lambda key, text: "none"  # type: ignore[method-assign]
    response, _ = run_oracle(needle, blind)
    assert needle.score(response) == 0.0


def test_oracle_root_reads_only_the_question() -> None:
    task = oolong.generate(8192, 2)
    root = oracle.make_root("oolong")
    messages: list[Message] = [{"role": "user", "content": "Answer this: " + task.question}]
    code = root(messages)
    assert code.startswith("```repl\n") and "llm_query_batched" in code
    assert task.gold not in code  # nothing from the hidden labels
    assert root([*messages, {"role": "assistant", "content": "x"}]).startswith("FINAL(")
    with pytest.raises(ConfigurationError):
        oracle.root_code("oolong", "What is the meaning of life?")


# ------------------------------------------------------------------------ runner and CLI


def test_cli_bench_oracle_prints_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    logs = tmp_path / "logs"
    code = cli_main(
        [
            "bench",
            "sniah",
            "--backend",
            "oracle",
            "--n",
            "2",
            "--lengths",
            "8192",
            "--out",
            str(out),
            "--log-dir",
            str(logs),
            "--plain",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[:5] == ["task", "length", "method", "n", "score"]
    rows = [line.split() for line in printed.splitlines() if line.startswith("sniah")]
    assert rows[0][:5] == ["sniah", "8192", "RLM", "2", "100.0"]
    assert rows[1][:5] == ["sniah", "8192", "plain", "2", "100.0"]
    assert "n/a" in rows[0]  # scripted models are unpriced
    data = json.loads(out.read_text())
    assert data["schema"] == "rlm-bench-results"
    assert data["token_approximation"].startswith("tokens ≈ characters / 4")
    assert [t["task_id"] for t in data["tasks"]] == ["sniah-8192-0", "sniah-8192-1"]
    for record in data["tasks"]:
        assert record["rlm"]["score"] == 1.0 and record["rlm"]["subcalls"] == 1
        assert record["rlm"]["stop_reason"] == "final_answer"
        assert record["plain"]["score"] == 1.0
        assert Path(record["rlm"]["log_file"]).exists()
    assert len(list(logs.glob("sniah-8192-*.jsonl"))) == 2
    summary = {row["method"]: row for row in data["summary"]}
    assert summary["rlm"]["n"] == 2 and summary["rlm"]["subcalls_per_task"] == 1.0
    assert summary["rlm"]["mean_cost"] is None


def test_runner_costs_and_table_with_prices() -> None:
    config = BenchConfig(
        benchmarks=["oolong"],
        settings={"backend": "oracle", "backend_kwargs": {"prices": {"input": 1.0, "output": 4.0}}},
        lengths=[2048],
        n=3,
    )
    results = run(config)
    (row,) = results.summary()
    assert row["score"] == 1.0 and row["priced"] == 3
    costs = sorted(t["rlm"]["cost"] for t in results.tasks)
    assert all(c > 0 for c in costs)
    assert row["median_cost"] == pytest.approx(costs[1])
    assert row["mean_cost"] == pytest.approx(sum(costs) / 3)
    table = format_table(results)
    assert f"${costs[1]:.4f}" in table and "oolong" in table


def test_runner_records_provider_failures_as_zero() -> None:
    def broken(messages: list[Message]) -> str:
        raise ProviderError("context window exceeded", provider="scripted")

    config = BenchConfig(
        benchmarks=["sniah"],
        settings=backend_settings("scripted", {"responses": broken}, model="broken"),
        lengths=[1024],
        n=1,
        plain=True,
    )
    (record,) = run(config).tasks
    assert record["plain"]["score"] == 0.0 and "context window" in record["plain"]["error"]
    assert record["rlm"]["score"] == 0.0 and record["rlm"]["stop_reason"] == "error"


def test_cli_errors_and_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    from rlm.bench.cli import parse_length, parse_lengths

    assert parse_lengths("8192,32K,2^17,1M") == [8192, 32_768, 131_072, MILLION]
    with pytest.raises(Exception, match="not a length"):
        parse_length("lots")
    assert cli_main(["bench", "ruler", "--backend", "oracle"]) == 2
    assert cli_main(["bench", "sniah", "--backend", "openai", "--n", "1"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert cli_main(["bench", "sniah", "--backend", "oracle", "--sub-model", "gpt-5-mini"]) == 2
    assert "brings its own" in capsys.readouterr().err


def test_results_config_masks_secrets() -> None:
    config = BenchConfig(
        benchmarks=["sniah"], settings=backend_settings("openai", {"api_key": "sk-123"}, model="m")
    )
    assert config.to_dict()["settings"]["backend_kwargs"] == {"api_key": "***", "model_name": "m"}


def test_sub_model_gets_connection_settings_but_not_root_prices() -> None:
    from rlm.bench.runner import Backends

    config = BenchConfig(
        benchmarks=["oolong"],
        settings=backend_settings(
            "vllm",
            {"base_url": "http://h/v1", "prices": {"input": 9.0, "output": 9.0}},
            model="big",
            sub_model="small",
        ),
    )
    backends = Backends(config, "oolong")
    assert backends.settings["other_backends"] == ["vllm"]
    assert backends.settings["other_backend_kwargs"] == [
        {"base_url": "http://h/v1", "model_name": "small"}
    ]
    assert backends.settings["backend_kwargs"]["prices"] == {"input": 9.0, "output": 9.0}
    assert (backends.root_model, backends.sub_model) == ("big", "small")
    assert backends.plain == ("vllm", backends.settings["backend_kwargs"])


def bench_args(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["oolong", *options])


def test_backend_arg_and_older_backend_kwargs_give_the_same_settings() -> None:
    new = bench_config(
        bench_args(
            "--backend",
            "vllm",
            "--model",
            "big",
            "--sub-model",
            "small",
            "--backend-arg",
            "base_url=http://h/v1",
            "--backend-arg",
            'prices={"input": 2, "output": 3}',
            "--sub-backend-arg",
            "timeout=30",
        )
    )
    old = bench_config(
        bench_args(
            "--backend",
            "vllm",
            "--model",
            "big",
            "--sub-model",
            "small",
            "--backend-kwargs",
            '{"base_url": "http://h/v1", "prices": {"input": 2, "output": 3}}',
            "--sub-backend-kwargs",
            '{"timeout": 30}',
        )
    )
    assert new.settings == old.settings
    assert new.settings["backend_kwargs"] == {
        "base_url": "http://h/v1",
        "prices": {"input": 2, "output": 3},
        "model_name": "big",
    }
    assert new.settings["other_backend_kwargs"] == [
        {"base_url": "http://h/v1", "timeout": 30, "model_name": "small"}
    ]
    # Where both spellings name a key, --backend-arg wins.
    both = bench_config(
        bench_args(
            "--backend",
            "vllm",
            "--model",
            "m",
            "--backend-kwargs",
            '{"timeout": 1}',
            "--backend-arg",
            "timeout=2",
        )
    )
    assert both.settings["backend_kwargs"]["timeout"] == 2


def test_bench_and_run_map_options_to_the_same_rlm_settings() -> None:
    from rlm.commands import run as run_command

    common = [
        "--backend",
        "openai",
        "--model",
        "gpt-5",
        "--sub-model",
        "gpt-5-mini",
        "--backend-arg",
        "base_url=http://h/v1",
        "-e",
        "docker",
        "--env-arg",
        "timeout=30",
        "--max-depth",
        "2",
        "--max-iterations",
        "7",
        "--max-budget",
        "0.5",
        "--max-timeout",
        "60",
        "--max-tokens",
        "1000",
        "--max-subcalls",
        "9",
        "--max-errors",
        "3",
        "--allow-unpriced-models",
    ]
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    run_args = parser.parse_args(["-p", "q", *common])
    bench = bench_config(bench_args(*common))
    assert bench.settings == rlm_options.rlm_settings(run_args)
    assert bench.settings["environment_kwargs"] == {"timeout": 30}
    assert bench.settings["max_subcalls"] == 9
    assert bench.settings["other_backends"] == ["openai"]
    assert bench.settings["other_backend_kwargs"] == [
        {"base_url": "http://h/v1", "model_name": "gpt-5-mini"}
    ]


def test_older_backend_kwargs_refuses_secrets_and_bad_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigurationError, match="secrets are not accepted"):
        bench_config(
            bench_args(
                "--backend", "openai", "--model", "m", "--backend-kwargs", '{"api_key": "sk-abc"}'
            )
        )
    with pytest.raises(SystemExit) as exited:
        cli_main(
            ["bench", "sniah", "--backend", "openai", "--model", "m", "--backend-kwargs", "[1]"]
        )
    assert exited.value.code == 2 and "expected a JSON object" in capsys.readouterr().err
