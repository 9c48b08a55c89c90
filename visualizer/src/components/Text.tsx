// Text display that stays fast on huge values: long strings are cut (with a button to show all),
// search matches are marked, and Python code is highlighted by highlight.js.

import hljs from "highlight.js/lib/core";
import python from "highlight.js/lib/languages/python";
import { useMemo, useState } from "react";
import type { ReactNode } from "react";

hljs.registerLanguage("python", python);

const SHOWN = 20_000;
const HIGHLIGHT_LIMIT = 200_000;

function escapeRe(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export function marked(text: string, query: string): ReactNode {
  const q = query.trim();
  if (!q) return text;
  const parts = text.split(new RegExp(`(${escapeRe(q)})`, "gi"));
  if (parts.length === 1) return text;
  return parts.map((p, i) => (i % 2 === 1 ? <mark key={i}>{p}</mark> : p));
}

function useCut(text: string): [string, boolean, () => void] {
  const [all, setAll] = useState(false);
  const cut = !all && text.length > SHOWN;
  return [cut ? text.slice(0, SHOWN) : text, cut, () => setAll(true)];
}

function More({ text, onClick }: { text: string; onClick: () => void }) {
  return (
    <button type="button" className="more" onClick={onClick}>
      Show all {text.length.toLocaleString("en-US")} characters
    </button>
  );
}

export function TextBlock({
  text,
  query = "",
  className = "",
  empty = "(empty)",
  testId,
}: {
  text: string;
  query?: string;
  className?: string;
  empty?: string;
  testId?: string;
}) {
  const [shown, cut, showAll] = useCut(text);
  if (!text) return <div className="muted small">{empty}</div>;
  return (
    <div>
      <pre className={`text ${className}`} data-testid={testId}>
        {marked(shown, query)}
        {cut && "…"}
      </pre>
      {cut && <More text={text} onClick={showAll} />}
    </div>
  );
}

export function CodeBlock({ code, testId }: { code: string; testId?: string }) {
  const [shown, cut, showAll] = useCut(code);
  const html = useMemo(() => {
    if (shown.length > HIGHLIGHT_LIMIT) return null;
    return hljs.highlight(shown, { language: "python", ignoreIllegals: true }).value;
  }, [shown]);
  const lines = shown.split("\n").length;
  const gutter = useMemo(
    () => Array.from({ length: lines }, (_, i) => String(i + 1)).join("\n"),
    [lines],
  );
  return (
    <div>
      <div className="code" data-testid={testId}>
        <pre className="gutter" aria-hidden="true">
          {gutter}
        </pre>
        {html === null ? (
          <pre className="hljs">{shown}</pre>
        ) : (
          <pre className="hljs" dangerouslySetInnerHTML={{ __html: html }} />
        )}
      </div>
      {cut && <More text={code} onClick={showAll} />}
    </div>
  );
}
