// The app shell: hash routes (#/ = run list, #/log/NAME = a served log, #/local/NAME = a file
// opened from disk), loading with progress, and the messages for logs that cannot be shown.

import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, fetchLog, fetchLogs, readLocalFile } from "./api";
import type { LogList } from "./api";
import { RunList } from "./components/RunList";
import { RunView } from "./components/RunView";
import { bytes } from "./format";
import { buildTrajectory } from "./trajectory/model";
import type { Trajectory } from "./trajectory/model";
import type { ParsedLog } from "./trajectory/parse";
import { summarize } from "./trajectory/summary";
import type { LogEntry } from "./trajectory/summary";

type Route = { page: "list" } | { page: "log"; name: string; local: boolean };

function parseRoute(hash: string): Route {
  const m = /^#\/(log|local)\/(.+)$/.exec(hash);
  if (!m) return { page: "list" };
  try {
    return { page: "log", name: decodeURIComponent(m[2]), local: m[1] === "local" };
  } catch {
    return { page: "list" };
  }
}

function go(route: Route): void {
  window.location.hash =
    route.page === "list" ? "#/" : `#/${route.local ? "local" : "log"}/${encodeURIComponent(route.name)}`;
}

type Opened =
  | { key: string; status: "loading"; loaded: number; total: number | null }
  | { key: string; status: "error"; message: string }
  | { key: string; status: "ready"; parsed: ParsedLog; traj: Trajectory | null; force: boolean };

function errorText(err: unknown): string {
  if (err instanceof ApiError && err.status === 403) {
    return "The server refused the request: open the exact URL `rlm view` printed (it carries an access token).";
  }
  return err instanceof Error ? err.message : String(err);
}

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export function App() {
  const route = useRoute();
  const [list, setList] = useState<LogList | null>(null);
  const [listError, setListError] = useState<string | null>(null);
  const [local, setLocal] = useState<Map<string, { entry: LogEntry; parsed: ParsedLog }>>(new Map());
  const [opened, setOpened] = useState<Opened | null>(null);
  const fileInput = useRef<HTMLInputElement>(null);

  const refresh = useCallback(() => {
    fetchLogs()
      .then((l) => {
        setList(l);
        setListError(null);
      })
      .catch((err) => setListError(errorText(err)));
  }, []);
  useEffect(refresh, [refresh]);

  const routeKey = route.page === "log" ? `${route.local ? "local" : "log"}:${route.name}` : null;
  useEffect(() => {
    if (route.page !== "log" || !routeKey) return;
    if (opened && opened.key === routeKey) return;
    let cancelled = false;
    const show = (parsed: ParsedLog) => {
      if (cancelled) return;
      const traj = parsed.problem ? null : buildTrajectory(parsed);
      setOpened({ key: routeKey, status: "ready", parsed, traj, force: false });
    };
    if (route.local) {
      const item = local.get(route.name);
      if (item) show(item.parsed);
      else setOpened({ key: routeKey, status: "error", message: "This file was opened from disk in an earlier page; open it again." });
      return;
    }
    setOpened({ key: routeKey, status: "loading", loaded: 0, total: null });
    fetchLog(route.name, (loaded, total) => {
      if (!cancelled) setOpened({ key: routeKey, status: "loading", loaded, total });
    })
      .then(show)
      .catch((err) => !cancelled && setOpened({ key: routeKey, status: "error", message: errorText(err) }));
    return () => {
      cancelled = true;
    };
  }, [routeKey]);

  const openFiles = async (fileList: FileList | null) => {
    // Copy now: the caller clears the input, which empties the live FileList.
    const files = Array.from(fileList ?? []);
    if (files.length === 0) return;
    const next = new Map(local);
    let last = "";
    for (const file of files) {
      const parsed = await readLocalFile(file, () => undefined);
      const traj = parsed.problem ? null : buildTrajectory(parsed);
      const entry: LogEntry = {
        name: file.name,
        size: file.size,
        mtime: file.lastModified / 1000,
        summary: summarize(parsed, traj),
        local: true,
      };
      next.set(file.name, { entry, parsed });
      last = file.name;
    }
    setLocal(next);
    setOpened(null);
    if (files.length === 1) go({ page: "log", name: last, local: true });
    else go({ page: "list" });
  };

  const entries = [...(list?.logs ?? []), ...[...local.values()].map((v) => v.entry)];

  return (
    <div className="app">
      <header className="topbar">
        <a className="brand" href="#/" onClick={refresh}>
          <span className="logo">rlm</span> trajectories
        </a>
        {route.page === "log" && (
          <span className="crumb mono" title={route.name}>
            / {route.name}
          </span>
        )}
        <span className="spacer" />
        <button type="button" onClick={() => fileInput.current?.click()}>
          Open file…
        </button>
        <input
          ref={fileInput}
          type="file"
          accept=".jsonl,.json,.log,.txt"
          multiple
          hidden
          onChange={(e) => {
            void openFiles(e.target.files);
            e.target.value = "";
          }}
        />
      </header>
      <main>
        {route.page === "list" &&
          (listError && local.size === 0 ? (
            <div className="empty-state error-state">{listError}</div>
          ) : !list && local.size === 0 ? (
            <div className="empty-state muted">Loading…</div>
          ) : (
            <RunList
              logDir={list?.log_dir ?? ""}
              entries={entries}
              message={list?.message ?? null}
              onOpen={(e) => go({ page: "log", name: e.name, local: !!e.local })}
            />
          ))}
        {route.page === "log" && <OpenedView opened={opened} routeKey={routeKey} name={route.name} setOpened={setOpened} />}
      </main>
    </div>
  );
}

function OpenedView({
  opened,
  routeKey,
  name,
  setOpened,
}: {
  opened: Opened | null;
  routeKey: string | null;
  name: string;
  setOpened: (o: Opened) => void;
}) {
  if (!opened || opened.key !== routeKey || opened.status === "loading") {
    const loaded = opened && opened.status === "loading" ? opened.loaded : 0;
    const total = opened && opened.status === "loading" ? opened.total : null;
    return (
      <div className="empty-state">
        <p>Loading {name}…</p>
        <div className="progress">
          <div style={{ width: total ? `${Math.min(100, (100 * loaded) / total)}%` : "30%" }} />
        </div>
        <p className="muted small">
          {bytes(loaded)}
          {total ? ` of ${bytes(total)}` : ""}
        </p>
      </div>
    );
  }
  if (opened.status === "error") {
    return (
      <div className="empty-state error-state" data-testid="open-error">
        <p>{opened.message}</p>
        <a href="#/">← back to the runs</a>
      </div>
    );
  }
  const { parsed, traj } = opened;
  if (!traj || !traj.root) {
    const problem = parsed.problem?.message ?? "no run in this log";
    return (
      <div className="empty-state error-state" data-testid="open-problem">
        <p>
          <strong>{name}</strong> cannot be shown: {problem}.
        </p>
        {parsed.errorCount > 0 && (
          <p className="small">
            {parsed.errorCount} line{parsed.errorCount === 1 ? "" : "s"} did not parse (first: line{" "}
            {parsed.errors[0].line}, {parsed.errors[0].message}).
          </p>
        )}
        {parsed.problem?.kind === "version" && parsed.records.some((r) => r.type === "run_start") && (
          <button
            type="button"
            onClick={() =>
              setOpened({ ...opened, traj: buildTrajectory(parsed), force: true })
            }
          >
            Show what this viewer can read anyway
          </button>
        )}
        <p>
          <a href="#/">← back to the runs</a>
        </p>
      </div>
    );
  }
  return (
    <>
      {opened.force && parsed.problem && (
        <div className="banner warn">{parsed.problem.message}: fields may be misread.</div>
      )}
      <RunView key={opened.key} name={name} parsed={parsed} traj={traj} />
    </>
  );
}
