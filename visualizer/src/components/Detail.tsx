// The right-hand panel: everything recorded about the selected run, turn, code block or call.

import { useState } from "react";
import type { ReactNode } from "react";
import { cost, duration, tokens } from "../format";
import { runDuration } from "../trajectory/model";
import type {
  BlockNode,
  IterationNode,
  RunNode,
  SubcallNode,
  Trajectory,
  TreeNode,
  Usage,
} from "../trajectory/model";
import { oneLine } from "../trajectory/tree";
import { CodeBlock, TextBlock } from "./Text";
import { kindClass, kindText } from "./Tree";

interface Props {
  traj: Trajectory;
  node: TreeNode | null;
  query: string;
  onSelect: (key: string) => void;
}

function Section({ title, children, extra }: { title: string; children: ReactNode; extra?: ReactNode }) {
  return (
    <section className="section">
      <h3>
        {title}
        {extra}
      </h3>
      {children}
    </section>
  );
}

function Facts({ items }: { items: [string, ReactNode][] }) {
  return (
    <dl className="facts">
      {items.map(([k, v]) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{v}</dd>
        </div>
      ))}
    </dl>
  );
}

function usageText(u: Usage | null): string {
  if (!u) return "—";
  const cached = u.cached ? ` (${tokens(u.cached)} cached)` : "";
  return `${tokens(u.input)} in${cached} · ${tokens(u.output)} out · ${cost(u.cost)}`;
}

function CallList({ calls, onSelect }: { calls: SubcallNode[]; onSelect: (k: string) => void }) {
  return (
    <ul className="calls">
      {calls.map((c) => (
        <li key={c.key}>
          <button type="button" className="link" onClick={() => onSelect(c.key)}>
            <span className={`kind ${kindClass(c)}`}>{kindText(c)}</span>
            <span className="mono">{oneLine(c.prompt, 70)}</span>
            <span className="muted">→ {c.error ? <span className="bad">{c.error}</span> : oneLine(c.response, 40)}</span>
            <span className="num">{duration(c.duration)}</span>
          </button>
        </li>
      ))}
    </ul>
  );
}

function RunDetail({ run, traj, query, onSelect }: { run: RunNode; traj: Trajectory; query: string; onSelect: (k: string) => void }) {
  const [showContext, setShowContext] = useState(false);
  const parentCall = traj.subcalls.find((c) => c.child === run) ?? null;
  const settings = Object.entries(run.settings);
  return (
    <>
      <Section title="Task">
        <TextBlock text={run.rootPrompt} query={query} empty="(no root prompt)" />
      </Section>
      <Section title="Answer">
        {run.answer !== null ? (
          <TextBlock text={run.answer} query={query} className="answer" />
        ) : (
          <div className="muted">{run.ended ? "(none)" : "The run did not finish in this log."}</div>
        )}
        {run.error && <TextBlock text={run.error} query={query} className="error" />}
      </Section>
      <Section title="Run">
        <Facts
          items={[
            ["run id", <span className="mono">{run.id}</span>],
            ["depth", run.depth],
            ["model", run.model || "—"],
            ["environment", run.environment || "—"],
            ["stop reason", run.stopReason ?? (run.ended ? "—" : "incomplete")],
            ["iterations", run.iterationCount ?? run.iterations.length],
            ["time", duration(runDuration(run)) + (run.executionTime === null && run.end !== null ? " so far" : "")],
            [
              "usage (subtree)",
              run.totals
                ? `${run.totals.calls ?? "?"} calls · ${tokens(run.totals.input)} in · ${tokens(run.totals.output)} out · ${cost(run.totals.cost, run.totals.unpriced ?? 0)}`
                : "—",
            ],
            ["context", `${run.contextType || "?"}, ${run.contextLength?.toLocaleString("en-US") ?? "?"} chars`],
          ]}
        />
        {parentCall && (
          <button type="button" className="link" onClick={() => onSelect(parentCall.key)}>
            ↑ the rlm sub-call that started this run
          </button>
        )}
      </Section>
      {settings.length > 0 && (
        <Section title="Settings">
          <Facts items={settings.map(([k, v]) => [k, v === null ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v)])} />
        </Section>
      )}
      {run.hasContext && (
        <Section title="Context">
          {showContext ? (
            <TextBlock
              text={typeof run.context === "string" ? run.context : JSON.stringify(run.context, null, 2) ?? ""}
              query={query}
            />
          ) : (
            <button type="button" onClick={() => setShowContext(true)}>
              Show the context
            </button>
          )}
        </Section>
      )}
    </>
  );
}

function IterationDetail({ it, query }: { it: IterationNode; query: string }) {
  return (
    <>
      <Section title="Iteration">
        <Facts
          items={[
            ["iteration", it.number],
            ["time", duration(it.time)],
            ["usage", usageText(it.usage)],
            ["code blocks", it.blocks.length],
            ["final answer", it.finalAnswer ?? "—"],
          ]}
        />
      </Section>
      <Section title="Model reply">
        <TextBlock text={it.response} query={query} testId="reply" />
      </Section>
      <Section title={`Messages this iteration added (${it.prompt.length})`}>
        {it.prompt.map((m, i) => (
          <details key={i} className="message" open={it.prompt.length === 1}>
            <summary>
              <span className="role">{m.role}</span> {oneLine(m.content, 100)}
            </summary>
            <TextBlock text={m.content} query={query} />
          </details>
        ))}
      </Section>
    </>
  );
}

function BlockDetail({ block, query, onSelect }: { block: BlockNode; query: string; onSelect: (k: string) => void }) {
  return (
    <>
      <Section title="Code" extra={<span className="muted small"> · {duration(block.executionTime)}</span>}>
        <CodeBlock code={block.code} testId="code" />
      </Section>
      <Section title="Output">
        <TextBlock text={block.stdout} query={query} testId="stdout" empty="(no output)" />
        {block.stderr && <TextBlock text={block.stderr} query={query} className="stderr" />}
        {block.error && (
          <TextBlock
            text={(block.timedOut ? "timed out: " : "") + block.error}
            query={query}
            className="error"
            testId="block-error"
          />
        )}
      </Section>
      {block.finalAnswer !== null && (
        <Section title="Final answer">
          <TextBlock text={block.finalAnswer} query={query} className="answer" />
        </Section>
      )}
      {block.subcalls.length > 0 && (
        <Section title={`Sub-calls (${block.subcalls.length})`}>
          <CallList calls={block.subcalls} onSelect={onSelect} />
        </Section>
      )}
      {block.missingSubcalls.length > 0 && (
        <div className="muted small">
          {block.missingSubcalls.length} sub-call record(s) listed by this block are not in the log.
        </div>
      )}
      {block.locals.length > 0 && (
        <Section title="Variables">
          <Facts items={block.locals.map(([k, v]) => [k, <span className="mono">{v}</span>])} />
        </Section>
      )}
    </>
  );
}

function SubcallDetail({ call, query, onSelect }: { call: SubcallNode; query: string; onSelect: (k: string) => void }) {
  return (
    <>
      <Section title="Call">
        <Facts
          items={[
            ["kind", call.callKind],
            ["model", call.model || "—"],
            ["depth", call.depth],
            ["time", duration(call.duration)],
            ["usage", usageText(call.usage)],
            ["id", <span className="mono">{call.id}</span>],
          ]}
        />
        {call.child && (
          <button type="button" className="link" onClick={() => onSelect(call.child!.key)}>
            ↓ open the child run it started
          </button>
        )}
      </Section>
      <Section title="Prompt" extra={call.promptTruncated ? <span className="muted small"> · cut by the logger</span> : null}>
        <TextBlock text={call.prompt} query={query} testId="prompt" />
      </Section>
      <Section
        title="Response"
        extra={
          call.responseTruncated ? (
            <span className="muted small"> · cut by the logger ({call.responseChars?.toLocaleString("en-US")} chars in all)</span>
          ) : null
        }
      >
        {call.error ? (
          <TextBlock text={call.error} query={query} className="error" />
        ) : (
          <TextBlock text={call.response} query={query} testId="response" />
        )}
      </Section>
    </>
  );
}

function title(node: TreeNode): string {
  switch (node.kind) {
    case "run":
      return node.depth === 0 ? "Root run" : `Child run (depth ${node.depth})`;
    case "iteration":
      return `Iteration ${node.number}`;
    case "block":
      return `Code block ${node.index} · iteration ${node.iteration.number}`;
    case "subcall":
      return `${node.callKind} sub-call${node.model ? ` · ${node.model}` : ""}`;
  }
}

export function Detail({ traj, node, query, onSelect }: Props) {
  if (!node) return <div className="detail empty muted">Select a node in the tree or timeline.</div>;
  const owner =
    node.kind === "run" ? null : traj.runs.get(node.kind === "subcall" ? node.parentId : node.runId);
  return (
    <div className="detail" data-testid="detail">
      <h2>
        <span className={`kind ${kindClass(node)}`}>{kindText(node)}</span> {title(node)}
        {owner && (
          <button type="button" className="link small owner" onClick={() => onSelect(owner.key)}>
            in {owner.depth === 0 ? "the root run" : `“${oneLine(owner.rootPrompt, 40)}”`}
          </button>
        )}
      </h2>
      {node.kind === "run" && <RunDetail run={node} traj={traj} query={query} onSelect={onSelect} />}
      {node.kind === "iteration" && <IterationDetail it={node} query={query} />}
      {node.kind === "block" && <BlockDetail block={node} query={query} onSelect={onSelect} />}
      {node.kind === "subcall" && <SubcallDetail call={node} query={query} onSelect={onSelect} />}
    </div>
  );
}
