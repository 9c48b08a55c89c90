// One run: summary bar, tree (or search results) on the left, details on the right, timeline /
// usage / problems below.

import { useDeferredValue, useEffect, useMemo, useRef, useState } from "react";
import { cost, duration, tokens } from "../format";
import { runDuration } from "../trajectory/model";
import type { Trajectory } from "../trajectory/model";
import type { ParsedLog } from "../trajectory/parse";
import { searchTrajectory } from "../trajectory/search";
import type { SearchHit } from "../trajectory/search";
import { timelineRows, usageBreakdown } from "../trajectory/stats";
import { allParents, ancestors, defaultExpanded, flatten, label } from "../trajectory/tree";
import { Detail } from "./Detail";
import { ProblemsPanel, UsagePanel } from "./Panels";
import { Timeline } from "./Timeline";
import { Tree, kindClass, kindText } from "./Tree";
import { VirtualList } from "./VirtualList";

type Tab = "timeline" | "usage" | "problems";

interface Props {
  name: string;
  parsed: ParsedLog;
  traj: Trajectory;
}

function SearchResults({
  traj,
  hits,
  total,
  selectedKey,
  onPick,
}: {
  traj: Trajectory;
  hits: SearchHit[];
  total: number;
  selectedKey: string | null;
  onPick: (key: string) => void;
}) {
  return (
    <div className="search-results" data-testid="search-results">
      <div className="panel-bar small">
        {total === 0 ? "No matches" : `${total} matching field${total === 1 ? "" : "s"}`}
        {hits.length < total && ` (first ${hits.length} shown)`}
      </div>
      <VirtualList
        items={hits}
        rowHeight={46}
        label="Search results"
        renderRow={(hit, i, style) => {
          const node = traj.nodes.get(hit.key);
          if (!node) return null;
          return (
            <div
              key={`${hit.key}:${hit.field}:${i}`}
              style={style}
              className={`hit ${hit.key === selectedKey ? "selected" : ""}`}
              onClick={() => onPick(hit.key)}
            >
              <div className="hit-head">
                <span className={`kind ${kindClass(node)}`}>{kindText(node)}</span>
                <span className="title">{label(node).title}</span>
                <span className="muted small">
                  {hit.field}
                  {hit.count > 1 ? ` · ${hit.count}×` : ""}
                </span>
              </div>
              <div className="hit-snippet mono small">
                {hit.before}
                <mark>{hit.match}</mark>
                {hit.after}
              </div>
            </div>
          );
        }}
      />
    </div>
  );
}

export function RunView({ name, parsed, traj }: Props) {
  const root = traj.root;
  const [expanded, setExpanded] = useState<Set<string>>(() => defaultExpanded(traj));
  const [selectedKey, setSelectedKey] = useState<string | null>(root?.key ?? null);
  const [query, setQuery] = useState("");
  const deferredQuery = useDeferredValue(query);
  const hasProblems = parsed.errorCount > 0 || parsed.truncatedTail !== null;
  const [tab, setTab] = useState<Tab>("timeline");
  const searchRef = useRef<HTMLInputElement>(null);

  const rows = useMemo(() => flatten(root, expanded), [root, expanded]);
  const tlRows = useMemo(() => timelineRows(traj), [traj]);
  const usage = useMemo(() => usageBreakdown(traj), [traj]);
  const search = useMemo(
    () => (deferredQuery.trim().length >= 2 ? searchTrajectory(traj, deferredQuery) : null),
    [traj, deferredQuery],
  );

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const target = e.target as HTMLElement | null;
      if (e.key === "/" && target?.tagName !== "INPUT" && target?.tagName !== "TEXTAREA") {
        e.preventDefault();
        searchRef.current?.focus();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  /** Select a node and open the tree down to it. */
  const select = (key: string) => {
    setSelectedKey(key);
    const path = ancestors(traj, key);
    if (path.some((k) => !expanded.has(k))) {
      setExpanded((prev) => new Set([...prev, ...path]));
    }
  };
  const toggle = (key: string, open?: boolean) => {
    setExpanded((prev) => {
      const next = new Set(prev);
      const want = open ?? !next.has(key);
      if (want) next.add(key);
      else next.delete(key);
      return next;
    });
  };

  const selected = selectedKey ? (traj.nodes.get(selectedKey) ?? null) : null;
  const totals = root?.totals;
  const models = root ? Object.keys(root.modelSummaries) : [];

  return (
    <div className="runview">
      <div className="run-head">
        <div className="run-q">
          <div className="q" title={root?.rootPrompt}>
            {root?.rootPrompt || name}
          </div>
          <div className="a" data-testid="run-answer">
            {root?.answer !== null && root?.answer !== undefined ? (
              <>
                <span className="muted">→ </span>
                {root.answer}
              </>
            ) : (
              <span className="muted">no answer recorded</span>
            )}
          </div>
        </div>
        <div className="run-stats">
          <span className={`chip ${root?.stopReason === "final_answer" ? "stop-ok" : "stop-bad"}`}>
            {root?.stopReason ?? (traj.complete ? "—" : "incomplete")}
          </span>
          <span title="wall time">{duration(root ? runDuration(root) : null)}</span>
          <span title="tokens in / out">
            {tokens(totals?.input ?? usage.total.input)} in · {tokens(totals?.output ?? usage.total.output)} out
          </span>
          <span title="cost">{cost(totals ? totals.cost : usage.total.cost, totals ? (totals.unpriced ?? 0) : usage.total.unpriced)}</span>
          <span className="muted" title="models">
            {(models.length ? models : usage.byModel.map((r) => r.key)).join(", ")}
          </span>
          <span className="muted">
            {traj.runs.size} run{traj.runs.size === 1 ? "" : "s"} · {traj.subcalls.length} sub-calls
          </span>
        </div>
      </div>
      {parsed.header?.source === "reference" && (
        <div className="banner" data-testid="reference-banner">
          This log was written by the reference implementation (rlms) and converted for viewing:
          it records no usage of the root model's own turns and no tool calls; sub-calls and child
          runs are shown as far as it holds them.
        </div>
      )}
      {hasProblems && (
        <div className="banner warn" data-testid="problems-banner">
          {parsed.errorCount > 0 && (
            <span>
              {parsed.errorCount} line{parsed.errorCount === 1 ? "" : "s"} did not parse (line
              {parsed.errorCount === 1 ? "" : "s"} {parsed.errors.slice(0, 5).map((e) => e.line).join(", ")}
              {parsed.errorCount > 5 ? ", …" : ""}).{" "}
            </span>
          )}
          {parsed.truncatedTail && (
            <span>The last line ({parsed.truncatedTail.line}) was cut off mid-write. </span>
          )}
          {!traj.complete && <span>The run did not finish in this log. </span>}
          <button type="button" className="link" onClick={() => setTab("problems")}>
            Details
          </button>
        </div>
      )}
      <div className="run-body">
        <div className="left">
          <div className="panel-bar">
            <input
              ref={searchRef}
              type="search"
              placeholder="Search this run…  ( / )"
              value={query}
              onChange={(e) => setQuery(e.target.value)}
              onKeyDown={(e) => e.key === "Escape" && setQuery("")}
              aria-label="Search this run"
              data-testid="search"
            />
            {!search && (
              <>
                <button type="button" onClick={() => setExpanded(allParents(traj))} title="Expand all">
                  Expand
                </button>
                <button
                  type="button"
                  onClick={() => setExpanded(new Set(root ? [root.key] : []))}
                  title="Collapse all"
                >
                  Collapse
                </button>
              </>
            )}
          </div>
          {search ? (
            <SearchResults
              traj={traj}
              hits={search.hits}
              total={search.total}
              selectedKey={selectedKey}
              onPick={select}
            />
          ) : (
            <Tree rows={rows} selectedKey={selectedKey} onSelect={select} onToggle={toggle} />
          )}
        </div>
        <div className="right">
          <Detail traj={traj} node={selected} query={search ? deferredQuery : ""} onSelect={select} />
        </div>
      </div>
      <div className="bottom">
        <div className="tabs" role="tablist">
          {(["timeline", "usage", "problems"] as Tab[]).map((t) => (
            <button
              key={t}
              type="button"
              role="tab"
              aria-selected={tab === t}
              className={tab === t ? "active" : ""}
              onClick={() => setTab(t)}
            >
              {t === "timeline" ? "Timeline" : t === "usage" ? "Usage & cost" : "Problems"}
              {t === "problems" && hasProblems && <span className="dot" />}
            </button>
          ))}
        </div>
        <div className="tab-body">
          {tab === "timeline" && (
            <Timeline traj={traj} rows={tlRows} selectedKey={selectedKey} onSelect={select} />
          )}
          {tab === "usage" && <UsagePanel traj={traj} usage={usage} />}
          {tab === "problems" && <ProblemsPanel parsed={parsed} traj={traj} />}
        </div>
      </div>
    </div>
  );
}
