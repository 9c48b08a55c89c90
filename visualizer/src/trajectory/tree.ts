// Tree navigation shared by the tree view, the timeline and search: children, pre-order walks,
// flattening under an expansion set (what the virtualised list renders), and short labels.

import type { RunNode, Trajectory, TreeNode } from "./model";

export function children(node: TreeNode): TreeNode[] {
  switch (node.kind) {
    case "run":
      return [...node.iterations, ...node.looseSubcalls, ...node.looseChildren];
    case "iteration":
      return node.blocks;
    case "block":
      return node.subcalls;
    case "subcall":
      return node.child ? [node.child] : [];
  }
}

export interface Row {
  node: TreeNode;
  level: number;
  hasChildren: boolean;
  expanded: boolean;
}

/** Visit every node once, parents before children (iterative: deep trees cannot overflow). */
export function preorder(root: RunNode | null, visit: (node: TreeNode, level: number) => void): void {
  if (!root) return;
  const stack: [TreeNode, number][] = [[root, 0]];
  const seen = new Set<string>();
  while (stack.length) {
    const [node, level] = stack.pop()!;
    if (seen.has(node.key)) continue;
    seen.add(node.key);
    visit(node, level);
    const kids = children(node);
    for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], level + 1]);
  }
}

/** The rows a tree shows when the nodes in `expanded` are open. */
export function flatten(root: RunNode | null, expanded: ReadonlySet<string>): Row[] {
  const rows: Row[] = [];
  if (!root) return rows;
  const stack: [TreeNode, number][] = [[root, 0]];
  const seen = new Set<string>();
  while (stack.length) {
    const [node, level] = stack.pop()!;
    if (seen.has(node.key)) continue;
    seen.add(node.key);
    const kids = children(node);
    const open = expanded.has(node.key);
    rows.push({ node, level, hasChildren: kids.length > 0, expanded: open && kids.length > 0 });
    if (open) for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], level + 1]);
  }
  return rows;
}

/** Keys of every node that has children (for "expand all"). */
export function allParents(traj: Trajectory): Set<string> {
  const keys = new Set<string>();
  preorder(traj.root, (node) => {
    if (children(node).length) keys.add(node.key);
  });
  return keys;
}

/** The default view: everything open for small runs, the root's turns for big ones. */
export function defaultExpanded(traj: Trajectory, limit = 400): Set<string> {
  if (traj.nodes.size <= limit) return allParents(traj);
  const keys = new Set<string>();
  if (traj.root) {
    keys.add(traj.root.key);
    for (const it of traj.root.iterations) keys.add(it.key);
  }
  return keys;
}

/** The keys from the root down to `key` (to open them when jumping to a node). */
export function ancestors(traj: Trajectory, key: string): string[] {
  const out: string[] = [];
  let cur = traj.parents.get(key);
  const guard = new Set<string>();
  while (cur && !guard.has(cur)) {
    guard.add(cur);
    out.push(cur);
    cur = traj.parents.get(cur);
  }
  return out.reverse();
}

export function oneLine(text: string, max = 80): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

export interface Label {
  title: string;
  text: string;
}

export function label(node: TreeNode): Label {
  switch (node.kind) {
    case "run":
      return {
        title: node.depth === 0 ? "Root run" : `Child run · depth ${node.depth}`,
        text: oneLine(node.rootPrompt || node.id, 90),
      };
    case "iteration":
      return {
        title: `Iteration ${node.number}`,
        text:
          `${node.blocks.length} block${node.blocks.length === 1 ? "" : "s"}` +
          (node.finalAnswer !== null ? " · final answer" : ""),
      };
    case "block": {
      const first = node.code.split("\n").find((l) => l.trim()) ?? "";
      return { title: `Code block ${node.index}`, text: oneLine(first, 90) };
    }
    case "subcall":
      return {
        title: `${node.callKind}${node.model ? ` · ${node.model}` : ""}`,
        text: oneLine(node.prompt, 90),
      };
  }
}
