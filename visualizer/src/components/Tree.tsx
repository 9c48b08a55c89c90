// The recursion tree: root run → iterations → code blocks → sub-calls → child runs, as a
// virtualised list of rows. Arrow keys move and open/close, Enter selects.

import type { KeyboardEvent } from "react";
import { duration, tokens } from "../format";
import { runDuration } from "../trajectory/model";
import type { TreeNode } from "../trajectory/model";
import { label } from "../trajectory/tree";
import type { Row } from "../trajectory/tree";
import { VirtualList } from "./VirtualList";

export const ROW_HEIGHT = 26;

export function kindClass(node: TreeNode): string {
  return node.kind === "subcall" ? `k-${node.callKind}` : `k-${node.kind}`;
}

export function kindText(node: TreeNode): string {
  switch (node.kind) {
    case "run":
      return node.depth === 0 ? "root" : "rlm run";
    case "iteration":
      return "iter";
    case "block":
      return "code";
    case "subcall":
      return node.callKind;
  }
}

function Meta({ node }: { node: TreeNode }) {
  switch (node.kind) {
    case "run":
      return (
        <>
          {node.stopReason ? (
            <span className={`chip stop-${node.stopReason === "final_answer" ? "ok" : "bad"}`}>
              {node.stopReason}
            </span>
          ) : (
            <span className="chip stop-bad">{node.ended ? "ended" : "incomplete"}</span>
          )}
          <span className="num">{duration(runDuration(node))}</span>
        </>
      );
    case "iteration":
      return (
        <>
          {node.blocks.some((b) => b.error) && <span className="chip err">error</span>}
          {node.usage && (
            <span className="num">
              {tokens(node.usage.input)}→{tokens(node.usage.output)}
            </span>
          )}
          <span className="num">{duration(node.time)}</span>
        </>
      );
    case "block":
      return (
        <>
          {node.error && <span className="chip err">{node.timedOut ? "timeout" : "error"}</span>}
          {node.finalAnswer !== null && <span className="chip stop-ok">final</span>}
          {node.subcalls.length > 0 && (
            <span className="num">
              {node.subcalls.length} call{node.subcalls.length === 1 ? "" : "s"}
            </span>
          )}
          <span className="num">{duration(node.executionTime)}</span>
        </>
      );
    case "subcall":
      return (
        <>
          {node.error && <span className="chip err">error</span>}
          <span className="num">{duration(node.duration)}</span>
        </>
      );
  }
}

interface Props {
  rows: Row[];
  selectedKey: string | null;
  onSelect: (key: string) => void;
  onToggle: (key: string, open?: boolean) => void;
}

export function Tree({ rows, selectedKey, onSelect, onToggle }: Props) {
  const selectedIndex = rows.findIndex((r) => r.node.key === selectedKey);

  const onKeyDown = (e: KeyboardEvent<HTMLDivElement>) => {
    const row = rows[selectedIndex];
    const move = (i: number) => {
      const target = rows[Math.max(0, Math.min(rows.length - 1, i))];
      if (target) onSelect(target.node.key);
    };
    if (e.key === "ArrowDown") move(selectedIndex + 1);
    else if (e.key === "ArrowUp") move(selectedIndex - 1);
    else if (e.key === "Home") move(0);
    else if (e.key === "End") move(rows.length - 1);
    else if (e.key === "ArrowRight" && row?.hasChildren && !row.expanded) onToggle(row.node.key, true);
    else if (e.key === "ArrowLeft" && row?.expanded) onToggle(row.node.key, false);
    else return;
    e.preventDefault();
  };

  return (
    <VirtualList
      items={rows}
      rowHeight={ROW_HEIGHT}
      className="tree"
      label="Recursion tree"
      testId="tree"
      scrollToIndex={selectedIndex}
      onKeyDown={onKeyDown}
      renderRow={(row, _i, style) => {
        const { node } = row;
        const l = label(node);
        const selected = node.key === selectedKey;
        return (
          <div
            key={node.key}
            style={style}
            className={`tree-row ${selected ? "selected" : ""}`}
            role="treeitem"
            aria-selected={selected}
            aria-expanded={row.hasChildren ? row.expanded : undefined}
            aria-level={row.level + 1}
            data-key={node.key}
            onClick={() => onSelect(node.key)}
          >
            <span className="indent" style={{ width: row.level * 16 }} />
            <button
              type="button"
              className="caret"
              tabIndex={-1}
              aria-label={row.expanded ? "collapse" : "expand"}
              style={{ visibility: row.hasChildren ? "visible" : "hidden" }}
              onClick={(e) => {
                e.stopPropagation();
                onToggle(node.key);
              }}
            >
              {row.expanded ? "▾" : "▸"}
            </button>
            <span className={`kind ${kindClass(node)}`}>{kindText(node)}</span>
            <span className="title">{l.title}</span>
            <span className="text">{l.text}</span>
            <span className="meta">
              <Meta node={node} />
            </span>
          </div>
        );
      }}
    />
  );
}
