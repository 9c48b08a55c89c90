// Talking to `rlm view`: the log list (with server-side summaries) and streamed log downloads.
// The server wants the access token it printed in the URL (`?token=...`) on every API call.

import { LogParser } from "./trajectory/parse";
import type { ParsedLog } from "./trajectory/parse";
import type { LogEntry } from "./trajectory/summary";

export interface LogList {
  log_dir: string;
  logs: LogEntry[];
  message: string | null;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

function token(): string {
  return new URLSearchParams(window.location.search).get("token") ?? "";
}

async function get(path: string): Promise<Response> {
  const response = await fetch(path, {
    headers: { "X-RLM-Token": token() },
    cache: "no-store",
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = (await response.json()) as { error?: string };
      if (body.error) message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(message, response.status);
  }
  return response;
}

export async function fetchLogs(): Promise<LogList> {
  return (await (await get("api/logs")).json()) as LogList;
}

export type Progress = (loaded: number, total: number | null) => void;

/** Parse a byte stream as it arrives, so a 50 MB log shows progress and never holds two copies
 * of its text. */
export async function parseStream(
  stream: ReadableStream<Uint8Array>,
  total: number | null,
  onProgress: Progress,
): Promise<ParsedLog> {
  const parser = new LogParser();
  const decoder = new TextDecoder("utf-8");
  const reader = stream.getReader();
  let loaded = 0;
  let lastReport = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    loaded += value.byteLength;
    parser.push(decoder.decode(value, { stream: true }));
    const now = performance.now();
    if (now - lastReport > 100) {
      lastReport = now;
      onProgress(loaded, total);
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the progress bar paint
    }
  }
  parser.push(decoder.decode());
  onProgress(loaded, total);
  return parser.end();
}

export async function fetchLog(name: string, onProgress: Progress): Promise<ParsedLog> {
  const response = await get(`api/logs/${name.split("/").map(encodeURIComponent).join("/")}`);
  const length = Number(response.headers.get("Content-Length"));
  const total = Number.isFinite(length) && length > 0 ? length : null;
  if (!response.body) return parseStream(new Blob([await response.text()]).stream(), total, onProgress);
  return parseStream(response.body, total, onProgress);
}

export async function readLocalFile(file: File, onProgress: Progress): Promise<ParsedLog> {
  return parseStream(file.stream(), file.size, onProgress);
}
