// The parser and model against a recorded run (fixtures/recursion.jsonl: a root that runs
// rlm_query_batched over three parts — each child makes an llm_query — then llm_query_batched,
// and a block that raises) and against broken files.

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { buildTrajectory } from "./model";
import type { RunNode, SubcallNode } from "./model";
import { LogParser, MAX_LISTED_ERRORS, parseLog } from "./parse";
import { searchTrajectory } from "./search";
import { maxParallel, timelineRows, usageBreakdown } from "./stats";
import { summarize } from "./summary";
import { allParents, ancestors, defaultExpanded, flatten } from "./tree";

const FIXTURE = readFileSync(new URL("./fixtures/recursion.jsonl", import.meta.url), "utf8");
const LINES = FIXTURE.trimEnd().split("\n");

function load(text: string) {
  const parsed = parseLog(text);
  return { parsed, traj: buildTrajectory(parsed) };
}

describe("parseLog", () => {
  it("reads every record of a complete log", () => {
    const parsed = parseLog(FIXTURE);
    expect(parsed.errors).toEqual([]);
    expect(parsed.truncatedTail).toBeNull();
    expect(parsed.problem).toBeNull();
    expect(parsed.version).toBe(1);
    expect(parsed.records).toHaveLength(LINES.length);
    expect(parsed.records[0].type).toBe("header");
    expect(parsed.records.at(-1)!.type).toBe("run_end");
    expect(parsed.records.map((r) => r.line)).toEqual(LINES.map((_, i) => i + 1));
  });

  it("gives the same result however the text is chunked", () => {
    const parser = new LogParser();
    for (let i = 0; i < FIXTURE.length; i += 777) parser.push(FIXTURE.slice(i, i + 777));
    const chunked = parser.end();
    expect(chunked.records.map((r) => r.data)).toEqual(parseLog(FIXTURE).records.map((r) => r.data));
  });

  it("lists the lines that do not parse, by number, and keeps the rest", () => {
    const lines = [...LINES];
    lines.splice(3, 0, "{not json", "[1, 2]", '{"no_type": true}', "");
    const parsed = parseLog(lines.join("\n") + "\n");
    expect(parsed.errors.map((e) => e.line)).toEqual([4, 5, 6]);
    expect(parsed.errors[0].message).toMatch(/not valid JSON/);
    expect(parsed.errors[0].text).toBe("{not json");
    expect(parsed.errors[1].message).toMatch(/not a JSON object/);
    expect(parsed.errors[2].message).toMatch(/'type'/);
    expect(parsed.errorCount).toBe(3);
    expect(parsed.records).toHaveLength(LINES.length);
    expect(parsed.problem).toBeNull();
  });

  it("tolerates a last line cut off mid-write", () => {
    const cut = LINES.slice(0, 10).join("\n") + "\n" + LINES[10].slice(0, 50);
    const parsed = parseLog(cut);
    expect(parsed.truncatedTail).toEqual({ line: 11, chars: 50 });
    expect(parsed.errors).toEqual([]);
    expect(parsed.records).toHaveLength(10);
    const traj = buildTrajectory(parsed);
    expect(traj.complete).toBe(false);
    expect(traj.root?.ended).toBe(false);
    expect(traj.root?.end).not.toBeNull(); // ends at its last recorded activity
  });

  it("keeps a last line without newline when it parses", () => {
    const parsed = parseLog(LINES.join("\n"));
    expect(parsed.truncatedTail).toBeNull();
    expect(parsed.records).toHaveLength(LINES.length);
  });

  it("accepts CRLF line ends and a byte-order mark", () => {
    const parsed = parseLog("\ufeff" + LINES.join("\r\n") + "\r\n");
    expect(parsed.errors).toEqual([]);
    expect(parsed.records).toHaveLength(LINES.length);
  });

  it("names an unknown schema version", () => {
    const header = JSON.parse(LINES[0]);
    header.version = 7;
    const parsed = parseLog([JSON.stringify(header), ...LINES.slice(1)].join("\n") + "\n");
    expect(parsed.problem?.kind).toBe("version");
    expect(parsed.problem?.message).toContain("version 7");
    expect(parsed.version).toBe(7);
  });

  it("rejects another schema and a header without a version", () => {
    expect(parseLog('{"type": "header", "schema": "other", "version": 1}\n').problem?.kind).toBe(
      "schema",
    );
    const noVersion = parseLog('{"type": "header", "schema": "rlm-trajectory"}\n');
    expect(noVersion.problem?.kind).toBe("version");
  });

  it("says when a file holds no records", () => {
    expect(parseLog("").problem?.kind).toBe("empty");
    expect(parseLog("\n\n").problem?.kind).toBe("empty");
    expect(parseLog("garbage\nmore garbage\n").problem?.message).toMatch(/no line/);
    expect(parseLog('{"type": "iteration"}\n').problem?.kind).toBe("no-run");
  });

  it("points a reference log opened from disk to the tools that convert it", () => {
    const reference = readFileSync(
      new URL("../../../tests/fixtures/reference_logs/reference_basic.jsonl", import.meta.url),
      "utf8",
    );
    const parsed = parseLog(reference);
    expect(parsed.problem?.kind).toBe("no-run");
    expect(parsed.problem?.message).toMatch(/reference implementation.*rlm view/);
  });

  it("caps the listed errors but counts them all", () => {
    const parsed = parseLog("x\n".repeat(MAX_LISTED_ERRORS + 50));
    expect(parsed.errors).toHaveLength(MAX_LISTED_ERRORS);
    expect(parsed.errorCount).toBe(MAX_LISTED_ERRORS + 50);
  });
});

describe("buildTrajectory", () => {
  const { parsed, traj } = load(FIXTURE);
  const root = traj.root as RunNode;

  it("rebuilds the recursion tree from parent ids", () => {
    expect(traj.complete).toBe(true);
    expect(root.depth).toBe(0);
    expect(root.rootPrompt).toBe("Which parts does the text have?");
    expect(root.answer).toBe("alpha part / beta part / gamma part");
    expect(root.stopReason).toBe("final_answer");
    expect(root.iterations.map((i) => i.number)).toEqual([1, 2, 3]);
    expect(root.iterations[1].blocks).toHaveLength(2);
    expect(root.iterations[1].blocks[1].error).toMatch(/^NameError/);
    expect(traj.runs.size).toBe(4);
  });

  it("links every rlm sub-call to the child run it started", () => {
    const calls = root.iterations[1].blocks[0].subcalls;
    expect(calls.map((c) => c.callKind)).toEqual(["rlm", "rlm", "rlm", "llm", "llm", "llm"]);
    const rlmCalls = calls.filter((c) => c.callKind === "rlm");
    for (const call of rlmCalls) {
      expect(call.child).not.toBeNull();
      expect(call.child!.rootPrompt.startsWith(call.prompt)).toBe(true);
      expect(call.child!.depth).toBe(1);
      // each child made one llm_query at depth 2
      const inner = call.child!.iterations[0].blocks[0].subcalls;
      expect(inner).toHaveLength(1);
      expect(inner[0].depth).toBe(2);
      expect(call.child!.answer).toBe(call.response);
    }
    expect(new Set(rlmCalls.map((c) => c.child!.id)).size).toBe(3);
    expect(root.looseChildren).toEqual([]);
    expect(root.looseSubcalls).toEqual([]);
  });

  it("flattens the tree for the virtualised list", () => {
    const all = flatten(root, allParents(traj));
    expect(all).toHaveLength(traj.nodes.size);
    expect(all[0].node).toBe(root);
    const collapsed = flatten(root, new Set());
    expect(collapsed).toHaveLength(1);
    expect(collapsed[0].hasChildren).toBe(true);
    // small runs open fully by default
    expect(defaultExpanded(traj).size).toBe(allParents(traj).size);
    const leaf = traj.subcalls.find((c) => c.depth === 2) as SubcallNode;
    const path = ancestors(traj, leaf.key);
    expect(path[0]).toBe(root.key);
    expect(path).toHaveLength(7); // run, it, block, rlm call, child run, it, block
  });

  it("sums usage per model and per depth from the leaves", () => {
    const usage = usageBreakdown(traj);
    expect(usage.total.calls).toBe(root.totals!.calls);
    expect(usage.total.input).toBe(root.totals!.input);
    expect(usage.total.output).toBe(root.totals!.output);
    expect(usage.total.cost).toBeCloseTo(root.totals!.cost!, 10);
    const byModel = Object.fromEntries(usage.byModel.map((r) => [r.key, r]));
    expect(byModel["root-model"].calls).toBe(3);
    expect(byModel["root-model"].unpriced).toBe(3);
    expect(byModel["sub-model"].calls).toBe(12);
    expect(usage.byDepth.map((r) => [r.key, r.calls])).toEqual([
      ["depth 0", 3],
      ["depth 1", 9],
      ["depth 2", 3],
    ]);
  });

  it("lays out a timeline in which the batched calls overlap", () => {
    const rows = timelineRows(traj);
    expect(rows[0].node).toBe(root);
    expect(rows.filter((r) => r.node.kind === "subcall")).toHaveLength(traj.subcalls.length);
    for (const r of rows) {
      expect(r.end).toBeGreaterThanOrEqual(r.start);
      expect(r.start).toBeGreaterThanOrEqual(traj.t0!);
      expect(r.end).toBeLessThanOrEqual(traj.t1!);
    }
    const rlmCalls = traj.subcalls.filter((c) => c.callKind === "rlm");
    expect(maxParallel(rlmCalls)).toBe(3);
  });

  it("counts parallel calls from their spans", () => {
    const call = (started: number, ended: number) =>
      ({ started, ended }) as unknown as SubcallNode;
    expect(maxParallel([call(0, 1), call(1, 2), call(2, 3)])).toBe(1);
    expect(maxParallel([call(0, 5), call(1, 2), call(1.5, 3)])).toBe(3);
    expect(maxParallel([])).toBe(0);
  });

  it("finds text anywhere in the run", () => {
    const hits = searchTrajectory(traj, "gamma PART").hits;
    const fields = new Set(hits.map((h) => h.field));
    expect(fields.has("answer")).toBe(true);
    expect(fields.has("prompt")).toBe(true);
    expect(fields.has("response")).toBe(true);
    expect(hits.every((h) => h.match.toLowerCase() === "gamma part")).toBe(true);
    const err = searchTrajectory(traj, "undefined_name").hits.map((h) => h.field);
    expect(err).toContain("code");
    expect(err).toContain("error");
    expect(searchTrajectory(traj, "(unbalanced[").hits).toEqual([]);
    expect(searchTrajectory(traj, "part", 2).hits).toHaveLength(2);
  });

  it("summarises a run for the run list", () => {
    const s = summarize(parsed, traj);
    expect(s.answer).toBe("alpha part / beta part / gamma part");
    expect(s.models.sort()).toEqual(["root-model", "sub-model"]);
    expect(s.stop_reason).toBe("final_answer");
    expect(s.calls).toBe(15);
    expect(s.complete).toBe(true);
    expect(s.runs).toBe(4);
    expect(s.problem).toBeNull();
  });
});

describe("damaged logs", () => {
  it("shows the runs of a log cut off while children were running", () => {
    const { traj } = load(LINES.slice(0, 12).join("\n") + "\n");
    const root = traj.root as RunNode;
    expect(root.ended).toBe(false);
    // the rlm sub-calls were not written yet: the children hang under the root
    expect(root.looseChildren).toHaveLength(3);
    expect(traj.nodes.has(root.looseChildren[0].key)).toBe(true);
    expect(summarize(parseLog(""), null).complete).toBe(false);
  });

  it("keeps records whose fields have unexpected types", () => {
    const text = [
      LINES[0],
      JSON.stringify({ type: "run_start", run_id: "r", depth: "zero", settings: [] }),
      JSON.stringify({
        type: "iteration",
        run_id: "r",
        prompt: "not a list",
        code_blocks: [{ code: 5, locals: null, subcalls: ["missing"] }],
        usage: null,
      }),
      JSON.stringify({ type: "subcall", parent_id: "elsewhere", kind: "llm", started: "x" }),
      JSON.stringify({ type: "future_record", x: 1 }),
    ].join("\n");
    const { traj } = load(text + "\n");
    const root = traj.root as RunNode;
    expect(root.id).toBe("r");
    expect(root.depth).toBe(0);
    expect(root.iterations[0].blocks[0].code).toBe("5");
    expect(root.iterations[0].blocks[0].missingSubcalls).toEqual(["missing"]);
    expect(root.looseSubcalls).toHaveLength(1); // its parent run is not in the log
    expect(traj.unknownTypes).toEqual({ future_record: 1 });
    expect(timelineRows(traj)).toEqual([]); // nothing has a time: nothing to place
  });
});
