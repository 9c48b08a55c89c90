// Reads trajectory JSON lines (docs/trajectory-format.md) without trusting them: every line
// that parses becomes a record, every line that does not is listed by number, a last line cut
// off mid-write (a killed run) is tolerated, and a header from a newer format is named.

export const SCHEMA = "rlm-trajectory";
export const KNOWN_VERSION = 1;
/** Per-file cap on listed bad lines: a binary file must not make a million-entry list. */
export const MAX_LISTED_ERRORS = 200;

export type JsonObject = { [key: string]: unknown };

export interface RawRecord {
  line: number;
  type: string;
  data: JsonObject;
}

export interface LineError {
  line: number;
  message: string;
  /** The start of the offending line, for the reader to recognise it. */
  text: string;
}

export type Problem =
  | { kind: "empty"; message: string }
  | { kind: "schema"; message: string }
  | { kind: "version"; message: string; version: unknown }
  | { kind: "no-run"; message: string };

export interface ParsedLog {
  records: RawRecord[];
  errors: LineError[];
  /** How many lines did not parse (errors holds at most MAX_LISTED_ERRORS of them). */
  errorCount: number;
  /** The last line had no newline and did not parse: the writer was killed mid-line. */
  truncatedTail: { line: number; chars: number } | null;
  header: JsonObject | null;
  version: number | null;
  /** Set when the file cannot be shown as a trajectory (the records are still kept). */
  problem: Problem | null;
  lines: number;
}

function preview(line: string): string {
  const text = line.length > 120 ? `${line.slice(0, 120)}…` : line;
  return text.replace(/[\u0000-\u001f]/g, " ");
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Incremental parser: `push` text chunks as they arrive (a streamed download), then `end`. */
export class LogParser {
  private pending = "";
  private lineNo = 0;
  private records: RawRecord[] = [];
  private errors: LineError[] = [];
  private errorCount = 0;
  private started = false;

  push(chunk: string): void {
    if (!chunk) return;
    if (!this.started) {
      this.started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    let text = this.pending + chunk;
    let start = 0;
    for (;;) {
      const nl = text.indexOf("\n", start);
      if (nl < 0) break;
      this.line(text.slice(start, nl));
      start = nl + 1;
    }
    this.pending = text.slice(start);
    text = "";
  }

  end(): ParsedLog {
    let truncatedTail: ParsedLog["truncatedTail"] = null;
    const tail = this.pending;
    this.pending = "";
    if (tail.trim()) {
      this.lineNo += 1;
      const value = tryParse(tail);
      if (value.ok && isObject(value.value) && typeof value.value.type === "string") {
        this.records.push({ line: this.lineNo, type: value.value.type, data: value.value });
      } else {
        truncatedTail = { line: this.lineNo, chars: tail.length };
      }
    }
    return finish(this.records, this.errors, this.errorCount, truncatedTail, this.lineNo);
  }

  private line(raw: string): void {
    this.lineNo += 1;
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!line.trim()) return;
    const value = tryParse(line);
    if (!value.ok) {
      this.error(line, `not valid JSON (${value.message})`);
    } else if (!isObject(value.value)) {
      this.error(line, "not a JSON object");
    } else if (typeof value.value.type !== "string") {
      this.error(line, "a record needs a string 'type'");
    } else {
      this.records.push({ line: this.lineNo, type: value.value.type, data: value.value });
    }
  }

  private error(line: string, message: string): void {
    this.errorCount += 1;
    if (this.errors.length < MAX_LISTED_ERRORS) {
      this.errors.push({ line: this.lineNo, message, text: preview(line) });
    }
  }
}

function tryParse(text: string): { ok: true; value: unknown } | { ok: false; message: string } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return { ok: false, message: message.replace(/^JSON\.parse: /, "") };
  }
}

function finish(
  records: RawRecord[],
  errors: LineError[],
  errorCount: number,
  truncatedTail: ParsedLog["truncatedTail"],
  lines: number,
): ParsedLog {
  const first = records[0];
  const header = first && first.type === "header" ? first.data : null;
  let version: number | null = null;
  let problem: Problem | null = null;
  if (header) {
    const v = header.version;
    version = typeof v === "number" ? v : null;
    if (header.schema !== SCHEMA) {
      problem = {
        kind: "schema",
        message: `not an rlm trajectory: the header's schema is ${JSON.stringify(header.schema ?? null)}, expected "${SCHEMA}"`,
      };
    } else if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      problem = {
        kind: "version",
        version: v,
        message: `the header has no valid format version (${JSON.stringify(v ?? null)})`,
      };
    } else if (v > KNOWN_VERSION) {
      problem = {
        kind: "version",
        version: v,
        message: `trajectory format version ${v} is newer than this viewer understands (version ${KNOWN_VERSION}); upgrade rlm`,
      };
    }
  } else if (records.length === 0) {
    problem = {
      kind: "empty",
      message:
        errorCount > 0 ? "no line of this file is a trajectory record" : "the file holds no records",
    };
  } else if (records[0].type === "metadata") {
    problem = {
      kind: "no-run",
      message:
        "a log written by the reference implementation (rlms): open it through `rlm view LOG_DIR` or `rlm replay`, which convert it",
    };
  } else if (!records.some((r) => r.type === "run_start")) {
    problem = { kind: "no-run", message: "no header and no run_start record: not a trajectory" };
  }
  return { records, errors, errorCount, truncatedTail, header, version, problem, lines };
}

/** Parse a whole file's text at once. */
export function parseLog(text: string): ParsedLog {
  const parser = new LogParser();
  parser.push(text);
  return parser.end();
}
