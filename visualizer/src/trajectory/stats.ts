// Usage per model and per depth, the timeline's rows, and how many sub-calls overlapped.
// Usage is summed over the leaves that spent tokens (root-LM turns and `llm` sub-calls): an
// `rlm` sub-call's usage is its child's whole subtree, which the child's own records already hold.

import type { SubcallNode, Trajectory, TreeNode } from "./model";
import { preorder } from "./tree";

export interface UsageRow {
  key: string;
  calls: number;
  input: number;
  output: number;
  cached: number;
  cost: number;
  /** Calls whose model has no known price (cost null): the cost column is a lower bound. */
  unpriced: number;
}

export interface UsageBreakdown {
  byModel: UsageRow[];
  byDepth: UsageRow[];
  total: UsageRow;
}

function row(key: string): UsageRow {
  return { key, calls: 0, input: 0, output: 0, cached: 0, cost: 0, unpriced: 0 };
}

function add(
  target: UsageRow,
  u: { input: number; output: number; cached: number; cost: number | null },
): void {
  target.calls += 1;
  target.input += u.input;
  target.output += u.output;
  target.cached += u.cached;
  if (u.cost === null) target.unpriced += 1;
  else target.cost += u.cost;
}

export function usageBreakdown(traj: Trajectory): UsageBreakdown {
  const models = new Map<string, UsageRow>();
  const depths = new Map<number, UsageRow>();
  const total = row("total");
  const count = (model: string, depth: number, u: Parameters<typeof add>[1]) => {
    const name = model || "(unknown)";
    if (!models.has(name)) models.set(name, row(name));
    if (!depths.has(depth)) depths.set(depth, row(`depth ${depth}`));
    add(models.get(name)!, u);
    add(depths.get(depth)!, u);
    add(total, u);
  };
  for (const run of traj.runs.values()) {
    for (const it of run.iterations) if (it.usage) count(run.model, run.depth, it.usage);
  }
  for (const call of traj.subcalls) {
    if (call.callKind === "llm" && call.usage) count(call.model, call.depth, call.usage);
  }
  const byDepth = [...depths.entries()].sort((a, b) => a[0] - b[0]).map(([, r]) => r);
  const byModel = [...models.values()].sort((a, b) => b.input + b.output - (a.input + a.output));
  return { byModel, byDepth, total };
}

export interface TimelineRow {
  node: TreeNode;
  level: number;
  start: number;
  end: number;
}

/** Runs, turns and sub-calls in tree order, each with its time span (items without one are left
 * out). */
export function timelineRows(traj: Trajectory): TimelineRow[] {
  const rows: TimelineRow[] = [];
  preorder(traj.root, (node, level) => {
    let start: number | null = null;
    let end: number | null = null;
    if (node.kind === "run" || node.kind === "iteration") {
      start = node.start;
      end = node.end;
    } else if (node.kind === "subcall") {
      start = node.started;
      end = node.ended ?? (node.started !== null && node.duration !== null ? node.started + node.duration : null);
    } else {
      return;
    }
    if (start === null) return;
    rows.push({ node, level, start, end: end !== null && end >= start ? end : start });
  });
  return rows;
}

/** The most sub-calls that were in flight at one instant. */
export function maxParallel(calls: SubcallNode[]): number {
  const events: [number, number][] = [];
  for (const c of calls) {
    if (c.started === null || c.ended === null) continue;
    events.push([c.started, 1], [c.ended, -1]);
  }
  // Ends sort before starts at the same instant: back-to-back calls did not overlap.
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let best = 0;
  for (const [, delta] of events) {
    now += delta;
    if (now > best) best = now;
  }
  return best;
}
