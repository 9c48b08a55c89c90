// One line of the run list. `rlm view` computes it server-side (GET /api/logs, so the list does
// not download every log); a file opened from disk gets the same shape from its parsed records.

import type { Trajectory } from "./model";
import type { ParsedLog } from "./parse";

export interface LogSummary {
  root_run_id: string;
  created: string | null;
  question: string | null;
  answer: string | null;
  models: string[];
  duration: number | null;
  input_tokens: number | null;
  output_tokens: number | null;
  calls: number | null;
  cost: number | null;
  /** Calls without a price: `cost` omits them (a lower bound). */
  unpriced_calls: number | null;
  stop_reason: string | null;
  complete: boolean;
  runs: number;
  problem: string | null;
  /** "reference" when the file was written by the reference implementation (rlms). */
  source?: string | null;
}

export interface LogEntry {
  name: string;
  size: number;
  mtime: number;
  summary: LogSummary;
  /** Opened from disk in this browser (not served by `rlm view`). */
  local?: boolean;
}

export function cut(text: string | null, max = 300): string | null {
  if (text === null) return null;
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function summarize(parsed: ParsedLog, traj: Trajectory | null): LogSummary {
  const root = traj?.root ?? null;
  const models = new Set<string>();
  if (root) for (const m of Object.keys(root.modelSummaries)) models.add(m);
  if (traj && models.size === 0) {
    for (const run of traj.runs.values()) if (run.model) models.add(run.model);
    for (const c of traj.subcalls) if (c.model && c.callKind === "llm") models.add(c.model);
  }
  const header = parsed.header;
  return {
    root_run_id: root?.id ?? "",
    created: header && typeof header.created === "string" ? header.created : null,
    question: cut(root?.rootPrompt ?? null),
    answer: cut(root?.answer ?? null),
    models: [...models],
    duration: root?.executionTime ?? null,
    input_tokens: root?.totals?.input ?? null,
    output_tokens: root?.totals?.output ?? null,
    calls: root?.totals?.calls ?? null,
    cost: root?.totals?.cost ?? null,
    unpriced_calls: root?.totals?.unpriced ?? null,
    stop_reason: root?.stopReason ?? null,
    complete: traj?.complete ?? false,
    runs: traj?.runs.size ?? 0,
    problem: parsed.problem?.message ?? null,
    source: header && typeof header.source === "string" ? header.source : null,
  };
}
