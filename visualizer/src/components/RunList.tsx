// The run list: one row per log file (one top-level completion each), newest first.

import { useMemo, useState } from "react";
import { bytes, cost, duration, tokens, when } from "../format";
import type { LogEntry } from "../trajectory/summary";
import { VirtualList } from "./VirtualList";

const ROW = 56;

function stopChip(e: LogEntry) {
  const s = e.summary;
  if (s.problem) return <span className="chip stop-bad">unreadable</span>;
  if (!s.complete) return <span className="chip stop-bad">{s.stop_reason ?? "incomplete"}</span>;
  return (
    <span className={`chip ${s.stop_reason === "final_answer" ? "stop-ok" : "stop-bad"}`}>
      {s.stop_reason ?? "—"}
    </span>
  );
}

interface Props {
  logDir: string;
  entries: LogEntry[];
  message: string | null;
  onOpen: (entry: LogEntry) => void;
}

export function RunList({ logDir, entries, message, onOpen }: Props) {
  const [filter, setFilter] = useState("");
  const shown = useMemo(() => {
    const q = filter.trim().toLowerCase();
    const sorted = [...entries].sort((a, b) => b.mtime - a.mtime);
    if (!q) return sorted;
    return sorted.filter((e) =>
      [e.name, e.summary.question, e.summary.answer, e.summary.models.join(" "), e.summary.stop_reason]
        .join("\n")
        .toLowerCase()
        .includes(q),
    );
  }, [entries, filter]);

  return (
    <div className="runlist-page">
      <div className="page-head">
        <h1>Runs</h1>
        <span className="muted mono small" title={logDir}>
          {logDir}
        </span>
        <span className="spacer" />
        {entries.length > 0 && (
          <input
            type="search"
            placeholder="Filter runs…"
            value={filter}
            onChange={(e) => setFilter(e.target.value)}
            aria-label="Filter runs"
          />
        )}
      </div>
      {message && entries.length === 0 && (
        <div className="empty-state" data-testid="empty">
          <p>{message}</p>
          <p className="muted small">
            Record runs with <code>RLM(..., logger=RLMLogger(log_dir="logs"))</code> or{" "}
            <code>rlm run --log-dir logs</code>, then open them with <code>rlm view logs</code> — or open a{" "}
            <code>.jsonl</code> file from disk with the button above.
          </p>
        </div>
      )}
      {entries.length > 0 && (
        <div className="runlist" data-testid="runlist">
          <div className="rl-row rl-head" role="row">
            <span>Started</span>
            <span>Question → answer</span>
            <span>Models</span>
            <span className="r">Time</span>
            <span className="r">Tokens in / out</span>
            <span className="r">Cost</span>
            <span>Stop</span>
          </div>
          <VirtualList
            items={shown}
            rowHeight={ROW}
            className="rl-body"
            label="Runs"
            renderRow={(e, _i, style) => {
              const s = e.summary;
              return (
                <div
                  key={e.name}
                  style={style}
                  className="rl-row"
                  role="row"
                  data-name={e.name}
                  tabIndex={0}
                  onClick={() => onOpen(e)}
                  onKeyDown={(ev) => ev.key === "Enter" && onOpen(e)}
                >
                  <span className="small cell">
                    {s.created ? s.created.replace("T", " ").slice(0, 19) : when(e.mtime)}
                    <span className="muted mono file" title={e.name}>
                      {e.name}
                    </span>
                  </span>
                  <span className="qa">
                    <span className="q">{s.question || e.name}</span>
                    {s.problem ? (
                      <span className="a bad">{s.problem}</span>
                    ) : (
                      <span className="a">{s.answer ?? <em className="muted">no answer recorded</em>}</span>
                    )}
                  </span>
                  <span className="small cell">
                    <span className="models">{s.models.join(", ") || "—"}</span>
                    <span className="muted">
                      {s.source === "reference" && (
                        <span className="chip" data-testid="reference-chip" title="written by the reference implementation (rlms)">
                          reference
                        </span>
                      )}{" "}
                      {s.runs} run{s.runs === 1 ? "" : "s"} · {e.local ? "from disk" : bytes(e.size)}
                    </span>
                  </span>
                  <span className="r num">{duration(s.duration)}</span>
                  <span className="r num">
                    {tokens(s.input_tokens)} / {tokens(s.output_tokens)}
                  </span>
                  <span className="r num">{cost(s.cost, s.unpriced_calls ?? 0)}</span>
                  <span>{stopChip(e)}</span>
                </div>
              );
            }}
          />
        </div>
      )}
    </div>
  );
}
