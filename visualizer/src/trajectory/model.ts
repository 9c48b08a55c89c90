// Turns parsed records into the recursion tree the app shows: runs → iterations → code blocks →
// sub-calls → child runs. Fields are read defensively (a log is data, not a promise), and the
// tree is rebuilt from parent ids as docs/trajectory-format.md describes.

import type { JsonObject, ParsedLog, RawRecord } from "./parse";

export interface Usage {
  input: number;
  output: number;
  cached: number;
  cost: number | null;
}

export interface Message {
  role: string;
  content: string;
}

export interface SubcallNode {
  kind: "subcall";
  key: string;
  id: string;
  parentId: string;
  callKind: string; // llm | rlm | tool | anything newer
  depth: number;
  model: string;
  prompt: string;
  promptTruncated: boolean;
  response: string;
  responseTruncated: boolean;
  responseChars: number | null;
  usage: Usage | null;
  started: number | null;
  ended: number | null;
  duration: number | null;
  error: string | null;
  line: number;
  child: RunNode | null;
  /** Set once a code block lists this call; unlisted calls hang under their run. */
  attached: boolean;
}

export interface BlockNode {
  kind: "block";
  key: string;
  runId: string;
  index: number; // 1-based within the iteration
  code: string;
  stdout: string;
  stderr: string;
  error: string | null;
  timedOut: boolean;
  executionTime: number | null;
  finalAnswer: string | null;
  locals: [string, string][];
  subcalls: SubcallNode[];
  missingSubcalls: string[];
  iteration: IterationNode;
}

export interface IterationNode {
  kind: "iteration";
  key: string;
  runId: string;
  depth: number;
  number: number;
  prompt: Message[];
  response: string;
  blocks: BlockNode[];
  finalAnswer: string | null;
  time: number | null;
  usage: Usage | null;
  start: number | null;
  end: number | null;
  line: number;
}

export interface RunNode {
  kind: "run";
  key: string;
  id: string;
  parentId: string;
  depth: number;
  model: string;
  environment: string;
  rootPrompt: string;
  contextType: string;
  contextLength: number | null;
  settings: JsonObject;
  context: unknown;
  hasContext: boolean;
  start: number | null;
  end: number | null;
  ended: boolean;
  answer: string | null;
  stopReason: string | null;
  error: string | null;
  iterationCount: number | null;
  executionTime: number | null;
  totals: {
    calls: number | null;
    input: number | null;
    output: number | null;
    cost: number | null;
    /** Calls to models without a price: `cost` leaves them out and is a lower bound. */
    unpriced: number | null;
  } | null;
  modelSummaries: Record<string, JsonObject>;
  iterations: IterationNode[];
  /** Sub-calls of this run that no code block lists (e.g. the run was cut off mid-turn). */
  looseSubcalls: SubcallNode[];
  /** Child runs no `rlm` sub-call could be matched to (still running when the log ended). */
  looseChildren: RunNode[];
  line: number;
}

export type TreeNode = RunNode | IterationNode | BlockNode | SubcallNode;

export interface Trajectory {
  header: JsonObject | null;
  rootId: string;
  root: RunNode | null;
  runs: Map<string, RunNode>;
  subcalls: SubcallNode[];
  nodes: Map<string, TreeNode>;
  parents: Map<string, string>;
  /** Earliest and latest instants in the log (epoch seconds), for the timeline. */
  t0: number | null;
  t1: number | null;
  complete: boolean;
  unknownTypes: Record<string, number>;
}

/** Wall time of a run: as recorded, or (unfinished) up to its last recorded activity. */
export function runDuration(run: RunNode): number | null {
  if (run.executionTime !== null) return run.executionTime;
  return run.start !== null && run.end !== null ? run.end - run.start : null;
}

// ---------------------------------------------------------------- field readers

function str(value: unknown, fallback = ""): string {
  if (typeof value === "string") return value;
  if (value === null || value === undefined) return fallback;
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function strOrNull(value: unknown): string | null {
  return value === null || value === undefined ? null : str(value);
}

function num(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function obj(value: unknown): JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as JsonObject)
    : {};
}

function usage(value: unknown): Usage | null {
  if (typeof value !== "object" || value === null) return null;
  const u = value as JsonObject;
  return {
    input: num(u.input_tokens) ?? 0,
    output: num(u.output_tokens) ?? 0,
    cached: num(u.cached_tokens) ?? 0,
    cost: num(u.cost),
  };
}

function messages(value: unknown): Message[] {
  if (!Array.isArray(value)) return [];
  return value.map((m) => {
    const o = obj(m);
    return { role: str(o.role, "?"), content: contentText(o.content) };
  });
}

function contentText(content: unknown): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((p) => (typeof p === "string" ? p : str(obj(p).text ?? p))).join("");
  }
  return str(content);
}

// ---------------------------------------------------------------- building

function newRun(id: string, data: JsonObject, line: number): RunNode {
  return {
    kind: "run",
    key: `run:${id}`,
    id,
    parentId: str(data.parent_id),
    depth: num(data.depth) ?? 0,
    model: str(data.root_model),
    environment: str(data.environment),
    rootPrompt: str(data.root_prompt),
    contextType: str(data.context_type),
    contextLength: num(data.context_total_length),
    settings: obj(data.settings),
    context: data.context,
    hasContext: "context" in data,
    start: num(data.t),
    end: null,
    ended: false,
    answer: null,
    stopReason: null,
    error: null,
    iterationCount: null,
    executionTime: null,
    totals: null,
    modelSummaries: {},
    iterations: [],
    looseSubcalls: [],
    looseChildren: [],
    line,
  };
}

function newSubcall(data: JsonObject, line: number, index: number): SubcallNode {
  const id = str(data.id) || `line${line}`;
  const started = num(data.started);
  const ended = num(data.ended);
  return {
    kind: "subcall",
    key: `sub:${id}:${index}`,
    id,
    parentId: str(data.parent_id),
    callKind: str(data.kind, "llm"),
    depth: num(data.depth) ?? 0,
    model: str(data.model),
    prompt: str(data.prompt),
    promptTruncated: data.prompt_truncated === true,
    response: str(data.response),
    responseTruncated: data.response_truncated === true,
    responseChars: num(data.response_chars),
    usage: usage(data.usage),
    started,
    ended,
    duration: num(data.duration) ?? (started !== null && ended !== null ? ended - started : null),
    error: strOrNull(data.error),
    line,
    child: null,
    attached: false,
  };
}

function newIteration(run: RunNode, data: JsonObject, line: number): IterationNode {
  const index = run.iterations.length;
  const end = num(data.t);
  const time = num(data.iteration_time);
  const it: IterationNode = {
    kind: "iteration",
    key: `it:${run.id}:${index}`,
    runId: run.id,
    depth: num(data.depth) ?? run.depth,
    number: num(data.iteration) ?? index + 1,
    prompt: messages(data.prompt),
    response: str(data.response),
    blocks: [],
    finalAnswer: strOrNull(data.final_answer),
    time,
    usage: usage(data.usage),
    start: end !== null && time !== null ? end - time : end,
    end,
    line,
  };
  return it;
}

function newBlock(it: IterationNode, data: JsonObject, index: number): BlockNode {
  const locals = Object.entries(obj(data.locals)).map(([k, v]) => [k, str(v)] as [string, string]);
  return {
    kind: "block",
    key: `blk:${it.runId}:${it.key.split(":").pop()}:${index}`,
    runId: it.runId,
    index: index + 1,
    code: str(data.code),
    stdout: str(data.stdout),
    stderr: str(data.stderr),
    error: strOrNull(data.error),
    timedOut: data.timed_out === true,
    executionTime: num(data.execution_time),
    finalAnswer: strOrNull(data.final_answer),
    locals,
    subcalls: [],
    missingSubcalls: [],
    iteration: it,
  };
}

/** Which child run does each `rlm` sub-call stand for? The log has no direct link: a child's
 * run_start shares the call's parent run, starts inside the call's time span and its task
 * prompt begins with the call's prompt preview. */
function matchChildren(parent: string, calls: SubcallNode[], children: RunNode[]): void {
  const free = new Set(children);
  const ordered = [...calls].sort((a, b) => (a.started ?? 0) - (b.started ?? 0));
  for (const call of ordered) {
    let best: RunNode | null = null;
    let bestScore = 0;
    let bestGap = Infinity;
    for (const child of free) {
      if (child.parentId !== parent) continue;
      let score = 0;
      if (call.prompt && child.rootPrompt.startsWith(call.prompt)) score += 2;
      else if (call.prompt && call.prompt.startsWith(child.rootPrompt) && child.rootPrompt) {
        score += 1;
      }
      const s = child.start;
      const inside =
        s !== null &&
        call.started !== null &&
        s >= call.started - 0.5 &&
        (call.ended === null || s <= call.ended + 0.5);
      if (inside) score += 1;
      if (score === 0) continue;
      const gap = s !== null && call.started !== null ? Math.abs(s - call.started) : Infinity;
      if (score > bestScore || (score === bestScore && gap < bestGap)) {
        best = child;
        bestScore = score;
        bestGap = gap;
      }
    }
    if (best) {
      call.child = best;
      free.delete(best);
    }
  }
}

export function buildTrajectory(parsed: ParsedLog): Trajectory {
  const runs = new Map<string, RunNode>();
  const subcalls: SubcallNode[] = [];
  const subcallById = new Map<string, SubcallNode>();
  const iterRecords: RawRecord[] = [];
  const unknownTypes: Record<string, number> = {};
  let t0: number | null = null;
  let t1: number | null = null;
  const see = (t: number | null) => {
    if (t === null) return;
    if (t0 === null || t < t0) t0 = t;
    if (t1 === null || t > t1) t1 = t;
  };

  const runFor = (id: string, line: number, data: JsonObject = {}): RunNode => {
    let run = runs.get(id);
    if (!run) {
      run = newRun(id, data, line);
      runs.set(id, run);
    }
    return run;
  };

  for (const rec of parsed.records) {
    const d = rec.data;
    switch (rec.type) {
      case "header":
        see(num(d.t));
        break;
      case "run_start": {
        const id = str(d.run_id);
        if (!id) break;
        const existing = runs.get(id);
        const run = newRun(id, d, rec.line);
        if (existing) {
          // Records that arrived before the run_start (out-of-order files) keep their place.
          run.iterations = existing.iterations;
        }
        runs.set(id, run);
        see(run.start);
        break;
      }
      case "iteration":
        iterRecords.push(rec);
        break;
      case "subcall": {
        const call = newSubcall(d, rec.line, subcalls.length);
        subcalls.push(call);
        if (!subcallById.has(call.id)) subcallById.set(call.id, call);
        see(call.started);
        see(call.ended);
        break;
      }
      case "run_end": {
        const id = str(d.run_id);
        if (!id) break;
        const run = runFor(id, rec.line, d);
        run.ended = true;
        run.end = num(d.t);
        run.answer = strOrNull(d.answer);
        run.stopReason = strOrNull(d.stop_reason);
        run.error = strOrNull(d.error);
        run.iterationCount = num(d.iterations);
        run.executionTime = num(d.execution_time);
        const totals = obj(d.totals);
        run.totals = {
          calls: num(totals.calls),
          input: num(totals.input_tokens),
          output: num(totals.output_tokens),
          cost: num(totals.cost),
          unpriced: num(totals.unpriced_calls),
        };
        const summaries = obj(obj(d.usage).model_usage_summaries);
        run.modelSummaries = Object.fromEntries(
          Object.entries(summaries).map(([k, v]) => [k, obj(v)]),
        );
        if (!run.hasContext && "context" in d) {
          run.context = d.context;
          run.hasContext = true;
        }
        if (run.start === null && run.end !== null && run.executionTime !== null) {
          run.start = run.end - run.executionTime;
        }
        see(run.end);
        break;
      }
      default:
        unknownTypes[rec.type] = (unknownTypes[rec.type] ?? 0) + 1;
    }
  }

  for (const rec of iterRecords) {
    const id = str(rec.data.run_id);
    const run = runFor(id, rec.line, { run_id: id, depth: rec.data.depth });
    const it = newIteration(run, rec.data, rec.line);
    const blocks = Array.isArray(rec.data.code_blocks) ? rec.data.code_blocks : [];
    blocks.forEach((b, j) => {
      const data = obj(b);
      const block = newBlock(it, data, j);
      const ids = Array.isArray(data.subcalls) ? data.subcalls : [];
      for (const raw of ids) {
        const call = subcallById.get(str(raw));
        if (call && !call.attached) {
          call.attached = true;
          block.subcalls.push(call);
        } else if (!call) {
          block.missingSubcalls.push(str(raw));
        }
      }
      // Calls finish (and are listed) in any order: show them in the order they started.
      block.subcalls.sort((a, b) => (a.started ?? Infinity) - (b.started ?? Infinity));
      it.blocks.push(block);
    });
    run.iterations.push(it);
    see(it.start);
    see(it.end);
  }

  const orphanCalls: SubcallNode[] = [];
  for (const call of subcalls) {
    if (!call.attached) {
      const parent = runs.get(call.parentId);
      if (parent) parent.looseSubcalls.push(call);
      else orphanCalls.push(call);
    }
  }

  // Link child runs to the `rlm` sub-calls that started them.
  const childrenOf = new Map<string, RunNode[]>();
  for (const run of runs.values()) {
    if (!run.parentId) continue;
    const list = childrenOf.get(run.parentId) ?? [];
    list.push(run);
    childrenOf.set(run.parentId, list);
  }
  for (const [parent, children] of childrenOf) {
    const calls = subcalls.filter((c) => c.parentId === parent && c.callKind === "rlm");
    matchChildren(parent, calls, children);
  }
  const linked = new Set(subcalls.map((c) => c.child).filter((c): c is RunNode => c !== null));
  for (const [parent, children] of childrenOf) {
    const owner = runs.get(parent);
    for (const child of children) {
      if (!linked.has(child) && owner) owner.looseChildren.push(child);
    }
  }

  const headerRoot = parsed.header ? str(parsed.header.root_run_id) : "";
  let root = headerRoot ? (runs.get(headerRoot) ?? null) : null;
  if (!root) {
    root = [...runs.values()].find((r) => !r.parentId || !runs.has(r.parentId)) ?? null;
  }

  if (root) root.looseSubcalls.push(...orphanCalls);

  // An unfinished run ends where its last recorded activity does.
  const nodes = new Map<string, TreeNode>();
  const parents = new Map<string, string>();
  const visitRun = (run: RunNode, parentKey: string | null, seen: Set<string>): number | null => {
    if (seen.has(run.id)) return run.end;
    seen.add(run.id);
    nodes.set(run.key, run);
    if (parentKey) parents.set(run.key, parentKey);
    let last: number | null = run.start;
    const bump = (t: number | null) => {
      if (t !== null && (last === null || t > last)) last = t;
    };
    for (const it of run.iterations) {
      nodes.set(it.key, it);
      parents.set(it.key, run.key);
      bump(it.end);
      for (const block of it.blocks) {
        nodes.set(block.key, block);
        parents.set(block.key, it.key);
        for (const call of block.subcalls) bump(visitCall(call, block.key, seen));
      }
    }
    for (const call of run.looseSubcalls) bump(visitCall(call, run.key, seen));
    for (const child of run.looseChildren) bump(visitRun(child, run.key, seen));
    if (!run.ended || run.end === null) run.end = last;
    return run.end;
  };
  const visitCall = (call: SubcallNode, parentKey: string, seen: Set<string>): number | null => {
    nodes.set(call.key, call);
    parents.set(call.key, parentKey);
    let last = call.ended;
    if (call.child) {
      const end = visitRun(call.child, call.key, seen);
      if (end !== null && (last === null || end > last)) last = end;
    }
    return last;
  };
  const seen = new Set<string>();
  if (root) visitRun(root, null, seen);
  // Runs not reachable from the root (a broken parent link) still get shown under it.
  for (const run of runs.values()) {
    if (seen.has(run.id) || !root) continue;
    let top = run; // climb to the highest unshown ancestor, so each run is listed once
    const chain = new Set<string>([run.id]);
    for (;;) {
      const up = runs.get(top.parentId);
      if (!up || seen.has(up.id) || chain.has(up.id)) break;
      chain.add(up.id);
      top = up;
    }
    root.looseChildren.push(top);
    visitRun(top, root.key, seen);
  }

  return {
    header: parsed.header,
    rootId: root ? root.id : "",
    root,
    runs,
    subcalls,
    nodes,
    parents,
    t0,
    t1,
    complete: !!root && root.ended && parsed.truncatedTail === null,
    unknownTypes,
  };
}
