#!/usr/bin/env node
// Browser test of the visualizer, driven by tests/test_visualizer_browser.py: headless Chromium
// (Debian's, through playwright-core) against a live `rlm view` over a recorded run with
// recursion, plus a damaged log, a log from a newer format and an empty directory.
//
//   node e2e/view.mjs --url 'http://127.0.0.1:PORT/?token=T' --empty-url '...' \
//        --run RUN.jsonl --screenshot out.png [--big BIG.jsonl] [--local-file PATH.jsonl]
//        [--reference REFERENCE.jsonl] [--chromium /usr/bin/chromium]
//
// Fails (exit 1) on the first missing element or page error; prints a JSON report of what it
// saw on stdout for the Python test to check too.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    "empty-url": { type: "string" },
    run: { type: "string" },
    big: { type: "string" },
    "local-file": { type: "string" },
    reference: { type: "string" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: process.env.RLM_CHROMIUM || "/usr/bin/chromium" },
  },
});
for (const key of ["url", "empty-url", "run", "screenshot"]) {
  if (!opt[key]) {
    console.error(`view.mjs: --${key} is required`);
    process.exit(2);
  }
}

const TIMEOUT = 15_000;
const report = {};
const problems = [];

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

function withHash(url, hash) {
  const u = new URL(url);
  u.hash = hash;
  return u.toString();
}

const profile = mkdtempSync(join(tmpdir(), "rlm-view-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: opt.chromium,
  headless: true,
  viewport: { width: 1440, height: 900 },
  deviceScaleFactor: 1,
  timeout: 60_000,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

let page = null;
try {
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
  });

  // ---- the run list
  await page.goto(opt.url);
  const list = page.getByTestId("runlist");
  await list.locator(`[data-name="${opt.run}"]`).waitFor();
  const runRow = list.locator(`[data-name="${opt.run}"]`);
  report.runRow = await runRow.innerText();
  check(report.runRow.includes("Which parts does the text have?"), "run list shows the question");
  check(report.runRow.includes("alpha part / beta part / gamma part"), "run list shows the answer");
  check(report.runRow.includes("final_answer"), "run list shows the stop reason");
  check(/root-model/.test(report.runRow) && /sub-model/.test(report.runRow), "run list shows models");
  report.futureRow = await list.locator('[data-name="future.jsonl"]').innerText();
  check(report.futureRow.includes("version 99"), "run list names the unknown version");
  report.damagedRow = await list.locator('[data-name="damaged.jsonl"]').innerText();
  await page.screenshot({ path: opt.screenshot.replace(/\.png$/, "-list.png") });

  // ---- the run: tree
  await runRow.click();
  const tree = page.getByTestId("tree");
  await tree.locator('[role="treeitem"]').first().waitFor();
  await tree.getByText("Child run · depth 1").first().waitFor();
  report.treeRows = await tree.locator('[role="treeitem"]').allInnerTexts();
  const rows = report.treeRows.join("\n");
  for (const text of ["Root run", "Iteration 2", "Code block 1", "Summarise part 1", "Name the key word in: BETA part"]) {
    check(rows.includes(text), `tree shows "${text}"`);
  }
  check(report.treeRows.filter((r) => r.includes("Child run · depth 1")).length === 3, "three child runs");

  // ---- the timeline
  const timeline = page.getByTestId("timeline");
  await timeline.locator(".tl-bar").first().waitFor();
  report.timelineBars = await timeline.locator(".tl-bar").count();
  report.maxParallel = await page.getByTestId("max-parallel").innerText();
  check(report.timelineBars >= 20, `timeline draws the runs, turns and calls (${report.timelineBars})`);
  check(/at most [3-9] in parallel/.test(report.maxParallel), `parallel calls shown: ${report.maxParallel}`);

  // ---- the code panel
  await tree.locator('[role="treeitem"]', { hasText: "rlm_query_batched" }).first().click();
  const code = page.getByTestId("code");
  await code.waitFor();
  report.code = await code.innerText();
  check(report.code.includes("rlm_query_batched"), "code panel shows the code");
  report.highlighted = await code.locator(".hljs-string, .hljs-built_in, .hljs-keyword").count();
  check(report.highlighted > 0, "code is syntax-highlighted");
  report.stdout = await page.getByTestId("stdout").innerText();
  check(report.stdout.includes("alpha part"), "code panel shows the output");
  const detail = page.getByTestId("detail");
  check(/sub-calls \(6\)/i.test(await detail.innerText()), "code panel lists the block's sub-calls");
  // selecting a block shades its span on the timeline: the calls beside it stand out
  await page.screenshot({ path: opt.screenshot });

  // ---- search
  await page.getByTestId("search").fill("GAMMA");
  const results = page.getByTestId("search-results");
  await results.locator(".hit").first().waitFor();
  report.searchHits = await results.locator(".hit").count();
  check(report.searchHits >= 3, "search finds the matches");
  await results.locator(".hit", { hasText: "response" }).first().click();
  await detail.locator("mark").first().waitFor();
  await page.getByTestId("search").fill("");

  // ---- usage
  await page.getByRole("tab", { name: "Usage & cost" }).click();
  report.usage = await page.getByTestId("usage").innerText();
  check(report.usage.includes("sub-model") && report.usage.includes("depth 2"), "usage per model and depth");

  // ---- a damaged log: records that parse are shown, bad lines named
  await page.goto(withHash(opt.url, `#/log/damaged.jsonl`));
  const banner = page.getByTestId("problems-banner");
  await banner.waitFor();
  report.damagedBanner = await banner.innerText();
  check(/did not parse \(line 3\)/.test(report.damagedBanner), "bad line named");
  check(/cut off mid-write/.test(report.damagedBanner), "truncated last line noted");
  await page.getByTestId("tree").locator('[role="treeitem"]').first().waitFor();
  await page.getByRole("tab", { name: "Problems" }).click();
  report.damagedProblems = await page.getByTestId("problems").innerText();
  check(report.damagedProblems.includes("line 3"), "problems tab lists the bad line");
  await page.screenshot({ path: opt.screenshot.replace(/\.png$/, "-damaged.png") });

  // ---- a log from a newer format: the version is named
  await page.goto(withHash(opt.url, `#/log/future.jsonl`));
  const refused = page.getByTestId("open-problem");
  await refused.waitFor();
  report.futureMessage = await refused.innerText();
  check(report.futureMessage.includes("version 99"), "unknown version named");
  await page.screenshot({ path: opt.screenshot.replace(/\.png$/, "-future.png") });

  // ---- a log written by the reference implementation: converted, shown, and said so
  if (opt.reference) {
    await page.goto(opt.url);
    const refRow = page.getByTestId("runlist").locator(`[data-name="${opt.reference}"]`);
    await refRow.waitFor();
    report.referenceRow = await refRow.innerText();
    check(report.referenceRow.includes("Ask a child RLM."), "reference log listed with its question");
    check(await refRow.getByTestId("reference-chip").isVisible(), "reference log marked in the list");
    await refRow.click();
    report.referenceBanner = await page.getByTestId("reference-banner").innerText();
    const refTree = page.getByTestId("tree");
    await refTree.getByText("Child run · depth 1").first().waitFor();
    report.referenceTree = await refTree.locator('[role="treeitem"]').allInnerTexts();
    await refTree.locator('[role="treeitem"]', { hasText: "rlm_query" }).first().click();
    report.referenceCode = await page.getByTestId("code").innerText();
    report.referenceAnswer = await page.getByTestId("run-answer").innerText();
    await page.screenshot({ path: opt.screenshot.replace(/\.png$/, "-reference.png") });
  }

  // ---- a 50 MB log: loads, and only the rows in view are in the DOM
  if (opt.big) {
    const started = Date.now();
    await page.goto(withHash(opt.url, `#/log/${encodeURIComponent(opt.big)}`));
    const bigTree = page.getByTestId("tree");
    await bigTree.locator('[role="treeitem"]').first().waitFor({ timeout: 90_000 });
    report.bigLoadMs = Date.now() - started;
    report.bigStats = await page.locator(".run-stats").innerText();
    const calls = Number(/([\d]+) sub-calls/.exec(report.bigStats)?.[1] ?? 0);
    check(calls >= 20_000, `the big log has its sub-calls (${report.bigStats})`);
    await page.getByTitle("Expand all").click();
    await bigTree.locator('[role="treeitem"]').first().click();
    await bigTree.press("End"); // jump to the last of ~21,000 rows
    await page.getByTestId("response").waitFor();
    report.bigLast = await page.getByTestId("response").innerText();
    check(report.bigLast.includes("NEEDLE-IN-THE-HAYSTACK"), "the last row is reachable");
    report.bigTreeDom = await bigTree.locator('[role="treeitem"]').count();
    report.bigTimelineDom = await page.getByTestId("timeline").locator(".tl-bar").count();
    check(report.bigTreeDom < 200, `tree is virtualised (${report.bigTreeDom} rows in the DOM)`);
    check(report.bigTimelineDom < 200, `timeline is virtualised (${report.bigTimelineDom} bars)`);
    const searchStarted = Date.now();
    await page.getByTestId("search").fill("NEEDLE-IN-THE");
    await page.getByTestId("search-results").locator(".hit").first().waitFor({ timeout: 60_000 });
    report.bigSearchMs = Date.now() - searchStarted;
    await page.screenshot({ path: opt.screenshot.replace(/\.png$/, "-big.png") });
  }

  // ---- an empty directory says so
  await page.goto(opt["empty-url"]);
  const empty = page.getByTestId("empty");
  await empty.waitFor();
  report.emptyMessage = await empty.innerText();
  check(report.emptyMessage.includes("No trajectory logs"), "empty directory message");
  await page.screenshot({ path: opt.screenshot.replace(/\.png$/, "-empty.png") });

  // ---- a file opened from disk is parsed in the browser
  if (opt["local-file"]) {
    await page.locator('input[type="file"]').setInputFiles(opt["local-file"]);
    await page.getByTestId("tree").getByText("Child run · depth 1").first().waitFor();
    report.localAnswer = await page.getByTestId("run-answer").innerText();
    check(report.localAnswer.includes("alpha part / beta part"), "a local file opens");
  }

  check(problems.length === 0, `no page errors: ${problems.join("; ")}`);
  report.ok = true;
  console.log(JSON.stringify(report));
} catch (err) {
  report.ok = false;
  report.error = String(err && err.stack ? err.stack : err);
  report.problems = problems;
  if (page) {
    report.failureScreenshot = opt.screenshot.replace(/\.png$/, "-failure.png");
    await page.screenshot({ path: report.failureScreenshot }).catch(() => undefined);
  }
  console.log(JSON.stringify(report));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
