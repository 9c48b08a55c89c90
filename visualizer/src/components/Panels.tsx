// The bottom panels next to the timeline: usage and cost tables, and what did not parse.

import { cost, tokens } from "../format";
import type { Trajectory } from "../trajectory/model";
import type { ParsedLog } from "../trajectory/parse";
import type { UsageBreakdown, UsageRow } from "../trajectory/stats";

function UsageTable({ title, rows, total }: { title: string; rows: UsageRow[]; total: UsageRow }) {
  return (
    <table className="usage">
      <thead>
        <tr>
          <th>{title}</th>
          <th>calls</th>
          <th>input</th>
          <th>cached</th>
          <th>output</th>
          <th>cost</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr key={r.key}>
            <td className="mono">{r.key}</td>
            <td>{r.calls}</td>
            <td>{tokens(r.input)}</td>
            <td>{tokens(r.cached)}</td>
            <td>{tokens(r.output)}</td>
            <td title={r.unpriced ? `${r.unpriced} call(s) without a known price` : undefined}>
              {cost(r.cost, r.unpriced)}
            </td>
          </tr>
        ))}
        <tr className="total">
          <td>total</td>
          <td>{total.calls}</td>
          <td>{tokens(total.input)}</td>
          <td>{tokens(total.cached)}</td>
          <td>{tokens(total.output)}</td>
          <td>{cost(total.cost, total.unpriced)}</td>
        </tr>
      </tbody>
    </table>
  );
}

export function UsagePanel({ traj, usage }: { traj: Trajectory; usage: UsageBreakdown }) {
  const recorded = traj.root?.totals;
  const differs =
    recorded &&
    (recorded.calls !== usage.total.calls ||
      recorded.input !== usage.total.input ||
      recorded.output !== usage.total.output);
  return (
    <div className="usage-panel" data-testid="usage">
      <UsageTable title="model" rows={usage.byModel} total={usage.total} />
      <UsageTable title="depth" rows={usage.byDepth} total={usage.total} />
      <p className="muted small">
        Counted over root-model turns and <code>llm</code> sub-calls (an <code>rlm</code> sub-call's
        usage is its child run's, already counted).{" "}
        {usage.total.unpriced > 0 && "“≥” and “—”: some calls used a model without a known price. "}
        {differs &&
          `The run recorded ${recorded.calls ?? "?"} calls, ${tokens(recorded.input)} in, ${tokens(recorded.output)} out: this log is missing records.`}
      </p>
    </div>
  );
}

export function ProblemsPanel({ parsed, traj }: { parsed: ParsedLog; traj: Trajectory }) {
  const unknown = Object.entries(traj.unknownTypes);
  return (
    <div className="problems" data-testid="problems">
      {parsed.errorCount === 0 && !parsed.truncatedTail && unknown.length === 0 && (
        <p className="muted">Every line of this log parsed.</p>
      )}
      {parsed.errorCount > 0 && (
        <>
          <p>
            <strong>
              {parsed.errorCount} line{parsed.errorCount === 1 ? "" : "s"} did not parse
            </strong>{" "}
            and {parsed.errorCount === 1 ? "is" : "are"} left out
            {parsed.errors.length < parsed.errorCount && ` (the first ${parsed.errors.length} are listed)`}:
          </p>
          <table className="bad-lines">
            <tbody>
              {parsed.errors.map((e) => (
                <tr key={e.line}>
                  <td className="num">line {e.line}</td>
                  <td>{e.message}</td>
                  <td className="mono muted">{e.text}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {parsed.truncatedTail && (
        <p>
          The last line ({parsed.truncatedTail.line}, {parsed.truncatedTail.chars} characters) was cut
          off mid-write: the run was killed or is still being written. It is left out.
        </p>
      )}
      {unknown.length > 0 && (
        <p className="muted">
          Record types this viewer does not know (ignored):{" "}
          {unknown.map(([t, n]) => `${t} ×${n}`).join(", ")}.
        </p>
      )}
    </div>
  );
}
