// Full-text search within one run: every prompt, reply, code block, output and answer.
// Case-insensitive; uses a RegExp over the original strings, so no lower-cased copy of a
// 50 MB log is kept in memory.

import type { Trajectory, TreeNode } from "./model";
import { preorder } from "./tree";

export interface SearchHit {
  key: string;
  field: string;
  before: string;
  match: string;
  after: string;
  count: number;
}

export interface SearchResult {
  hits: SearchHit[];
  /** Fields that matched in all (hits stops at the limit). */
  total: number;
}

type Field = [string, string];

export function fieldsOf(node: TreeNode): Field[] {
  switch (node.kind) {
    case "run": {
      const out: Field[] = [
        ["task", node.rootPrompt],
        ["answer", node.answer ?? ""],
        ["error", node.error ?? ""],
      ];
      if (node.hasContext && node.depth === 0) {
        const ctx = node.context;
        out.push(["context", typeof ctx === "string" ? ctx : JSON.stringify(ctx) ?? ""]);
      }
      return out;
    }
    case "iteration":
      return [
        ["reply", node.response],
        ...node.prompt.map((m, i): Field => [`message ${i + 1} (${m.role})`, m.content]),
      ];
    case "block":
      return [
        ["code", node.code],
        ["stdout", node.stdout],
        ["stderr", node.stderr],
        ["error", node.error ?? ""],
      ];
    case "subcall":
      return [
        ["prompt", node.prompt],
        ["response", node.response],
        ["error", node.error ?? ""],
        ["model", node.model],
      ];
  }
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export function searchTrajectory(traj: Trajectory, query: string, limit = 1000): SearchResult {
  const hits: SearchHit[] = [];
  let total = 0;
  const q = query.trim();
  if (!q) return { hits, total };
  const re = new RegExp(escape(q), "gi");
  preorder(traj.root, (node) => {
    for (const [field, text] of fieldsOf(node)) {
      if (!text) continue;
      re.lastIndex = 0;
      const first = re.exec(text);
      if (!first) continue;
      total += 1;
      if (hits.length >= limit) continue;
      let count = 1;
      while (count < 1000 && re.exec(text)) count += 1;
      const at = first.index;
      const end = at + first[0].length;
      hits.push({
        key: node.key,
        field,
        before: (at > 40 ? "…" : "") + text.slice(Math.max(0, at - 40), at).replace(/\s+/g, " "),
        match: first[0],
        after: text.slice(end, end + 60).replace(/\s+/g, " ") + (end + 60 < text.length ? "…" : ""),
        count,
      });
    }
  });
  return { hits, total };
}
