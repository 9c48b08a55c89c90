// The Gantt view: one row per run, turn and sub-call (tree order), bars on a shared time axis.
// Bars that overlap horizontally ran at the same time; selecting one shades its span across
// all rows so the calls running beside it stand out. Rows are virtualised.

import { useEffect, useMemo, useRef, useState } from "react";
import { duration } from "../format";
import type { Trajectory } from "../trajectory/model";
import type { TimelineRow } from "../trajectory/stats";
import { maxParallel } from "../trajectory/stats";
import { label } from "../trajectory/tree";
import { kindClass, kindText } from "./Tree";
import { useViewport, visibleRange } from "./VirtualList";

const ROW = 22;
const LABEL = 300;
const AXIS = 24;
const TAIL = 64; // room right of the last bar for its duration label

function niceStep(span: number, target: number): number {
  const raw = span / Math.max(1, target);
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

function tickLabel(seconds: number, step: number): string {
  if (step < 0.001) return `${(seconds * 1000).toFixed(2)} ms`;
  if (step < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, "0")}`;
}

/** The span to shade for the selection: its own bar, or for a code block (not drawn: blocks
 * have no start time) the span of the sub-calls it made. */
function selectedSpan(
  traj: Trajectory,
  rows: TimelineRow[],
  key: string | null,
): { start: number; end: number } | null {
  if (!key) return null;
  const row = rows.find((r) => r.node.key === key);
  if (row) return row;
  const node = traj.nodes.get(key);
  if (node?.kind !== "block") return null;
  let start = Infinity;
  let end = -Infinity;
  for (const c of node.subcalls) {
    if (c.started !== null) start = Math.min(start, c.started);
    if (c.ended !== null) end = Math.max(end, c.ended);
  }
  return start <= end ? { start, end } : null;
}

interface Props {
  traj: Trajectory;
  rows: TimelineRow[];
  selectedKey: string | null;
  onSelect: (key: string) => void;
}

export function Timeline({ traj, rows, selectedKey, onSelect }: Props) {
  const ref = useRef<HTMLDivElement>(null);
  const { width, height } = useViewport(ref);
  const [scrollTop, setScrollTop] = useState(0);
  const [zoom, setZoom] = useState(1);

  const [t0, t1] = useMemo(() => {
    let lo = Infinity;
    let hi = -Infinity;
    for (const r of rows) {
      if (r.start < lo) lo = r.start;
      if (r.end > hi) hi = r.end;
    }
    return rows.length ? [lo, hi] : [0, 1];
  }, [rows]);
  const span = Math.max(t1 - t0, 1e-3);
  const chart = Math.max(200, (width - LABEL - 16 - TAIL) * zoom);
  const x = (t: number) => ((t - t0) / span) * chart;

  const calls = useMemo(() => traj.subcalls, [traj]);
  const parallel = useMemo(() => maxParallel(calls), [calls]);
  const step = niceStep(span, chart / 110);
  const ticks: number[] = [];
  for (let s = 0; s <= span + 1e-9 && ticks.length < 500; s += step) ticks.push(s);

  const selected = useMemo(() => selectedSpan(traj, rows, selectedKey), [traj, rows, selectedKey]);

  // Bring the selected bar into view (it may have been picked in the tree or search).
  useEffect(() => {
    const el = ref.current;
    if (!el || !selectedKey) return;
    const index = rows.findIndex((r) => r.node.key === selectedKey);
    if (index >= 0) {
      const top = AXIS + index * ROW;
      if (top - AXIS < el.scrollTop || top + ROW > el.scrollTop + el.clientHeight) {
        el.scrollTop = Math.max(0, top - el.clientHeight / 2);
      }
    }
    if (selected) {
      const left = x(selected.start);
      if (left < el.scrollLeft || left > el.scrollLeft + el.clientWidth - LABEL - 40) {
        el.scrollLeft = Math.max(0, left - 40);
      }
    }
    // (not on zoom or width: resizing should not make the view jump)
  }, [selectedKey, rows]);
  const [first, last] = visibleRange(Math.max(0, scrollTop - AXIS), height || 400, ROW, rows.length);

  const body = [];
  for (let i = first; i < last; i++) {
    const row = rows[i];
    const l = label(row.node);
    const left = x(row.start);
    const w = Math.max(2, x(row.end) - left);
    const isSel = row.node.key === selectedKey;
    const err =
      (row.node.kind === "subcall" && row.node.error) ||
      (row.node.kind === "run" && row.node.stopReason && row.node.stopReason !== "final_answer");
    const tip = `${kindText(row.node)} · ${l.title} · ${duration(row.end - row.start)} · starts at +${duration(row.start - t0)}\n${l.text}`;
    body.push(
      <div
        key={row.node.key}
        className={`tl-row ${isSel ? "selected" : ""}`}
        style={{ top: AXIS + i * ROW, width: LABEL + chart + 16 + TAIL }}
        onClick={() => onSelect(row.node.key)}
        data-key={row.node.key}
      >
        <div className="tl-label" style={{ width: LABEL, paddingLeft: 6 + row.level * 12 }}>
          <span className={`kind ${kindClass(row.node)}`}>{kindText(row.node)}</span>
          <span className="tl-text">{row.node.kind === "iteration" ? l.title : l.text || l.title}</span>
        </div>
        <div
          className={`tl-bar ${kindClass(row.node)} ${err ? "bad" : ""}`}
          style={{ left: LABEL + 8 + left, width: w }}
          title={tip}
        />
        <span className="tl-dur" style={{ left: LABEL + 8 + left + w + 4 }}>
          {duration(row.end - row.start)}
        </span>
      </div>,
    );
  }

  return (
    <div className="timeline-wrap">
      <div className="panel-bar">
        <span>
          {rows.length} bars · {calls.length} sub-call{calls.length === 1 ? "" : "s"} ·{" "}
          <strong data-testid="max-parallel">at most {parallel} in parallel</strong> · total{" "}
          {duration(span)}
        </span>
        <span className="spacer" />
        <button type="button" onClick={() => setZoom((z) => Math.max(1, z / 2))} disabled={zoom <= 1}>
          −
        </button>
        <span className="muted small">{zoom}×</span>
        <button type="button" onClick={() => setZoom((z) => Math.min(1024, z * 2))}>
          +
        </button>
        <button type="button" onClick={() => setZoom(1)} disabled={zoom === 1}>
          Fit
        </button>
      </div>
      <div
        ref={ref}
        className="timeline"
        data-testid="timeline"
        onScroll={(e) => setScrollTop(e.currentTarget.scrollTop)}
      >
        <div style={{ position: "relative", height: AXIS + rows.length * ROW, width: LABEL + chart + 16 + TAIL }}>
          <div className="tl-axis" style={{ width: LABEL + chart + 16 + TAIL }}>
            <div className="tl-label tl-corner" style={{ width: LABEL }}>
              time since start
            </div>
            {ticks.map((s) => (
              <span
                key={s}
                className={`tl-tick ${s === 0 ? "first" : ""}`}
                style={{ left: LABEL + 8 + x(t0 + s) }}
              >
                {tickLabel(s, step)}
              </span>
            ))}
          </div>
          {ticks.map((s) => (
            <div key={s} className="tl-grid" style={{ left: LABEL + 8 + x(t0 + s) }} />
          ))}
          {selected && (
            <div
              className="tl-span"
              style={{
                left: LABEL + 8 + x(selected.start),
                width: Math.max(2, x(selected.end) - x(selected.start)),
              }}
            />
          )}
          {body}
        </div>
      </div>
    </div>
  );
}
